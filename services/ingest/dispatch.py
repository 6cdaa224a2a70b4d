"""Hand queued images to the embedding step: in this process, or to Celery workers."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Protocol

import structlog
from sqlalchemy import update

from services.catalog.models import Image, ImageStatus
from services.db import unit_of_work
from services.ingest.service import embed_images
from services.runtime import Runtime

logger = structlog.get_logger(__name__)


class EmbeddingQueue(Protocol):
    """Accepts ids of committed `queued` images for embedding."""

    def enqueue(self, image_ids: Sequence[uuid.UUID]) -> None: ...

    def close(self) -> None: ...


def run_embedding(runtime: Runtime, image_ids: Sequence[uuid.UUID]) -> int:
    """Embed the images in one transaction; if that fails, mark them `failed` with the reason."""
    try:
        with unit_of_work(runtime.sessions) as session:
            return embed_images(session, runtime, image_ids)
    except Exception as error:
        logger.exception("embedding_failed", image_ids=[str(image_id) for image_id in image_ids], error=str(error))
        with unit_of_work(runtime.sessions) as session:
            session.execute(
                update(Image)
                .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED)
                .values(
                    status=ImageStatus.FAILED,
                    error=f"embedding failed: {type(error).__name__}: {error}",
                    status_changed_at=datetime.now(UTC),
                )
            )
        return 0


class InProcessQueue:
    """Embeds in one background thread of this process, in submission order (the embedded mode)."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="endodoc-embed")
        self._pending: set[Future] = set()
        self._lock = threading.Lock()

    def enqueue(self, image_ids: Sequence[uuid.UUID]) -> None:
        if not image_ids:
            return
        future = self._executor.submit(run_embedding, self._runtime, list(image_ids))
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def wait_idle(self, timeout_s: float | None = None) -> None:
        """Block until every enqueued batch has finished (for the CLI and tests)."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            future.result(timeout=timeout_s)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class CeleryQueue:
    """Sends one Celery task per batch to the `embed` queue of the GPU workers."""

    def enqueue(self, image_ids: Sequence[uuid.UUID]) -> None:
        if not image_ids:
            return
        from workers.tasks import embed_images_task

        embed_images_task.delay([str(image_id) for image_id in image_ids])

    def close(self) -> None:
        pass


def make_queue(runtime: Runtime) -> EmbeddingQueue:
    """Return Celery when a broker URL is set, else the in-process queue."""
    if runtime.settings.broker_url:
        return CeleryQueue()
    return InProcessQueue(runtime)
