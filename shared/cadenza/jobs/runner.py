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
from collections.abc import Callable
from typing import TypeVar

from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.db.session import session_factory
from cadenza.jobs import heartbeat
from cadenza.jobs.context import JobCancelled, JobContext, JobLost, Outcome, UserError
from cadenza.jobs.queue import enqueue
from cadenza.jobs.registry import JOB_TYPES
from cadenza.jobs.state import JobState, claim, finish, renew_lease
from cadenza.jobs.transient import (
    JobInterrupted,
    is_transient,
    public_error,
    requeue_interrupted,
    retry_transient,
)
from cadenza.storage import open_store

log = logging.getLogger("cadenza.runner")

Handler = Callable[[JobContext], Outcome]
T = TypeVar("T")
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
            heartbeat.beat(self.ctx.settings.worker_heartbeat_file)
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

    def attempt() -> JobContext | None:
        with factory() as s:
            job = claim(s, job_id, lease_seconds=settings.job_lease_seconds)
            if job is None:
                current = s.get(Job, job_id)
                state = current.state if current else "missing"
                log.info("job %s not claimed (state %s)", job_id, state)
                return None
            return _context(job, settings)

    return retry_transient(
        attempt, what=f"claiming job {job_id}", budget_s=settings.job_transient_retry_seconds
    )


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
        queue=job.queue,
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
    heartbeat.job_started()
    state: JobState
    try:
        outcome = load_handler(ctx.type)(ctx)
        state = _retry(ctx, "committing", lambda: _commit(ctx, outcome))
    except JobLost:  # before the interruption branch: a lost attempt requeues nothing
        log.warning(LOST_MESSAGE, ctx.job_id)
        state = JobState.QUEUED
    except JobCancelled:
        state = _retry(
            ctx, "cancelling", lambda: _end(ctx, JobState.CANCELLED, message="cancelled")
        )
    except UserError as exc:
        user_error = str(exc)
        state = _retry(ctx, "failing", lambda: _end(ctx, JobState.FAILED, error=user_error))
    except Exception as exc:
        if isinstance(exc, JobInterrupted) or is_transient(exc):
            log.warning("job %s interrupted: %s", ctx.job_id, exc, exc_info=is_transient(exc))
            state = _interrupt(ctx, exc)
        else:  # the traceback goes to the worker log only: it names server paths
            log.exception("job %s failed", ctx.job_id)
            error = public_error(exc)
            state = _retry(ctx, "failing", lambda: _end(ctx, JobState.FAILED, error=error))
    finally:
        heartbeat.job_ended()
        keeper.stop.set()
        keeper.join(timeout=10)
    return state.value


def _retry(ctx: JobContext, what: str, fn: Callable[[], T]) -> T:
    """Run one of the runner's final writes through a database outage (bounded)."""
    budget = ctx.settings.job_transient_retry_seconds
    return retry_transient(fn, what=f"{what} job {ctx.job_id}", budget_s=budget)


def _interrupt(ctx: JobContext, exc: BaseException) -> JobState:
    """Requeue a job stopped by a drain or an outage (no attempt used) and re-send it."""
    reason = str(exc) if isinstance(exc, JobInterrupted) else public_error(exc)

    def write() -> JobState | None:
        with ctx.session() as s:
            return requeue_interrupted(
                s,
                ctx.job_id,
                ctx.claim_token,
                reason=reason,
                max_interruptions=ctx.settings.job_max_interruptions,
            )

    try:
        state = _retry(ctx, "requeueing", write)
    except Exception:  # still down: the lease expires and the reconciler requeues the job
        log.exception("could not requeue job %s; its lease will expire", ctx.job_id)
        return JobState.RUNNING
    if state is None:
        return JobState.QUEUED
    if state == JobState.QUEUED:
        try:
            retry_transient(
                lambda: enqueue(ctx.settings, ctx.job_id, ctx.queue or JOB_TYPES[ctx.type].queue),
                what=f"re-sending job {ctx.job_id}",
                budget_s=ctx.settings.job_transient_retry_seconds,
            )
        except Exception:  # the reconciler re-sends queued jobs whose message was lost
            log.exception("could not re-send job %s; the reconciler will", ctx.job_id)
    return state


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
) -> JobState:
    with ctx.session() as s:
        summary = message or (error or "")[:200]
        if not finish(s, ctx.job_id, state, token=ctx.claim_token, message=summary, error=error):
            s.rollback()
            log.warning(LOST_MESSAGE, ctx.job_id)
            return JobState.QUEUED
    return state
