"""Start endodoc processes for the API load benchmarks, on loopback only.

The module builds a data directory with a reference gallery and a site key through the
`endodoc` command line (`db upgrade`, `gallery add`, `site add`, `site issue-key`). It starts
`endodoc serve` and `endodoc worker` as child processes. For the worker it provides a
PostgreSQL database created and dropped by the benchmark, a locked Redis database, and the
test suite's Qdrant REST stand-in. Every process here is started by the benchmark and stopped
by its PID.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO_ROOT.parent / "shared" / "data" / "hyperkvasir-lower-gi"
QDRANT_STANDIN = REPO_ROOT / "tests" / "qdrant_standin" / "server.py"
LANDMARK_SET = "hyperkvasir-lower-gi"
SITE_SLUG = "bench-load"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SERVER_START_TIMEOUT_S = 300
WORKER_START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


class BenchmarkError(SystemExit):
    """A benchmark cannot run; the message names the cause and the fix."""


@dataclass(frozen=True)
class ImageSet:
    """Real images split into reference images per class and query images for uploads."""

    references: dict[str, list[Path]]
    queries: list[Path]


def split_images(folder: Path, references_per_class: int) -> ImageSet:
    """Take the first images of each class folder as references and deal the rest across classes.

    The query list alternates between classes, so any prefix of it mixes every class.
    """
    if not folder.is_dir():
        raise BenchmarkError(f"image folder {folder} not found: pass --images DIR with one subfolder per landmark code")
    classes = {path.name: sorted(path.glob("*.jpg")) for path in sorted(folder.iterdir()) if path.is_dir()}
    classes = {label: files for label, files in classes.items() if files}
    if not classes:
        raise BenchmarkError(f"no JPEG files in class subfolders of {folder}: expected DIR/<landmark-code>/*.jpg")
    short = [label for label, files in classes.items() if len(files) <= references_per_class]
    if short:
        raise BenchmarkError(
            f"classes {short} have no images left after {references_per_class} references: lower --references-per-class"
        )
    references = {label: files[:references_per_class] for label, files in classes.items()}
    remaining = [files[references_per_class:] for files in classes.values()]
    queries = [path for group in itertools.zip_longest(*remaining) for path in group if path is not None]
    return ImageSet(references=references, queries=queries)


def check_loopback(url: str) -> str:
    """Return `url` without a trailing slash, or stop when its host is not a loopback address."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise BenchmarkError(f"--url {url!r} is not a loopback address: the benchmarks only send to {sorted(LOOPBACK_HOSTS)}")
    return url.rstrip("/")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def endodoc_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment without ENDODOC_* variables, set to the `lite` model in `data_dir`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ENDODOC_")}
    env.update({
        "ENDODOC_DATA_DIR": str(data_dir),
        "ENDODOC_MODEL__PROFILE": "lite",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def endodoc_command(*args: str) -> list[str]:
    """Return the argument list that runs the `endodoc` command with this interpreter."""
    return [sys.executable, "-m", "services.cli", "--log-level", "WARNING", *args]


def run_endodoc(args: Sequence[str], env: dict[str, str], timeout_s: float = 600) -> str:
    """Run one `endodoc` command to completion and return its standard output."""
    result = subprocess.run(
        endodoc_command(*args), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if result.returncode != 0:
        raise BenchmarkError(
            f"`endodoc {' '.join(args[:3])}` failed with exit code {result.returncode}:\n{result.stderr[-3000:]}"
        )
    return result.stdout


def prepare_site(work_dir: Path, images: ImageSet, env: dict[str, str]) -> str:
    """Migrate the catalog, add the reference gallery, create the site and return a new site key.

    The gallery folder contains symbolic links to the real images, so nothing is copied.
    """
    gallery = work_dir / "gallery"
    for label, files in images.references.items():
        (gallery / label).mkdir(parents=True, exist_ok=True)
        for path in files:
            (gallery / label / path.name).symlink_to(path.resolve())
    run_endodoc(["db", "upgrade"], env)
    run_endodoc(["gallery", "add", str(gallery)], env)
    run_endodoc(["site", "add", SITE_SLUG], env)
    issued = json.loads(run_endodoc(["site", "issue-key", SITE_SLUG, "--name", "load benchmark"], env))
    return issued["secret"]


class ChildProcess:
    """A process this benchmark started, with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        with log_path.open("w") as log:
            self.process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def check_running(self) -> None:
        if self.process.poll() is not None:
            raise BenchmarkError(
                f"{self.name} exited with code {self.process.returncode}; its log ends with:\n{self.log_tail()}"
            )

    def stop(self) -> None:
        """Stop the process by its PID: SIGTERM, then SIGKILL after STOP_TIMEOUT_S."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_serve(env: dict[str, str], log_path: Path) -> tuple[ChildProcess, str]:
    """Start `endodoc serve` on a free loopback port and wait until /healthz responds."""
    port = free_port()
    server = ChildProcess(
        "endodoc serve", endodoc_command("serve", "--host", "127.0.0.1", "--port", str(port)), env, log_path
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        server.check_running()
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.stop()
    raise BenchmarkError(f"endodoc serve did not respond to /healthz within {SERVER_START_TIMEOUT_S} s:\n{server.log_tail()}")


def start_worker(env: dict[str, str], log_path: Path) -> ChildProcess:
    """Start `endodoc worker` and wait until Celery reports it ready."""
    worker = ChildProcess(
        "endodoc worker",
        endodoc_command("worker", f"--hostname=bench-{uuid.uuid4().hex[:8]}@%h"),
        env,
        log_path,
    )
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        worker.check_running()
        if " ready." in log_path.read_text(errors="replace"):
            return worker
        time.sleep(0.25)
    worker.stop()
    raise BenchmarkError(f"endodoc worker was not ready within {WORKER_START_TIMEOUT_S} s:\n{worker.log_tail()}")


def start_qdrant_standin(store_dir: Path, log_path: Path) -> tuple[ChildProcess, str]:
    """Start the test suite's Qdrant REST stand-in (qdrant-client local mode over HTTP) and return its URL.

    No Qdrant server binary is installed on the build machines. The stand-in scans every point
    per search, so it is only fit for measuring the API and worker processes, not Qdrant.
    """
    standin = ChildProcess(
        "Qdrant stand-in", [sys.executable, str(QDRANT_STANDIN), "--path", str(store_dir)], os.environ.copy(), log_path
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        standin.check_running()
        first_line = log_path.read_text(errors="replace").partition("\n")[0]
        if first_line.startswith("listening on "):
            return standin, first_line.removeprefix("listening on ").strip()
        time.sleep(0.1)
    standin.stop()
    raise BenchmarkError(f"the Qdrant stand-in did not start within 60 s:\n{standin.log_tail()}")


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """Create an empty PostgreSQL database on the server of `admin_url`, yield its URL, and drop it afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(admin_url)
    if url.host not in LOOPBACK_HOSTS:
        raise BenchmarkError(f"--postgres-url host {url.host!r} is not a loopback address")
    conninfo = f"host={url.host} port={url.port or 5432} user={url.username} dbname={url.database}"
    try:
        admin = psycopg.connect(conninfo, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as error:
        raise BenchmarkError(f"PostgreSQL at {url.host}:{url.port or 5432} is not reachable ({error}); set --postgres-url") from None
    name = f"endodoc_bench_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(drivername="postgresql+psycopg", database=name).render_as_string(hide_password=False)
        finally:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


REDIS_LOCK_KEY = "endodoc-bench:lock"
REDIS_LOCK_TTL_S = 3600


@contextmanager
def locked_redis_database(redis_url: str) -> Iterator[str]:
    """Lock the Redis database of `redis_url` for this run, flush it, yield the URL, and flush it again.

    The lock is a key set only if absent, so a second benchmark run on the same database stops
    instead of flushing the first run's queue.
    """
    import redis

    parts = urlsplit(redis_url)
    if parts.hostname not in LOOPBACK_HOSTS:
        raise BenchmarkError(f"--redis-url host {parts.hostname!r} is not a loopback address")
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.ConnectionError as error:
        raise BenchmarkError(f"Redis at {redis_url} is not reachable ({error}); set --redis-url") from None
    token = uuid.uuid4().hex
    if not client.set(REDIS_LOCK_KEY, token, nx=True, ex=REDIS_LOCK_TTL_S):
        raise BenchmarkError(
            f"Redis database {redis_url} is locked by another benchmark run (key {REDIS_LOCK_KEY}); "
            "wait for it to finish or pass another --redis-url"
        )
    pipeline = client.pipeline(transaction=True)
    pipeline.flushdb()
    pipeline.set(REDIS_LOCK_KEY, token, ex=REDIS_LOCK_TTL_S)
    pipeline.execute()
    try:
        yield redis_url
    finally:
        client.flushdb()
        client.close()


def read_memory_kib(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak resident set size) of a running process in KiB, from /proc/PID/status."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


def peak_rss_mib(pid: int) -> float | None:
    """Return VmHWM of a running process in MiB, or None when it has exited."""
    try:
        return round(read_memory_kib(pid)["VmHWM"] / 1024, 1)
    except (FileNotFoundError, ProcessLookupError, KeyError):
        return None
