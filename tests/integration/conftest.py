"""The production stack on real services: PostgreSQL, Redis, Celery worker processes and Qdrant over HTTP.

Qdrant is a real server when ENDODOC_TEST_QDRANT_URL is set. Otherwise it is the test-only
stand-in in tests/qdrant_standin, which serves qdrant-client's local mode over the Qdrant
REST API, so the API in this process and the worker processes share one store over HTTP.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, skip_or_fail

REDIS_URL = os.environ.get("ENDODOC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
# These tests own Redis databases 11 to 14. Each test locks one of them, so test runs in
# parallel on one machine never share a queue, and flushes it before and after the test.
REDIS_DBS = (11, 12, 13, 14)
REDIS_LOCK_KEY = "endodoc-tests:lock"
REDIS_LOCK_TTL_S = 900
REDIS_LOCK_WAIT_S = 300
QDRANT_URL = os.environ.get("ENDODOC_TEST_QDRANT_URL")
STANDIN = REPO_ROOT / "tests" / "qdrant_standin" / "server.py"
WORKER_START_TIMEOUT_S = 180
BATCH_SIZE = 16


def _lock_database(host: str, port: int, token: str):
    """Return a client on the first free database of REDIS_DBS, locked and flushed, or None if all are taken."""
    import redis

    for number in REDIS_DBS:
        client = redis.Redis(host=host, port=port, db=number, socket_connect_timeout=3)
        if client.set(REDIS_LOCK_KEY, token, nx=True, ex=REDIS_LOCK_TTL_S):
            # Flush and lock again in one transaction, so no other run can take the database in between.
            pipeline = client.pipeline(transaction=True)
            pipeline.flushdb()
            pipeline.set(REDIS_LOCK_KEY, token, ex=REDIS_LOCK_TTL_S)
            pipeline.execute()
            return client
        client.close()
    return None


@pytest.fixture
def redis_url() -> Iterator[str]:
    """Return the URL of a Redis database that only this test uses, flushed before and after it."""
    import redis
    from redis.connection import parse_url

    options = parse_url(REDIS_URL)
    host, port = options.get("host", "127.0.0.1"), options.get("port", 6379)
    try:
        redis.Redis(host=host, port=port, socket_connect_timeout=3).ping()
    except redis.ConnectionError as error:
        skip_or_fail(f"Redis at {host}:{port} is not reachable ({error}); set ENDODOC_TEST_REDIS_URL")

    token = uuid.uuid4().hex
    deadline = time.monotonic() + REDIS_LOCK_WAIT_S
    client = _lock_database(host, port, token)
    while client is None and time.monotonic() < deadline:
        time.sleep(1)
        client = _lock_database(host, port, token)
    if client is None:
        pytest.fail(f"Redis databases {REDIS_DBS} stayed locked by other test runs for {REDIS_LOCK_WAIT_S} s")
    number = client.connection_pool.connection_kwargs["db"]
    yield f"redis://{host}:{port}/{number}"
    client.flushdb()
    client.close()


@pytest.fixture
def qdrant_url(tmp_path: Path) -> Iterator[str]:
    """Return a Qdrant REST URL: ENDODOC_TEST_QDRANT_URL, or a stand-in server started for this test."""
    if QDRANT_URL:
        yield QDRANT_URL
        return

    process = subprocess.Popen(
        [sys.executable, str(STANDIN), "--path", str(tmp_path / "qdrant-standin")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    line = process.stdout.readline() if process.stdout else ""
    if not line.startswith("listening on "):
        process.kill()
        pytest.fail(f"the Qdrant stand-in did not start: {line!r}")
    try:
        yield line.removeprefix("listening on ").strip()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Stack:
    """URLs and settings of one production stack, and the worker processes this test started."""

    env: dict[str, str]
    settings: object
    workers: list[subprocess.Popen] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)


def _stack_env(database_url: str, redis_url: str, qdrant_url: str, blob_dir: Path) -> dict[str, str]:
    return {
        "ENDODOC_DATABASE_URL": database_url,
        "ENDODOC_BROKER_URL": redis_url,
        "ENDODOC_QDRANT_URL": qdrant_url,
        "ENDODOC_BLOB_DIR": str(blob_dir),
        "ENDODOC_MODEL__PROFILE": "lite",
        "ENDODOC_MODEL__BATCH_SIZE": str(BATCH_SIZE),
        # A killed worker's task is redelivered after 8 s instead of the production default.
        "ENDODOC_TASK_TIME_LIMIT_S": "6",
        "ENDODOC_BROKER_VISIBILITY_TIMEOUT_S": "8",
        "ENDODOC_EMBED_MAX_RETRIES": "2",
    }


@pytest.fixture
def stack(postgres_url: str, redis_url: str, qdrant_url: str, tmp_path: Path) -> Iterator[Stack]:
    """Return a migrated PostgreSQL database, Redis and Qdrant, with settings for all three."""
    from services.catalog import migrate
    from services.settings import Settings

    migrate.upgrade(postgres_url)
    env = _stack_env(postgres_url, redis_url, qdrant_url, tmp_path / "blobs")
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        broker_url=redis_url,
        qdrant_url=qdrant_url,
        blob_dir=tmp_path / "blobs",
        model={"profile": "lite", "batch_size": BATCH_SIZE},
        task_time_limit_s=6,
        broker_visibility_timeout_s=8,
    )
    stack = Stack(env=env, settings=settings)
    yield stack
    for process in stack.workers:
        stop_worker(process)


def start_worker(stack: Stack, tmp_path: Path) -> subprocess.Popen:
    """Start `endodoc worker` as a child process and wait until Celery reports it ready."""
    log = tmp_path / f"worker-{len(stack.logs)}.log"
    env = {**os.environ, **stack.env, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "worker", f"--hostname=test-{uuid.uuid4().hex[:8]}@%h"],
            cwd=REPO_ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    stack.workers.append(process)
    stack.logs.append(log)

    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text()
        if " ready." in text:
            return process
        if process.poll() is not None:
            pytest.fail(f"worker exited with code {process.returncode} before it was ready:\n{text[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"worker not ready after {WORKER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_worker(process: subprocess.Popen) -> None:
    """Stop a worker this test started, by its PID."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def worker_factory(stack: Stack, tmp_path: Path) -> Callable[[], subprocess.Popen]:
    """Return a function that starts one more worker process for this test."""
    return lambda: start_worker(stack, tmp_path)


@pytest.fixture
def production_runtime(stack: Stack, lite_embedder) -> Iterator:
    """Return a runtime on the stack's PostgreSQL and Qdrant with the shared `lite` model."""
    from services.runtime import Runtime
    from services.schema import ensure_schema

    runtime = Runtime(stack.settings, embedder=lite_embedder)
    ensure_schema(runtime)
    yield runtime
    if QDRANT_URL:
        # A real server outlives the test, so drop the collections this test filled.
        client = runtime.vectors._client
        for collection in runtime.collections():
            client.delete_collection(collection)
    runtime.close()


def wait_for(
    condition: Callable[[], bool],
    timeout_s: float,
    description: str,
    logs: list[Path] | None = None,
    interval_s: float = 0.2,
) -> None:
    """Poll `condition` every `interval_s` until it holds, or fail with `description` and the worker log tails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-2000:]}" for log in logs or [])
    pytest.fail(f"timed out after {timeout_s} s waiting for {description}\n{tails}")
