"""Helpers of the fault tests: a stack on given URLs, an API client of one site, uploads and the final checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from services.catalog.models import Image, ImageStatus
from services.db import unit_of_work
from tests.conftest import REPO_ROOT, class_images
from tests.integration.conftest import BATCH_SIZE, Stack, _stack_env, start_worker, stop_worker, wait_for
from tests.integration.test_production_stack import (
    GALLERY_PER_CLASS,
    images_by_id,
    predictions_per_image,
    seed_gallery,
    stored_point_ids,
)

__all__ = ["BATCH_SIZE", "images_by_id", "seed_gallery", "wait_for"]

ADMIN_KEY = "faults-admin-key-0123456789abcdef"
# Retries while a service is down: with the test's 8 s visibility timeout and 6 s time limit
# each retry waits 2 s, so 15 retries bridge an outage of about 30 s.
EMBED_MAX_RETRIES = 15
SERVICE_TIMEOUT_S = 120
# Seconds a new PostgreSQL connection may take, shorter than the production default so that
# the unresponsive-server test finishes soon.
DATABASE_CONNECT_TIMEOUT_S = 3


@dataclass
class FaultStack:
    """The URLs, settings and runtime of one stack, and a function that starts a worker on it."""

    stack: Stack
    runtime: object
    start_worker: Callable[[], subprocess.Popen]

    @property
    def settings(self):
        return self.stack.settings

    @property
    def logs(self) -> list[Path]:
        """The log files of the workers started so far, in start order."""
        return self.stack.logs

    def worker_log(self, index: int = -1) -> str:
        return self.stack.logs[index].read_text()


def make_stack(database_url: str, broker_url: str, qdrant_url: str, tmp_path: Path, lite_embedder) -> Iterator[FaultStack]:
    """Migrate the database, yield a stack on these URLs, and stop its workers afterwards."""
    from services.catalog import migrate
    from services.runtime import Runtime
    from services.schema import ensure_schema
    from services.settings import Settings

    migrate.upgrade(database_url)
    env = {
        **_stack_env(database_url, broker_url, qdrant_url, tmp_path / "blobs"),
        "ENDODOC_EMBED_MAX_RETRIES": str(EMBED_MAX_RETRIES),
        "ENDODOC_DATABASE_CONNECT_TIMEOUT_S": str(DATABASE_CONNECT_TIMEOUT_S),
        "ENDODOC_LOG_LEVEL": "INFO",
    }
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=broker_url,
        qdrant_url=qdrant_url,
        blob_dir=tmp_path / "blobs",
        model={"profile": "lite", "batch_size": BATCH_SIZE},
        task_time_limit_s=6,
        broker_visibility_timeout_s=8,
        qdrant_timeout_s=5,
        database_connect_timeout_s=DATABASE_CONNECT_TIMEOUT_S,
        admin_api_key=SecretStr(ADMIN_KEY),
    )
    stack = Stack(env=env, settings=settings)
    runtime = Runtime(settings, embedder=lite_embedder)
    ensure_schema(runtime)
    try:
        yield FaultStack(stack=stack, runtime=runtime, start_worker=lambda: start_worker(stack, tmp_path))
    finally:
        for process in stack.workers:
            stop_worker(process)
        runtime.close()


@dataclass
class SiteClient:
    """An API test client with one site key and one procedure of that site."""

    client: TestClient
    headers: dict[str, str]
    procedure_id: str

    def upload(self, paths: list[Path]):
        """Upload the files to the procedure and return the response."""
        files = [("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths]
        return self.client.post(f"/v1/procedures/{self.procedure_id}/images", files=files, headers=self.headers)

    def coverage(self):
        return self.client.get(f"/v1/procedures/{self.procedure_id}/coverage", headers=self.headers)

    def search(self, image_id: uuid.UUID):
        return self.client.post("/v1/search", json={"image_id": str(image_id), "limit": 5}, headers=self.headers)


def open_site_client(fault_stack: FaultStack) -> Iterator[SiteClient]:
    """Start the API app on the stack, create a site, a key and a procedure, and yield a client."""
    from services.api.app import create_app

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(fault_stack.settings, runtime=fault_stack.runtime)) as client:
        site = client.post("/v1/sites", json={"slug": "faults", "name": "Faults"}, headers=admin)
        assert site.status_code == 201, site.text
        key = client.post(f"/v1/sites/{site.json()['id']}/api-keys", json={"name": "faults"}, headers=admin)
        assert key.status_code == 201, key.text
        headers = {"Authorization": f"Bearer {key.json()['secret']}"}
        procedure = client.post(
            "/v1/procedures",
            json={"external_id": "COL-FAULT-1", "kind": "colonoscopy", "landmark_set": "hyperkvasir-lower-gi",
                  "performed_at": "2026-12-01T09:00:00Z"},
            headers=headers,
        )
        assert procedure.status_code == 201, procedure.text
        yield SiteClient(client=client, headers=headers, procedure_id=procedure.json()["id"])


def upload_images(api: SiteClient, paths: list[Path]) -> list[uuid.UUID]:
    """Upload the files, check that each became a new `queued` image, and return the image ids."""
    response = api.upload(paths)
    assert response.status_code == 202, response.text
    images = response.json()["images"]
    assert [image["status"] for image in images] == ["queued"] * len(paths)
    assert not any(image["duplicate"] for image in images)
    return [uuid.UUID(image["image_id"]) for image in images]


def query_images(labeled_images: Path, count: int, offset: int = 0) -> list[Path]:
    """Return `count` images that are not in the gallery, alternating polyp and caecum, from `offset` on."""
    per_class = (count + offset) // 2 + 1
    polyps = class_images(labeled_images, "polyp", GALLERY_PER_CLASS + per_class)[GALLERY_PER_CLASS:]
    caeca = class_images(labeled_images, "normal-cecum", GALLERY_PER_CLASS + per_class)[GALLERY_PER_CLASS:]
    mixed = [path for pair in zip(polyps, caeca, strict=True) for path in pair]
    return mixed[offset : offset + count]


def assert_embedded_exactly_once(runtime, procedure_id: str, accepted: list[uuid.UUID]) -> None:
    """Check that the procedure has exactly the accepted images, each embedded once: one point, one prediction."""
    with unit_of_work(runtime.sessions) as session:
        catalog_ids = set(session.scalars(select(Image.id).where(Image.procedure_id == uuid.UUID(procedure_id))))
        by_status = dict(
            session.execute(
                select(Image.status, func.count()).where(Image.procedure_id == uuid.UUID(procedure_id)).group_by(Image.status)
            ).all()
        )
    assert len(set(accepted)) == len(accepted)
    assert catalog_ids == set(accepted)
    assert by_status == {ImageStatus.EMBEDDED: len(accepted)}

    images = images_by_id(runtime, accepted)
    assert {image.model_version for image in images.values()} == {runtime.model_version}
    assert sorted(stored_point_ids(runtime, accepted)) == sorted(accepted)
    images_collection, _ = runtime.collections()
    assert runtime.vectors.count(images_collection, {"procedure_id": procedure_id}) == len(accepted)
    assert predictions_per_image(runtime, accepted) == {image_id: 1 for image_id in accepted}


def all_embedded(runtime, image_ids: list[uuid.UUID]) -> bool:
    images = images_by_id(runtime, image_ids).values()
    return len(images) == len(image_ids) and all(image.status == ImageStatus.EMBEDDED for image in images)


def queued_count(runtime, procedure_id: str) -> int:
    """Return how many images of the procedure are `queued`."""
    with unit_of_work(runtime.sessions) as session:
        return session.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.procedure_id == uuid.UUID(procedure_id), Image.status == ImageStatus.QUEUED)
        )


def run_reconcile(stack: Stack, extra_env: dict[str, str] | None = None) -> dict:
    """Run `endodoc reconcile --json` on the stack's settings, as an operator would, and return its report."""
    env = {**os.environ, **stack.env, **(extra_env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "reconcile", "--json"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=SERVICE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


class Stopwatch:
    """A timer that prints the seconds since its creation at each lap, to show recovery times in the test output."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._started = time.monotonic()

    def lap(self, event: str) -> float:
        elapsed = time.monotonic() - self._started
        print(f"fault {self.name}: {event} after {elapsed:.1f} s")
        return elapsed
