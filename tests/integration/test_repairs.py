"""Reconciliation, reindexing, bounded attempts and transient-error retries on PostgreSQL and Qdrant over HTTP."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select, update

from services.catalog.models import Image, ImageStatus, Prediction
from services.db import unit_of_work
from services.ingest.dispatch import embed_claimed, is_transient
from services.ingest.reconcile import reconcile
from services.ingest.reindex import reindex
from services.runtime import Runtime
from services.vectors import VectorIndexError, VectorPoint
from tests.conftest import class_images
from tests.integration.test_production_stack import (
    GALLERY_PER_CLASS,
    images_by_id,
    predictions_per_image,
    queue_images,
    seed_gallery,
    stored_point_ids,
)

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")]


class HeldQueue:
    """Keeps enqueued image ids so the test can check what was enqueued."""

    def __init__(self) -> None:
        self.image_ids: list[uuid.UUID] = []

    def enqueue(self, image_ids) -> None:
        self.image_ids.extend(image_ids)

    def close(self) -> None:
        pass


def _set(runtime, image_ids, **values) -> None:
    with unit_of_work(runtime.sessions) as session:
        session.execute(update(Image).where(Image.id.in_(image_ids)).values(**values))


def test_reconcile_repairs_each_disagreement(production_runtime, labeled_images):
    runtime = production_runtime
    seed_gallery(runtime, labeled_images)
    embedded = queue_images(runtime, class_images(labeled_images, "polyp", 10)[GALLERY_PER_CLASS:], "COL-R1")
    assert embed_claimed(runtime, embedded, fill=False) == 4
    stuck = queue_images(runtime, class_images(labeled_images, "normal-cecum", 8)[GALLERY_PER_CLASS:], "COL-R2")
    images_collection, _ = runtime.collections()

    runtime.vectors.delete(images_collection, [embedded[0]])
    orphan = uuid.uuid4()
    runtime.vectors.upsert(images_collection, [VectorPoint(orphan, np.ones(runtime.embedder.dim, np.float32), {})])
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    _set(runtime, [stuck[0]], status_changed_at=long_ago)
    _set(runtime, [stuck[1]], status_changed_at=long_ago, attempts=runtime.settings.embed_max_attempts)

    queue = HeldQueue()
    preview = reconcile(runtime, queue, dry_run=True)
    assert (preview.embedded_without_point, preview.orphan_image_points, preview.stuck_queued) == (1, 1, 2)
    assert queue.image_ids == []
    assert orphan in stored_point_ids(runtime, [orphan])

    report = reconcile(runtime, queue)

    assert report.embedded_without_point == 1
    assert report.orphan_image_points == 1
    assert report.stuck_queued == 2
    assert report.exhausted == 1
    assert sorted(queue.image_ids) == sorted([embedded[0], stuck[0]])
    assert stored_point_ids(runtime, [orphan]) == []
    images = images_by_id(runtime, embedded + stuck)
    assert images[embedded[0]].status == ImageStatus.QUEUED
    assert images[stuck[1]].status == ImageStatus.FAILED
    assert "gave up after 3 attempts" in images[stuck[1]].error

    assert embed_claimed(runtime, queue.image_ids, fill=False) == 2
    again = reconcile(runtime, HeldQueue())
    assert (again.embedded_without_point, again.orphan_image_points, again.stuck_queued) == (0, 0, 0)


def test_reindex_embeds_old_images_and_switches_aliases(production_runtime, labeled_images):
    runtime = production_runtime
    seed_gallery(runtime, labeled_images)
    image_ids = queue_images(runtime, class_images(labeled_images, "polyp", 9)[GALLERY_PER_CLASS:])
    assert embed_claimed(runtime, image_ids, fill=False) == 3
    images_collection, references_collection = runtime.collections()
    # As if these images had been embedded by an earlier model: no point in this model's collection.
    _set(runtime, image_ids, model_version="lite-previous")
    runtime.vectors.delete(images_collection, image_ids)
    runtime.vectors.delete(references_collection, list(runtime.vectors.iter_point_ids(references_collection)))

    report = reindex(runtime)

    assert report.references == 2 * GALLERY_PER_CLASS
    assert report.images == 3
    assert report.images_remaining == 0
    assert runtime.vectors.count(references_collection) == 2 * GALLERY_PER_CLASS
    assert sorted(stored_point_ids(runtime, image_ids)) == sorted(image_ids)
    assert {image.model_version for image in images_by_id(runtime, image_ids).values()} == {runtime.model_version}
    assert runtime.vectors.alias_target("images") == images_collection
    assert runtime.vectors.alias_target("references") == references_collection
    assert reindex(runtime).images == 0


def test_exhausted_attempts_mark_image_failed(production_runtime, labeled_images):
    runtime = production_runtime
    seed_gallery(runtime, labeled_images)
    [image_id] = queue_images(runtime, class_images(labeled_images, "polyp", 7)[GALLERY_PER_CLASS:])
    _set(runtime, [image_id], attempts=runtime.settings.embed_max_attempts)

    assert embed_claimed(runtime, [image_id]) == 0

    image = images_by_id(runtime, [image_id])[image_id]
    assert image.status == ImageStatus.FAILED
    assert "gave up after 3 attempts" in image.error
    assert stored_point_ids(runtime, [image_id]) == []


def test_qdrant_down_keeps_image_queued_for_retry(stack, production_runtime, lite_embedder, labeled_images):
    [image_id] = queue_images(production_runtime, class_images(labeled_images, "polyp", 1))
    # Nothing listens on TCP port 1 of the loopback interface.
    down = Runtime(stack.settings.model_copy(update={"qdrant_url": "http://127.0.0.1:1", "qdrant_timeout_s": 1}),
                   embedder=lite_embedder)

    with pytest.raises(VectorIndexError) as raised:
        embed_claimed(down, [image_id])

    assert is_transient(raised.value)
    image = images_by_id(production_runtime, [image_id])[image_id]
    assert image.status == ImageStatus.QUEUED
    assert image.attempts == 0
    down.close()


def test_task_retries_then_leaves_image_queued(stack, production_runtime, lite_embedder, labeled_images, monkeypatch):
    from workers import tasks

    [image_id] = queue_images(production_runtime, class_images(labeled_images, "polyp", 1))
    down = Runtime(stack.settings.model_copy(update={"qdrant_url": "http://127.0.0.1:1", "qdrant_timeout_s": 1,
                                                     "embed_max_retries": 2}), embedder=lite_embedder)
    monkeypatch.setattr(tasks, "_runtime", down)

    result = tasks.embed_images_task.apply(args=[[str(image_id)]])

    assert result.failed()
    assert isinstance(result.result, VectorIndexError)
    image = images_by_id(production_runtime, [image_id])[image_id]
    assert image.status == ImageStatus.QUEUED
    assert image.attempts == 0
    with unit_of_work(production_runtime.sessions) as session:
        assert session.scalars(select(Prediction).where(Prediction.image_id == image_id)).all() == []
    down.close()


def test_unreadable_blob_fails_image_with_reason(production_runtime, labeled_images):
    runtime = production_runtime
    seed_gallery(runtime, labeled_images)
    image_ids = queue_images(runtime, class_images(labeled_images, "polyp", 8)[GALLERY_PER_CLASS:])
    broken = images_by_id(runtime, [image_ids[0]])[image_ids[0]]
    (runtime.settings.resolved_blob_dir / broken.blob_key).unlink()

    assert embed_claimed(runtime, image_ids, fill=False) == 1

    images = images_by_id(runtime, image_ids)
    assert images[image_ids[0]].status == ImageStatus.FAILED
    assert "could not be read" in images[image_ids[0]].error
    assert images[image_ids[1]].status == ImageStatus.EMBEDDED
    assert predictions_per_image(runtime, image_ids) == {image_ids[1]: 1}


def test_claim_fills_batch_from_backlog(production_runtime, labeled_images):
    runtime = production_runtime
    seed_gallery(runtime, labeled_images)
    image_ids = queue_images(runtime, class_images(labeled_images, "polyp", 16)[GALLERY_PER_CLASS:])

    assert embed_claimed(runtime, image_ids[:1]) == 10

    images = images_by_id(runtime, image_ids)
    assert {image.status for image in images.values()} == {ImageStatus.EMBEDDED}
    assert {image.attempts for image in images.values()} == {1}
    assert embed_claimed(runtime, image_ids[1:]) == 0


def test_scheduled_reconcile_enqueues_stuck_image(stack, production_runtime, labeled_images, monkeypatch):
    import redis

    from workers import tasks

    [image_id] = queue_images(production_runtime, class_images(labeled_images, "polyp", 1))
    _set(production_runtime, [image_id], status_changed_at=datetime.now(UTC) - timedelta(hours=1))
    monkeypatch.setattr(tasks, "_runtime", production_runtime)

    report = tasks.reconcile_task.apply().get()

    assert report["stuck_queued"] == 1
    assert report["requeued"] == 1
    broker = redis.Redis.from_url(stack.settings.broker_url)
    assert broker.llen("embed") == 1
    assert str(image_id) in broker.lindex("embed", 0).decode()
