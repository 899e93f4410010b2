"""The Celery application both sides share: the API sends job ids, workers run them.

Only `job_id` travels through the broker; the job row in SQL says what to do. A message is
acknowledged only after its job ran (late acks) and requeued when its worker is lost, and a
worker takes one message at a time, so a job waits in the broker rather than behind another.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Queue

from cadenza.config import Settings
from cadenza.jobs import fs_broker

RUN_JOB_TASK = "cadenza.run_job"
QUEUES = ("cpu", "gpu")
# A training job held for a Kubernetes Job (`cadenza k8s train-job`): no worker consumes this
# queue, so nothing is sent for it (first send, re-sends, requeues after a drain or a lost
# lease), and only the pods that `kubectl apply` starts claim it by its id. Without it a GPU
# worker (say, one KEDA just scaled up for it) could claim the job first and train it alone.
HELD_QUEUE = "cluster"


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options: folders for the embedded filesystem broker, timeouts for Redis."""
    if settings.embedded:
        base = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(base / "queue"),
            "data_folder_out": str(base / "queue"),
            "processed_folder": str(base / "processed"),
            "control_folder": str(base / "control"),
            "store_processed": False,
            "polling_interval": 0.2,
        }
    # A redelivery after the visibility timeout is harmless (the SQL claim refuses it),
    # but a long one avoids needless duplicate messages for long training runs.
    return {"visibility_timeout": 6 * 3600}


def make_celery(settings: Settings) -> Celery:
    """Create the Celery app for `settings` (no result backend: results live in SQL)."""
    app = Celery("cadenza", broker=settings.resolved_broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="cpu",
        task_queues=[Queue(q, routing_key=q) for q in QUEUES],
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=not settings.embedded,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    if settings.embedded:
        app.conf.broker_transport = fs_broker.TRANSPORT
    return app


_clients: dict[str, Celery] = {}


def enqueue(settings: Settings, job_id: str, queue: str) -> None:
    """Send a job id to its queue; call only after the job row is committed.

    A job on `HELD_QUEUE` is not sent: its cluster Job's pods claim it by id."""
    if queue == HELD_QUEUE:
        return
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}")
    key = settings.resolved_broker_url + str(settings.broker_dir)
    app = _clients.get(key)
    if app is None:
        app = _clients[key] = make_celery(settings)
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue, routing_key=queue)


def ping_broker(settings: Settings, timeout: float = 3.0) -> None:
    """Raise if the broker cannot be reached (readiness probe)."""
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
