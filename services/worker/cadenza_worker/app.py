"""Celery worker: one task, `cadenza.run_job`, that hands a job id to the shared runner.

Start it with `cadenza worker --queues cpu,gpu`. The worker's main process also runs the
reconciler: jobs whose lease expired (a worker killed mid-job) are requeued or failed, and
queued jobs whose broker message was lost are re-sent.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready, worker_shutdown
from sqlalchemy import select

from cadenza.config import get_settings
from cadenza.db.models import Job, utcnow
from cadenza.db.session import engine_for, session_factory
from cadenza.jobs import queued_jobs, reconcile
from cadenza.queue import RUN_JOB_TASK, enqueue, make_celery
from cadenza.runner import run_job as _run_job

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
    with session_factory(settings.resolved_database_url)() as s:
        requeued, failed = reconcile(s)
        stale = utcnow() - timedelta(seconds=max(120, settings.job_lease_seconds * 2))
        resend = list(queued_jobs(s, stale))
        # Touch updated_at so a lost message is re-sent at most once per period.
        for job in resend:
            job.updated_at = utcnow()
        s.commit()
        targets = {j.id: j.queue for j in resend}
        targets.update({j.id: j.queue for j in s.scalars(select(Job).where(Job.id.in_(requeued)))})
    for job_id, queue in targets.items():
        enqueue(settings, job_id, queue)
    if targets or failed:
        log.warning("reconciler: requeued %s, failed %s, re-sent %s", requeued, failed, targets)
    return requeued, failed


def _reconcile_loop() -> None:
    while not _stop.wait(settings.reconcile_interval_seconds):
        try:
            reconcile_once()
        except Exception:
            log.exception("reconciler round failed")


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    try:
        reconcile_once()
    except Exception:
        log.exception("initial reconcile failed")
    threading.Thread(target=_reconcile_loop, name="cadenza-reconciler", daemon=True).start()


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    _stop.set()
