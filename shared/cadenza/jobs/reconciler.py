"""The reconciler: find jobs whose worker died and broker messages that were lost.

A killed or paused worker stops renewing its job's lease; a broker may drop a message (the
embedded filesystem transport loses a killed worker's running task). The SQL rows say what
should be running, so one round of this module puts the world back in line with them: expired
leases are requeued (or failed past their attempt limit) and stale queued jobs are re-sent.
Every worker's main process runs a round on a timer; `cadenza reconcile` runs one by hand.

A requeue clears the job's claim token, so the attempt that lost its lease cannot write again
even if it wakes up later (see `cadenza.jobs.state.fence`).

Re-sends are bounded. A job can sit queued for a good reason (every worker on its queue is
busy with a long training run), and each re-send adds one more message the workers must
drain. So a stale queued job is re-sent with exponential backoff (after `base`, 2·`base`,
4·`base`… seconds of quiet, `base` = max(120 s, 2 leases)) and at most `MAX_RESENDS` times
(`jobs.resends`, reset when a lost worker's job is requeued). Past the bound the job is not
failed — failing work a user is waiting for because the queue is long would be worse — but
stays queued with a message naming the queue and the broker to check; a worker that frees up
still takes one of the messages already sent. Past the bound the broker, not the job, is
what an operator has to look at, and the message says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Job, utcnow
from cadenza.db.session import session_factory
from cadenza.jobs.queue import HELD_QUEUE, enqueue
from cadenza.jobs.state import JobState, release

MAX_RESENDS = 5


def expired_jobs(session: Session, now: datetime | None = None) -> list[Job]:
    """Running jobs past their lease, locked for this round.

    Rows another transaction holds are skipped (PostgreSQL `SKIP LOCKED`): a worker paused
    in the middle of a fenced write keeps its row locked, and one such job must not stall
    the reconciler for every other. Its lease is looked at again next round.
    """
    now = now or utcnow()
    return list(
        session.scalars(
            select(Job)
            .where(Job.state == JobState.RUNNING.value, Job.lease_until < now)
            .with_for_update(skip_locked=True)
        )
    )


def reconcile(session: Session, *, now: datetime | None = None) -> tuple[list[str], list[str]]:
    """Requeue jobs whose worker died (lease expired); fail those out of attempts.

    Returns (requeued ids, failed ids); the caller re-sends the requeued ids to the broker.
    """
    requeued: list[str] = []
    failed: list[str] = []
    for job in expired_jobs(session, now):
        if job.cancel_requested:
            target, msg = JobState.CANCELLED, "cancelled; its worker stopped"
        elif job.attempts >= job.max_attempts:
            target = JobState.FAILED
            msg = f"worker lost {job.attempts} time(s); giving up after {job.max_attempts} attempts"
        else:
            target, msg = JobState.QUEUED, f"worker lost; requeued (attempt {job.attempts + 1})"
        counters = {"resends": 0} if target == JobState.QUEUED else {}
        lease_expired = (Job.lease_until < (now or utcnow()),)
        if release(session, job.id, target, msg, where=lease_expired, **counters):
            (requeued if target == JobState.QUEUED else failed).append(job.id)
    session.commit()
    return requeued, failed


def queued_jobs(session: Session, older_than: datetime) -> Iterable[Job]:
    """Queued jobs not touched since `older_than` (lost broker messages to re-send); a job
    held for a cluster Job (`queue.HELD_QUEUE`) has no message and waits for its pods."""
    return session.scalars(
        select(Job).where(
            Job.state == JobState.QUEUED.value,
            Job.updated_at < older_than,
            Job.queue != HELD_QUEUE,
        )
    )


def due_resends(session: Session, *, base_seconds: float, now: datetime | None = None) -> list[Job]:
    """Stale queued jobs due a re-send: quiet for `base_seconds` · 2^resends, under the bound."""
    now = now or utcnow()
    due: list[Job] = []
    for job in queued_jobs(session, now - timedelta(seconds=base_seconds)):
        if job.resends >= MAX_RESENDS:
            continue
        if job.updated_at.replace(tzinfo=now.tzinfo) <= now - timedelta(
            seconds=base_seconds * 2**job.resends
        ):
            due.append(job)
    return due


def _broker_name(settings: Settings) -> str:
    """The broker as an operator would look for it, without any password in its URL."""
    if settings.embedded:
        return f"the filesystem broker in {settings.broker_dir}"
    url = settings.resolved_broker_url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


def reconcile_and_resend(settings: Settings) -> tuple[list[str], list[str], list[str]]:
    """One reconciler round: requeue or fail jobs of dead workers, re-send lost messages.

    Returns (requeued, failed, re-sent) job ids. Run by every worker's main process on a timer
    and by `cadenza reconcile`.
    """
    with session_factory(settings.resolved_database_url)() as s:
        requeued, failed = reconcile(s)
        resend = due_resends(s, base_seconds=max(120, settings.job_lease_seconds * 2))
        for job in resend:
            job.resends += 1
            job.updated_at = utcnow()
            if job.resends >= MAX_RESENDS:
                job.message = (
                    f"waiting for a worker on queue {job.queue!r}; its message was re-sent "
                    f"{job.resends} times and will not be again. If no worker is busy, "
                    f"check {_broker_name(settings)} and the workers on that queue"
                )
        s.commit()
        targets = {j.id: j.queue for j in resend}
        targets.update({j.id: j.queue for j in s.scalars(select(Job).where(Job.id.in_(requeued)))})
    for job_id, queue in targets.items():
        enqueue(settings, job_id, queue)
    return requeued, failed, [j.id for j in resend]
