"""The Celery application of the embedding workers."""

from __future__ import annotations

from celery import Celery

from services.settings import get_settings

EMBED_QUEUE = "embed"


def make_celery() -> Celery:
    settings = get_settings()
    app = Celery("endodoc", broker=settings.broker_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_default_queue=EMBED_QUEUE,
        task_routes={"endodoc.embed_images": {"queue": EMBED_QUEUE}},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_ignore_result=True,
        broker_transport_options={"visibility_timeout": settings.task_time_limit_s * 2},
        broker_connection_retry_on_startup=True,
    )
    return app


app = make_celery()
