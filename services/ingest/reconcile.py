"""Reconciliation: repair the catalog and the vector index where they disagree.

Three repairs, each safe to run at any time and twice:

- an image marked `embedded` under the current model whose point is missing goes back to
  `queued` and is enqueued again;
- a point of the images collection without an image row is deleted, because nothing can
  reach it any more (points of the references collection without a row are only counted);
- an image `queued` for longer than `reconcile_queued_after_s` (its task was lost: Redis was
  down at enqueue time, or its message was dropped) is enqueued again, or marked `failed`
  when its attempts are used up.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

import structlog
from sqlalchemy import select

from services.catalog.models import Image, ImageStatus, ReferenceImage
from services.db import unit_of_work
from services.ingest.dispatch import EmbeddingQueue
from services.runtime import Runtime

logger = structlog.get_logger(__name__)

# Ids per catalog query and per vector retrieve request.
CHUNK_SIZE = 500


@runtime_checkable
class ScrollableIndex(Protocol):
    """A vector index that can list every point id of a collection."""

    def iter_point_ids(self, collection: str, page_size: int = ...) -> Iterator[uuid.UUID]: ...


@dataclass
class ReconcileReport:
    """Counts of the disagreements one reconciliation run found and repaired."""

    embedded_without_point: int = 0
    orphan_image_points: int = 0
    orphan_reference_points: int = 0
    stuck_queued: int = 0
    exhausted: int = 0
    requeued: int = 0
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _chunks(items: Sequence, size: int = CHUNK_SIZE) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def reconcile(runtime: Runtime, queue: EmbeddingQueue, *, dry_run: bool = False) -> ReconcileReport:
    """Find and repair disagreements between the catalog and the vector index; see the module docstring.

    With `dry_run`, only counts what it would repair. Images are enqueued after the commit.
    """
    report = ReconcileReport()
    images_collection, references_collection = runtime.collections()
    model_version = runtime.model_version
    requeue: list[uuid.UUID] = []

    with unit_of_work(runtime.sessions) as session:
        embedded_ids = list(
            session.scalars(
                select(Image.id).where(Image.status == ImageStatus.EMBEDDED, Image.model_version == model_version)
            )
        )
        missing: list[uuid.UUID] = []
        for chunk in _chunks(embedded_ids):
            stored = {point.id for point in runtime.vectors.retrieve(images_collection, chunk)}
            missing.extend(image_id for image_id in chunk if image_id not in stored)
        report.embedded_without_point = len(missing)
        if missing and not dry_run:
            now = datetime.now(UTC)
            for chunk in _chunks(missing):
                for image in session.scalars(select(Image).where(Image.id.in_(chunk)).with_for_update()):
                    if image.status != ImageStatus.EMBEDDED:
                        continue
                    image.status = ImageStatus.QUEUED
                    image.model_version = None
                    image.attempts = 0
                    image.status_changed_at = now
                    requeue.append(image.id)
            logger.warning("reconcile_points_missing", count=len(missing), collection=images_collection)

        stale_before = datetime.now(UTC) - timedelta(seconds=runtime.settings.reconcile_queued_after_s)
        stuck = list(
            session.scalars(
                select(Image)
                .where(Image.status == ImageStatus.QUEUED, Image.status_changed_at < stale_before)
                .with_for_update(skip_locked=True)
            )
        )
        report.stuck_queued = len(stuck)
        if not dry_run:
            now = datetime.now(UTC)
            for image in stuck:
                if image.attempts >= runtime.settings.embed_max_attempts:
                    image.status = ImageStatus.FAILED
                    image.error = (
                        f"embedding gave up after {image.attempts} attempts; check the worker logs, "
                        "then upload the image again"
                    )
                    report.exhausted += 1
                else:
                    requeue.append(image.id)
                image.status_changed_at = now

    report.orphan_image_points = _delete_orphans(runtime, images_collection, Image, report, dry_run)
    # NOTE: reference points are only counted. `add_references` upserts a point before its row
    # commits, so deleting a reference point that has no row yet could remove a live one.
    report.orphan_reference_points = _delete_orphans(
        runtime, references_collection, ReferenceImage, report, dry_run=True
    )

    if requeue and not dry_run:
        queue.enqueue(requeue)
    report.requeued = len(requeue)
    logger.info("reconciled", dry_run=dry_run, **{k: v for k, v in report.as_dict().items() if k != "skipped"})
    return report


def _delete_orphans(runtime: Runtime, collection: str, table: type, report: ReconcileReport, dry_run: bool) -> int:
    """Delete the points of `collection` whose id has no row in `table`; return how many there were."""
    vectors = runtime.vectors
    if not isinstance(vectors, ScrollableIndex):
        report.skipped.append(f"orphan points in {collection}: the vector index cannot list point ids")
        return 0

    orphans: list[uuid.UUID] = []
    page: list[uuid.UUID] = []

    def check(ids: list[uuid.UUID]) -> None:
        with unit_of_work(runtime.sessions) as session:
            known = set(session.scalars(select(table.id).where(table.id.in_(ids))))
        orphans.extend(point_id for point_id in ids if point_id not in known)

    for point_id in vectors.iter_point_ids(collection, CHUNK_SIZE):
        page.append(point_id)
        if len(page) >= CHUNK_SIZE:
            check(page)
            page = []
    if page:
        check(page)

    if orphans and not dry_run:
        # A row inserted since the check would own its point again, so check once more before deleting.
        with unit_of_work(runtime.sessions) as session:
            known = set(session.scalars(select(table.id).where(table.id.in_(orphans))))
        confirmed = [point_id for point_id in orphans if point_id not in known]
        runtime.vectors.delete(collection, confirmed)
        logger.warning("reconcile_orphan_points_deleted", count=len(confirmed), collection=collection)
    return len(orphans)
