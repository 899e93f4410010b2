"""Run one job exactly once in effect, whatever the broker delivers.

`run_job` claims the job row by compare-and-set, renews a lease while the handler works,
and makes the handler's outputs visible in the same SQL commit that marks the job
succeeded. Every write names the claim's token, so an attempt that lost the job (paused past
its lease) stops at its next write or renewal and leaves nothing behind. Handlers
(`cadenza.jobs.handlers.*`, named in the job-type table) are imported only
when a job of their type runs, so a process that never trains never imports torch.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable

from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.db.session import session_factory
from cadenza.jobs.context import JobCancelled, JobContext, JobLost, Outcome, UserError
from cadenza.jobs.registry import JOB_TYPES
from cadenza.jobs.state import JobState, add_event, claim, finish, renew_lease
from cadenza.storage import open_store

log = logging.getLogger("cadenza.runner")

Handler = Callable[[JobContext], Outcome]
LOST_MESSAGE = "job %s was taken from this attempt; it stopped and its outputs were discarded"


def load_handler(job_type: str) -> Handler:
    """The handler function of `job_type`, imported now (heavy imports stay in workers)."""
    spec = JOB_TYPES.get(job_type)
    if spec is None:
        raise UserError(f"no handler for job type {job_type!r}")
    module, _, attr = spec.handler.partition(":")
    fn: Handler = getattr(importlib.import_module(module), attr)
    return fn


class _LeaseKeeper(threading.Thread):
    """Renews the job's lease and notices cancel requests while the handler runs."""

    def __init__(self, ctx: JobContext) -> None:
        super().__init__(name=f"lease-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.interval = max(1.0, min(ctx.settings.job_lease_seconds / 3.0, 2.0))

    def run(self) -> None:
        factory = session_factory(self.ctx.settings.resolved_database_url)
        while not self.stop.wait(self.interval):
            try:
                with factory() as s:
                    ours, cancel = renew_lease(
                        s,
                        self.ctx.job_id,
                        token=self.ctx.claim_token,
                        lease_seconds=self.ctx.settings.job_lease_seconds,
                    )
                if not ours:
                    # Another attempt owns the job now: the handler stops at its next check.
                    self.lost.set()
                    self.ctx.mark_lost()
                    return
                if cancel:
                    self.ctx._cancel.set()
            except Exception:  # a DB blip must not kill the job; the next round retries
                log.exception("lease renewal failed for job %s", self.ctx.job_id)


def claim_context(job_id: str, settings: Settings) -> JobContext | None:
    """Claim job `job_id` (compare-and-set) and describe it; None if not ours to run."""
    factory = session_factory(settings.resolved_database_url)
    with factory() as s:
        job = claim(s, job_id, lease_seconds=settings.job_lease_seconds)
        if job is None:
            current = s.get(Job, job_id)
            log.info(
                "job %s not claimed (state %s)", job_id, current.state if current else "missing"
            )
            return None
        return _context(job, settings)


def _context(job: Job, settings: Settings) -> JobContext:
    return JobContext(
        job_id=job.id,
        owner_id=job.owner_id,
        type=job.type,
        params=dict(job.params),
        result=dict(job.result),
        attempt=job.attempts,
        settings=settings,
        store=open_store(settings),
        claim_token=job.claim_token,
    )


def follower_context(job_id: str, settings: Settings, timeout: float = 120.0) -> JobContext:
    """The context of a job another process (DDP rank 0) has claimed, for ranks > 0.

    Followers never claim, renew or finish the job: they only take part in the training.
    """
    factory = session_factory(settings.resolved_database_url)
    deadline = time.monotonic() + timeout
    while True:
        with factory() as s:
            job = s.get(Job, job_id)
            if job is not None and job.state == JobState.RUNNING:
                ctx = _context(job, settings)
                ctx.follower = True
                return ctx
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} was not claimed by rank 0 within {timeout:.0f} s")
        time.sleep(0.5)


def execute(ctx: JobContext) -> str:
    """Run a claimed job's handler under a lease; commit its outputs with its final state."""
    keeper = _LeaseKeeper(ctx)
    keeper.start()
    state: JobState
    try:
        outcome = load_handler(ctx.type)(ctx)
        state = _commit(ctx, outcome)
    except JobLost:
        log.warning(LOST_MESSAGE, ctx.job_id)
        state = JobState.QUEUED
    except JobCancelled:
        state = _end(ctx, JobState.CANCELLED, message="cancelled")
    except UserError as exc:
        state = _end(ctx, JobState.FAILED, error=str(exc))
    except Exception as exc:
        log.exception("job %s failed", ctx.job_id)
        tb = traceback.format_exc(limit=5)
        state = _end(ctx, JobState.FAILED, error=f"{type(exc).__name__}: {exc}", detail=tb)
    finally:
        keeper.stop.set()
        keeper.join(timeout=10)
    return state.value


def run_job(job_id: str, settings: Settings) -> str | None:
    """Claim and run job `job_id`; returns its final state, or None if not ours to run."""
    ctx = claim_context(job_id, settings)
    return execute(ctx) if ctx is not None else None


def _commit(ctx: JobContext, outcome: Outcome) -> JobState:
    with ctx.session() as s:
        result = {**ctx.result, **outcome.finalize(s)}
        done = finish(
            s,
            ctx.job_id,
            outcome.state,
            token=ctx.claim_token,
            message=outcome.message,
            result=result,
        )
        if not done:
            # The lease expired and the reconciler took the job back: drop our outputs.
            s.rollback()
            log.warning(LOST_MESSAGE, ctx.job_id)
            return JobState.QUEUED
    return outcome.state


def _end(
    ctx: JobContext,
    state: JobState,
    *,
    message: str = "",
    error: str | None = None,
    detail: str | None = None,
) -> JobState:
    with ctx.session() as s:
        summary = message or (error or "")[:200]
        if not finish(s, ctx.job_id, state, token=ctx.claim_token, message=summary, error=error):
            s.rollback()
            log.warning(LOST_MESSAGE, ctx.job_id)
            return JobState.QUEUED
        if detail:
            add_event(s, ctx.job_id, "traceback", {"traceback": detail})
    return state
