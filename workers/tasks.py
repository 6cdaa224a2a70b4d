"""Thin Celery tasks: parse ids, then call one service function."""

from __future__ import annotations

import threading
import uuid

from services.ingest.dispatch import run_embedding
from services.runtime import Runtime
from services.settings import get_settings
from workers.celery_app import app

_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def worker_runtime() -> Runtime:
    """Return this worker process's runtime; the model loads once per process."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime(get_settings())
        return _runtime


@app.task(name="endodoc.embed_images")
def embed_images_task(image_ids: list[str]) -> int:
    """Embed, index and label queued images; safe to run twice."""
    return run_embedding(worker_runtime(), [uuid.UUID(image_id) for image_id in image_ids])
