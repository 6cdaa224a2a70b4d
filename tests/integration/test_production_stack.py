"""The production path end to end: PostgreSQL, Redis, real Celery worker processes and Qdrant over HTTP."""

from __future__ import annotations

import os
import signal
import uuid
from datetime import UTC, datetime

import pytest
import redis
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import func, select

from services.api.app import create_app
from services.catalog.models import Image, ImageStatus, Prediction, ProcedureKind
from services.catalog.queries import get_or_create_procedure, get_or_create_site
from services.db import unit_of_work
from services.ingest.dispatch import CeleryQueue
from services.ingest.service import LabeledFile, UploadedFile, add_images, add_references
from tests.conftest import class_images
from tests.integration.conftest import BATCH_SIZE, wait_for

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning"),
]

ADMIN_KEY = "integration-admin-key-0123456789abcdef"
GALLERY_PER_CLASS = 6


def seed_gallery(runtime, labeled_images) -> None:
    """Add 6 shared references each of cecum and polyp, the first images of each class folder."""
    with unit_of_work(runtime.sessions) as session:
        files = [
            LabeledFile(label, UploadedFile(path.name, path.read_bytes()))
            for label in ("normal-cecum", "polyp")
            for path in class_images(labeled_images, label, GALLERY_PER_CLASS)
        ]
        add_references(session, runtime, None, files)


def queue_images(runtime, paths, external_id: str = "COL-1") -> list[uuid.UUID]:
    """Store the files as `queued` images of a new procedure and commit; return their ids."""
    with unit_of_work(runtime.sessions) as session:
        site = get_or_create_site(session, "integration")
        procedure, _ = get_or_create_procedure(
            session, site, external_id, ProcedureKind.COLONOSCOPY, "hyperkvasir-lower-gi", datetime.now(UTC)
        )
        outcomes = add_images(session, runtime, procedure.id, [UploadedFile(p.name, p.read_bytes()) for p in paths])
    assert {outcome.status for outcome in outcomes} == {ImageStatus.QUEUED}
    return [outcome.image_id for outcome in outcomes]


def images_by_id(runtime, image_ids) -> dict[uuid.UUID, Image]:
    with unit_of_work(runtime.sessions) as session:
        return {image.id: image for image in session.scalars(select(Image).where(Image.id.in_(image_ids)))}


def all_embedded(runtime, image_ids) -> bool:
    return all(image.status == ImageStatus.EMBEDDED for image in images_by_id(runtime, image_ids).values())


def predictions_per_image(runtime, image_ids) -> dict[uuid.UUID, int]:
    with unit_of_work(runtime.sessions) as session:
        rows = session.execute(
            select(Prediction.image_id, func.count())
            .where(Prediction.image_id.in_(image_ids), Prediction.model_version == runtime.model_version)
            .group_by(Prediction.image_id)
        ).all()
    return dict(rows)


def stored_point_ids(runtime, image_ids) -> list[uuid.UUID]:
    images_collection, _ = runtime.collections()
    return [point.id for point in runtime.vectors.retrieve(images_collection, image_ids)]


def test_api_upload_is_embedded_by_worker(stack, production_runtime, worker_factory, labeled_images):
    seed_gallery(production_runtime, labeled_images)
    worker_factory()
    stack.settings.admin_api_key = SecretStr(ADMIN_KEY)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    paths = class_images(labeled_images, "normal-cecum", 9)[6:9] + class_images(labeled_images, "polyp", 8)[6:8]

    with TestClient(create_app(stack.settings, runtime=production_runtime)) as client:
        site = client.post("/v1/sites", json={"slug": "north", "name": "North"}, headers=admin)
        assert site.status_code == 201, site.text
        key = client.post(f"/v1/sites/{site.json()['id']}/api-keys", json={"name": "tests"}, headers=admin)
        assert key.status_code == 201, key.text
        headers = {"Authorization": f"Bearer {key.json()['secret']}"}
        procedure = client.post(
            "/v1/procedures",
            json={"external_id": "COL-API-1", "kind": "colonoscopy", "landmark_set": "hyperkvasir-lower-gi",
                  "performed_at": "2026-12-01T09:00:00Z"},
            headers=headers,
        )
        assert procedure.status_code == 201, procedure.text
        procedure_id = procedure.json()["id"]

        upload = client.post(
            f"/v1/procedures/{procedure_id}/images",
            files=[("files", (path.name, path.read_bytes(), "image/jpeg")) for path in paths],
            headers=headers,
        )
        assert upload.status_code == 202, upload.text
        assert [image["status"] for image in upload.json()["images"]] == ["queued"] * 5

        def coverage() -> dict:
            response = client.get(f"/v1/procedures/{procedure_id}/coverage", headers=headers)
            assert response.status_code == 200, response.text
            return response.json()

        wait_for(lambda: coverage()["images"]["embedded"] == 5, 120, "the worker to embed 5 uploads", stack.logs)
        report = coverage()

    assert report["images"] == {"queued": 0, "embedded": 5, "failed": 0}
    assert report["model_version"] == production_runtime.model_version
    cecum = next(landmark for landmark in report["landmarks"] if landmark["code"] == "normal-cecum")
    assert cecum["status"] == "documented"
    assert cecum["evidence"]
    assert report["coverage"] == 1.0
    images_collection, _ = production_runtime.collections()
    assert production_runtime.vectors.count(images_collection, {"procedure_id": procedure_id}) == 5


@pytest.mark.faults
def test_worker_killed_mid_batch_embeds_each_image_once(stack, production_runtime, worker_factory, labeled_images):
    seed_gallery(production_runtime, labeled_images)
    paths = class_images(labeled_images, "polyp", 40)[GALLERY_PER_CLASS:] + class_images(
        labeled_images, "normal-cecum", 20
    )[GALLERY_PER_CLASS:]
    image_ids = queue_images(production_runtime, paths)
    assert len(image_ids) == 48
    first = worker_factory()
    CeleryQueue(stack.settings).enqueue(image_ids)

    in_flight: list[uuid.UUID] = []

    def batch_in_flight() -> bool:
        in_flight[:] = [
            image.id
            for image in images_by_id(production_runtime, image_ids).values()
            if image.status == ImageStatus.QUEUED and image.attempts >= 1
        ]
        return bool(in_flight)

    # A batch of 16 stays claimed for about a second on 2 CPU cores, so poll often enough to catch it.
    wait_for(batch_in_flight, 120, "the first worker to claim a batch", stack.logs, interval_s=0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    # The killed worker's transaction rolled back: its batch is still queued, with the attempt counted.
    after_kill = images_by_id(production_runtime, in_flight)
    assert {image.status for image in after_kill.values()} == {ImageStatus.QUEUED}
    assert {image.attempts for image in after_kill.values()} == {1}

    worker_factory()
    wait_for(lambda: all_embedded(production_runtime, image_ids), 240, "all 48 images to be embedded", stack.logs)

    images = images_by_id(production_runtime, image_ids)
    assert {image.status for image in images.values()} == {ImageStatus.EMBEDDED}
    assert {images[image_id].attempts for image_id in in_flight} == {2}
    assert sorted(stored_point_ids(production_runtime, image_ids)) == sorted(image_ids)
    images_collection, _ = production_runtime.collections()
    procedure_id = str(next(iter(images.values())).procedure_id)
    assert production_runtime.vectors.count(images_collection, {"procedure_id": procedure_id}) == 48
    assert predictions_per_image(production_runtime, image_ids) == {image_id: 1 for image_id in image_ids}


def test_embed_task_twice_keeps_one_point_each(stack, production_runtime, worker_factory, labeled_images):
    seed_gallery(production_runtime, labeled_images)
    image_ids = queue_images(production_runtime, class_images(labeled_images, "polyp", 12)[GALLERY_PER_CLASS:])
    worker_factory()
    queue = CeleryQueue(stack.settings)
    broker = redis.Redis.from_url(stack.settings.broker_url)

    queue.enqueue(image_ids)
    queue.enqueue(image_ids)

    def both_tasks_done() -> bool:
        return all_embedded(production_runtime, image_ids) and broker.llen("embed") == 0 and broker.hlen("unacked") == 0

    wait_for(both_tasks_done, 120, "both tasks to finish", stack.logs)
    images = images_by_id(production_runtime, image_ids)
    assert {image.attempts for image in images.values()} == {1}
    assert sorted(stored_point_ids(production_runtime, image_ids)) == sorted(image_ids)
    assert predictions_per_image(production_runtime, image_ids) == {image_id: 1 for image_id in image_ids}
    assert BATCH_SIZE >= len(image_ids)


def test_redelivered_task_after_upsert_keeps_one_point(stack, production_runtime, labeled_images, monkeypatch):
    """A worker that died after the upsert but before the commit leaves points of `queued` images."""
    from workers import tasks

    seed_gallery(production_runtime, labeled_images)
    image_ids = queue_images(production_runtime, class_images(labeled_images, "normal-cecum", 10)[GALLERY_PER_CLASS:])
    monkeypatch.setattr(tasks, "_runtime", production_runtime)

    assert tasks.embed_images_task.apply(args=[[str(i) for i in image_ids]]).get() == len(image_ids)
    with unit_of_work(production_runtime.sessions) as session:
        for image in session.scalars(select(Image).where(Image.id.in_(image_ids))):
            image.status = ImageStatus.QUEUED
    assert tasks.embed_images_task.apply(args=[[str(i) for i in image_ids]]).get() == len(image_ids)
    assert tasks.embed_images_task.apply(args=[[str(i) for i in image_ids]]).get() == 0

    images_collection, _ = production_runtime.collections()
    assert production_runtime.vectors.count(images_collection) == len(image_ids)
    assert predictions_per_image(production_runtime, image_ids) == {image_id: 1 for image_id in image_ids}
