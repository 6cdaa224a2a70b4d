"""Thin Celery tasks: parse ids, then call one service function."""

from __future__ import annotations

import threading
import uuid

import structlog
from celery import Task

from services.ingest.dispatch import EMBED_TASK, embed_claimed, is_transient
from services.runtime import Runtime
from services.settings import Settings, get_settings
from workers.celery_app import RECONCILE_TASK, app

logger = structlog.get_logger(__name__)

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()

# Retry delays grow 2, 4, 8 ... seconds up to this cap while a service is unavailable.
RETRY_BACKOFF_MAX_S = 120


def worker_runtime() -> Runtime:
    """Return this worker process's runtime; the model loads once per process."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


def retry_delay_s(retries: int, settings: Settings) -> int:
    """Return the delay before retry number `retries + 1`: 2 s doubling up to the cap.

    The cap is RETRY_BACKOFF_MAX_S, or less when the visibility timeout requires it. A retried
    task waits unacknowledged in the worker until its delay ends and then runs for up to the
    time limit. Redis hands a message unacknowledged for longer than the visibility timeout to
    a worker again, so a longer delay would start a second copy of the task at each retry.
    """
    cap_s = min(RETRY_BACKOFF_MAX_S, settings.resolved_visibility_timeout_s - settings.task_time_limit_s)
    return max(1, min(cap_s, 2 ** (retries + 1)))


@app.task(name=EMBED_TASK, bind=True, max_retries=None)
def embed_images_task(self: Task, image_ids: list[str]) -> int:
    """Embed, index and label queued images; safe to run twice or after a redelivery."""
    ids = [uuid.UUID(image_id) for image_id in image_ids]
    try:
        return embed_claimed(worker_runtime(), ids)
    except Exception as error:
        settings = worker_runtime().settings
        if not is_transient(error) or self.request.retries >= settings.embed_max_retries:
            # The images stay `queued`: reconciliation enqueues them again once the service is back.
            raise
        delay_s = retry_delay_s(self.request.retries, settings)
        logger.warning("embed_task_retry", image_ids=image_ids, retries=self.request.retries, delay_s=delay_s,
                       error=str(error))
        raise self.retry(exc=error, countdown=delay_s) from error


@app.task(name=RECONCILE_TASK)
def reconcile_task() -> dict:
    """Repair the catalog and the vector index where they disagree; scheduled by Celery beat."""
    from services.ingest.dispatch import CeleryQueue
    from services.ingest.reconcile import reconcile

    runtime = worker_runtime()
    queue = CeleryQueue(runtime.settings)
    try:
        return reconcile(runtime, queue).as_dict()
    finally:
        queue.close()
