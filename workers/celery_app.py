"""The Celery application of the embedding workers.

Workers run with the solo pool, one worker process per GPU: the model loads into CUDA once
in that process, and nothing forks after CUDA has started (a forked child cannot use the
parent's CUDA context). `endodoc worker` starts a worker this way.
"""

from __future__ import annotations

from celery import Celery

from services.ingest.dispatch import EMBED_QUEUE, EMBED_TASK
from services.settings import Settings, get_settings

RECONCILE_TASK = "endodoc.reconcile"

# Loopback default for a developer machine; production sets ENDODOC_BROKER_URL.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class BrokerSettingsError(ValueError):
    """The broker settings would redeliver tasks that are still running."""


def make_celery(settings: Settings | None = None) -> Celery:
    """Build the Celery app for `settings`: late acknowledgement, prefetch 1, bounded visibility timeout."""
    settings = settings if settings is not None else get_settings()
    visibility_timeout_s = settings.resolved_visibility_timeout_s
    if visibility_timeout_s <= settings.task_time_limit_s:
        raise BrokerSettingsError(
            f"ENDODOC_BROKER_VISIBILITY_TIMEOUT_S={visibility_timeout_s} is not above "
            f"ENDODOC_TASK_TIME_LIMIT_S={settings.task_time_limit_s}: Redis would hand a running task to a "
            "second worker; raise the visibility timeout or unset it (default: twice the time limit)"
        )

    app = Celery("endodoc", broker=settings.broker_url or DEFAULT_BROKER_URL)
    app.conf.update(
        task_default_queue=EMBED_QUEUE,
        task_routes={EMBED_TASK: {"queue": EMBED_QUEUE}, RECONCILE_TASK: {"queue": EMBED_QUEUE}},
        task_serializer="json",
        accept_content=["json"],
        # The message is acknowledged after the task returns, so a worker that dies mid-batch
        # leaves it for redelivery; the per-image attempt count bounds the redeliveries.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=settings.task_time_limit_s,
        task_ignore_result=True,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,
            # Sweep for messages of dead workers often enough to notice them soon after the timeout.
            "unacked_restore_interval": max(1, min(10, visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        },
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        beat_schedule={
            "reconcile": {"task": RECONCILE_TASK, "schedule": float(settings.reconcile_interval_s)},
        },
    )
    return app


app = make_celery()
app.conf.include = ["workers.tasks"]
