"""Celery worker: one task, `cadenza.run_job`, that hands a job id to the shared runner.

Start it with `cadenza worker --queues cpu,gpu`. The worker's main process also runs the
reconciler: jobs whose lease expired (a worker killed mid-job) are requeued or failed, and
queued jobs whose broker message was lost are re-sent.

SIGTERM (Celery's warm shutdown) sets the drain flag: the running job stops resumably and is
requeued without using up an attempt, then the worker exits. With `CADENZA_WORKER_HEARTBEAT_FILE`
set the worker keeps that file fresh while it is alive, busy or idle (`cadenza worker-alive`).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from cadenza.config import get_settings
from cadenza.db.session import engine_for
from cadenza.jobs import heartbeat
from cadenza.jobs.queue import RUN_JOB_TASK, make_celery
from cadenza.jobs.reconciler import reconcile_and_resend
from cadenza.jobs.runner import run_job as _run_job
from cadenza.sweep import sweep_pending

log = logging.getLogger("cadenza.worker")
settings = get_settings()
app: Celery = make_celery(settings)


@app.task(name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True)
def run_job(job_id: str) -> str | None:
    """Run one job; a second delivery of the same id is a no-op (SQL compare-and-set)."""
    return _run_job(job_id, settings)


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    """A forked child (prefork pool) must not share its parent's DB connections."""
    engine_for(settings.resolved_database_url).dispose(close=False)
    _limit_threads()


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    _limit_threads()


def _limit_threads() -> None:
    if settings.torch_threads:
        try:
            import torch

            torch.set_num_threads(settings.torch_threads)
        except ImportError:
            pass


_stop = threading.Event()


def reconcile_once() -> tuple[list[str], list[str]]:
    """Requeue/fail jobs of dead workers and re-send queued jobs whose message was lost."""
    requeued, failed, resent = reconcile_and_resend(settings)
    if requeued or failed or resent:
        log.warning("reconciler: requeued %s, failed %s, re-sent %s", requeued, failed, resent)
    return requeued, failed


def _reconcile_loop() -> None:
    while not _stop.wait(settings.reconcile_interval_seconds):
        try:
            reconcile_once()
        except Exception:
            log.exception("reconciler round failed")
        try:  # objects of deleted rows that a delete's own sweep could not remove yet
            sweep_pending(settings, limit=200)
        except Exception:
            log.exception("sweep round failed")


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    try:
        reconcile_once()
    except Exception:
        log.exception("initial reconcile failed")
    threading.Thread(target=_reconcile_loop, name="cadenza-reconciler", daemon=True).start()


@worker_ready.connect
def _start_heartbeat(**_: Any) -> None:
    path = settings.worker_heartbeat_file
    if path is not None:
        heartbeat.IdleTicker(path, settings.worker_heartbeat_interval_seconds).start()


@worker_shutting_down.connect
def _drain(**_: Any) -> None:
    """Warm shutdown began (SIGTERM, first Ctrl-C): the running job stops resumably."""
    heartbeat.DRAIN.set()


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    _stop.set()
