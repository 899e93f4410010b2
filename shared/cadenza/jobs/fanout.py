"""Fan a job out over child jobs and wait for them: one job, the work of several workers.

A *parent* job's handler splits its work into *child* jobs (ordinary rows of another job type,
say `tokenize_shard`, on the `cpu` queue), waits for all of them and merges their outputs
itself. Everything that makes one job reliable applies to each child unchanged: the claim's
compare-and-set (no child runs twice at once), its lease and fencing, the reconciler's
requeue of a child whose worker died, its attempt limit.

Why the parent waits in a handler rather than a Celery chord: results live in SQL, not in
a result backend, and the reconciler, cancel and fencing already work on job rows; a chord
would need a second source of truth for "which shards are done". And why waiting never
deadlocks, even on a single worker: while it waits the parent **claims queued children
itself** and runs them in its own process (`runner.execute`, the same path a worker takes),
so children only run elsewhere when another worker is free first. The compare-and-set decides
who runs each child; the other delivery of its message finds it no longer queued.

Ending cleanly: child ids are derived from the parent's id and the child's number
(:func:`child_id`), so a parent attempt that was requeued (its worker died or drained) finds
the children of the previous attempt and keeps their work instead of starting them again.
When a child fails or is cancelled, or the parent is cancelled, the parent asks every other
child to cancel and **waits until all are terminal** (a child whose worker died is ended by
the reconciler when its lease runs out) before it raises, so the caller can delete the
children's objects knowing nothing will write them afterwards. Children also check that
their parent is still running (:func:`parent_running`) before they start and before they
write, so a parent that ended some other way (failed by the reconciler after its last
attempt) does not leave children producing outputs nobody will merge.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel
from sqlalchemy import select

from cadenza.db.models import Job
from cadenza.jobs import heartbeat
from cadenza.jobs.context import JobCancelled, JobContext
from cadenza.jobs.queue import enqueue
from cadenza.jobs.registry import job_type
from cadenza.jobs.state import TERMINAL, JobState, create_job, request_cancel

log = logging.getLogger("cadenza.fanout")

#: Seconds between looks at the children's rows while they run elsewhere.
POLL_SECONDS = 0.5


class ChildFailed(Exception):
    """A child job failed or was cancelled; the message names it and says why."""


def child_id(parent_id: str, n: int) -> str:
    """The id of the parent's child number `n`: the same for every attempt of the parent."""
    return hashlib.sha256(f"{parent_id}\0child\0{n}".encode()).hexdigest()[:32]


def spawn_children(ctx: JobContext, type: str, params: Sequence[BaseModel]) -> list[str]:
    """Create the parent's children of job type `type` (one per params), once, and send them.

    Runs in a fenced transaction of the parent, so a stale parent attempt creates nothing.
    Children that exist already (an earlier attempt of the parent made them) are kept as they
    are. Children are not metered by `cadenza.limits` (the parent was, when it was submitted).
    """
    spec = job_type(type)
    ids = [child_id(ctx.job_id, n) for n in range(len(params))]
    with ctx.fenced() as s:
        existing = set(s.scalars(select(Job.id).where(Job.id.in_(ids))))
        for cid, p in zip(ids, params, strict=True):
            if cid not in existing:
                create_job(
                    s,
                    owner_id=ctx.owner_id,
                    type=spec.name,
                    params=p.model_dump(mode="json"),
                    max_attempts=ctx.settings.job_max_attempts,
                    job_id=cid,
                )
    for cid in ids:
        try:
            enqueue(ctx.settings, cid, spec.queue)
        except Exception:  # the parent claims queued children itself; the reconciler re-sends
            log.exception("enqueue of child job %s failed", cid)
    return ids


def _states(ctx: JobContext, ids: Sequence[str]) -> dict[str, Job]:
    with ctx.session() as s:
        rows = s.scalars(select(Job).where(Job.id.in_(ids))).all()
        for r in rows:
            s.expunge(r)
        return {r.id: r for r in rows}


def _run_here(ctx: JobContext, cid: str) -> None:
    """Claim queued child `cid` and run it in this process, if nobody else has it yet."""
    from cadenza.jobs.runner import claim_context, execute

    child = claim_context(cid, ctx.settings)
    if child is None:
        return
    try:
        execute(child)
    finally:
        heartbeat.job_started()  # the child's end cleared it; the parent still runs


def cancel_children(ctx: JobContext, ids: Sequence[str]) -> None:
    """Ask every child that has not ended to cancel (queued ones end at once)."""
    with ctx.session() as s:
        for job in s.scalars(select(Job).where(Job.id.in_(ids))):
            if job.state not in TERMINAL:
                request_cancel(s, job)


def _wait_terminal(ctx: JobContext, ids: Sequence[str]) -> None:
    """Wait until no child can write any more (running ones stop, or lose their lease)."""
    while any(j.state not in TERMINAL for j in _states(ctx, ids).values()):
        if ctx.lost():
            return  # another attempt of the parent owns the children now
        time.sleep(POLL_SECONDS)


def run_children(
    ctx: JobContext,
    ids: Sequence[str],
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Run or wait for every child until all succeeded; see the module docstring.

    Raises `ChildFailed` (after every child ended) when one failed or was cancelled,
    `JobCancelled` (likewise) when the parent was, and `JobLost` / `JobInterrupted` as
    `ctx.check_cancel` does (children are left to the next attempt of the parent).
    """
    while True:
        if ctx.cancelled() and not ctx.lost():
            cancel_children(ctx, ids)
            _wait_terminal(ctx, ids)
            raise JobCancelled()
        ctx.check_cancel()
        jobs = _states(ctx, ids)
        bad = [
            (n, j)
            for n, cid in enumerate(ids)
            if (j := jobs[cid]).state in (JobState.FAILED, JobState.CANCELLED)
        ]
        if bad:
            n, j = bad[0]
            cancel_children(ctx, ids)
            _wait_terminal(ctx, ids)
            why = j.error or j.message or j.state
            raise ChildFailed(f"part {n + 1} of {len(ids)} ({j.type} job {j.id}) {j.state}: {why}")
        done = sum(jobs[cid].state == JobState.SUCCEEDED for cid in ids)
        if progress is not None:
            progress(done, len(ids))
        if done == len(ids):
            return
        queued = [cid for cid in ids if jobs[cid].state == JobState.QUEUED]
        if queued:
            _run_here(ctx, queued[0])
        else:
            time.sleep(POLL_SECONDS)


def parent_running(ctx: JobContext, parent_id: str) -> bool:
    """Whether the child's parent job is still running (so its output will be merged)."""
    with ctx.session() as s:
        state = s.scalar(select(Job.state).where(Job.id == parent_id))
    return state == JobState.RUNNING


__all__ = [
    "ChildFailed",
    "cancel_children",
    "child_id",
    "parent_running",
    "run_children",
    "spawn_children",
]
