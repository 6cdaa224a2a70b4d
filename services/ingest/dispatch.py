"""Hand queued images to the embedding step: in this process, or to Celery workers.

Two paths share `embed_images`:

- the embedded deployment runs `run_embedding` in one background thread of the API process;
- a Celery worker runs `embed_claimed`, which first claims the images in their own committed
  transaction (counting the attempt), fills the batch from the backlog of other queued
  images, and only then embeds them. A worker that dies mid-batch leaves the attempt counted,
  so a task redelivered after repeated crashes marks its images `failed` instead of looping.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import httpx
import structlog
from sqlalchemy import select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from services.catalog.models import Image, ImageStatus
from services.db import unit_of_work
from services.ingest.service import embed_images
from services.runtime import Runtime
from services.vectors import VectorIndexError

if TYPE_CHECKING:
    from celery import Celery

    from services.settings import Settings

logger = structlog.get_logger(__name__)

EMBED_TASK = "endodoc.embed_images"
EMBED_QUEUE = "embed"


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
        _mark_failed(runtime, image_ids, f"embedding failed: {type(error).__name__}: {error}")
        return 0


def _mark_failed(runtime: Runtime, image_ids: Sequence[uuid.UUID], reason: str) -> None:
    with unit_of_work(runtime.sessions) as session:
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED)
            .values(status=ImageStatus.FAILED, error=reason, status_changed_at=datetime.now(UTC))
        )


def is_transient(error: BaseException) -> bool:
    """Return True when `error` means Qdrant, PostgreSQL or Redis is unavailable, so a retry may succeed."""
    from kombu.exceptions import OperationalError as BrokerError
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    if isinstance(error, VectorIndexError):
        cause = error.__cause__
        if isinstance(cause, ResponseHandlingException | httpx.TransportError):
            return True
        return isinstance(cause, UnexpectedResponse) and (cause.status_code >= 500 or cause.status_code == 429)
    if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, RedisConnectionError | RedisTimeoutError | BrokerError)


@dataclass(frozen=True)
class Claim:
    """Images one worker task embeds now, and those it gave up on after too many attempts."""

    image_ids: list[uuid.UUID]
    exhausted_ids: list[uuid.UUID]


def claim_images(session: Session, runtime: Runtime, image_ids: Sequence[uuid.UUID], *, fill: bool) -> Claim:
    """Lock the task's queued images, fill the batch from the backlog and count one attempt for each.

    The task's own images are locked in id order and waited for, so a second task for the
    same image runs only after the first has committed, and then finds nothing to do. The
    backlog fill skips rows another worker has locked (PostgreSQL `SKIP LOCKED`). An image whose
    attempts already reached `embed_max_attempts` is marked `failed` instead of claimed.
    """
    settings = runtime.settings
    own = list(
        session.scalars(
            select(Image)
            .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED)
            .order_by(Image.id)
            .with_for_update()
        )
    )
    claimed = own
    room = settings.model.batch_size - len(own)
    if fill and room > 0 and session.get_bind().dialect.name == "postgresql":
        backlog = session.scalars(
            select(Image)
            .where(Image.status == ImageStatus.QUEUED, Image.id.not_in([image.id for image in own] or [uuid.UUID(int=0)]))
            .order_by(Image.status_changed_at, Image.id)
            .limit(room)
            .with_for_update(skip_locked=True)
        )
        claimed = own + list(backlog)

    now = datetime.now(UTC)
    ready, exhausted = [], []
    for image in claimed:
        if image.attempts >= settings.embed_max_attempts:
            image.status = ImageStatus.FAILED
            image.error = (
                f"embedding gave up after {image.attempts} attempts: the worker stopped during each one "
                "(killed, out of memory, or past the time limit); check the worker logs, then upload the image again"
            )
            image.status_changed_at = now
            exhausted.append(image.id)
            logger.error("image_attempts_exhausted", image_id=str(image.id), attempts=image.attempts)
            continue
        image.attempts += 1
        ready.append(image.id)
    return Claim(image_ids=ready, exhausted_ids=exhausted)


def release_attempts(runtime: Runtime, image_ids: Sequence[uuid.UUID]) -> None:
    """Take back the attempt counted for images whose task failed on an unavailable service."""
    with unit_of_work(runtime.sessions) as session:
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED, Image.attempts > 0)
            .values(attempts=Image.attempts - 1)
        )


def embed_claimed(runtime: Runtime, image_ids: Sequence[uuid.UUID], *, fill: bool = True) -> int:
    """Claim, then embed the images of one worker task; return how many were embedded.

    Transient errors (see `is_transient`) propagate after the attempt is taken back, so the
    task can retry. Any other error marks the claimed images `failed` with the reason.
    """
    with unit_of_work(runtime.sessions) as session:
        claim = claim_images(session, runtime, image_ids, fill=fill)
    if not claim.image_ids:
        return 0

    try:
        with unit_of_work(runtime.sessions) as session:
            return embed_images(session, runtime, claim.image_ids)
    except Exception as error:
        if is_transient(error):
            logger.warning("embedding_deferred", image_ids=[str(i) for i in claim.image_ids], error=str(error))
            release_attempts(runtime, claim.image_ids)
            raise
        logger.exception("embedding_failed", image_ids=[str(i) for i in claim.image_ids], error=str(error))
        _mark_failed(runtime, claim.image_ids, f"embedding failed: {type(error).__name__}: {error}")
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
    """Sends one Celery task per batch of image ids to the `embed` queue of the GPU workers.

    When Redis stays unreachable through the publish retries, the images stay `queued` and
    the error is logged: reconciliation enqueues them again later, so the upload still succeeds.
    """

    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        from workers.celery_app import make_celery

        self._app = app if app is not None else make_celery(settings)
        self._batch_size = settings.model.batch_size

    def enqueue(self, image_ids: Sequence[uuid.UUID]) -> None:
        from kombu.exceptions import OperationalError as BrokerError

        ids = [str(image_id) for image_id in image_ids]
        for start in range(0, len(ids), self._batch_size):
            batch = ids[start : start + self._batch_size]
            try:
                self._app.send_task(
                    EMBED_TASK,
                    args=[batch],
                    queue=EMBED_QUEUE,
                    retry=True,
                    retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
                )
            except BrokerError as error:
                # The later batches would wait through the same retries, so they are left to reconciliation too.
                logger.error("enqueue_failed", image_ids=ids[start:], error=str(error),
                             fix="bring the broker back; reconciliation enqueues images queued longer than "
                             "ENDODOC_RECONCILE_QUEUED_AFTER_S")
                return

    def close(self) -> None:
        self._app.close()


def make_queue(runtime: Runtime) -> EmbeddingQueue:
    """Return Celery when a broker URL is set, else the in-process queue."""
    if runtime.settings.broker_url:
        return CeleryQueue(runtime.settings)
    return InProcessQueue(runtime)
