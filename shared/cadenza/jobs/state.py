"""Job states, the transitions between them, and the SQL that moves one job along.

The job row is the truth; the broker only carries a job id and may deliver it twice or
never. So every move is a compare-and-set on the row: a second delivery finds the job no
longer `queued` and does nothing, and a killed worker's job is found by its expired lease.

A lease alone does not stop a worker that was paused past it (GC pause, SIGSTOP, network
partition) from writing when it wakes, while a second attempt runs. So each claim sets a fresh
`claim_token`, and every write of a running job (lease renewal, progress, events, metrics,
checkpoints, the final commit) is fenced: `fence` touches the job row with a conditional
UPDATE on (token, running) in the writer's own transaction, and a stale attempt finds no row,
rolls back and gets `JobLost`. On PostgreSQL the UPDATE also locks the row until the commit,
so the reconciler cannot requeue the job between the check and the write.
"""

from __future__ import annotations

import enum
import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cadenza.db.models import Job, JobEvent, new_id, utcnow
from cadenza.jobs.registry import job_type


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

# queued → running (claim) or cancelled (cancel before start);
# running → succeeded | failed | cancelled, or back to queued when its lease expired.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class InvalidTransition(ValueError):
    """A state change the job lifecycle does not allow."""


class JobLost(Exception):
    """This attempt no longer holds the job (its lease expired and the job was requeued,
    cancelled or finished by someone else): it must stop and write nothing more."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is no longer held by this attempt")


def can_transition(src: JobState | str, dst: JobState | str) -> bool:
    return JobState(dst) in TRANSITIONS[JobState(src)]


def check_transition(src: JobState | str, dst: JobState | str) -> None:
    if not can_transition(src, dst):
        raise InvalidTransition(f"a job cannot go from {src} to {dst}")


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def create_job(
    session: Session,
    *,
    owner_id: str,
    type: str,
    params: dict[str, Any],
    result: dict[str, Any] | None = None,
    max_attempts: int = 3,
    job_id: str | None = None,
    queue: str | None = None,
) -> Job:
    """Add a queued job on its type's queue, or on `queue` (the caller commits, then enqueues).

    `params` are stored as given; `cadenza.jobs.submit` validates them against the type's
    params model first.
    """
    job = Job(
        owner_id=owner_id,
        type=type,
        queue=queue or job_type(type).queue,
        params=params,
        result=result or {},
        max_attempts=max_attempts,
    )
    if job_id:
        job.id = job_id
    session.add(job)
    session.flush()
    add_event(session, job.id, "state", {"state": JobState.QUEUED.value})
    return job


def add_event(session: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
    session.add(JobEvent(job_id=job_id, kind=kind, data=data))


def claim(session: Session, job_id: str, *, lease_seconds: int) -> Job | None:
    """Move a queued job to running for this worker; None if someone else has it or it ended.

    The compare-and-set also refuses a job past its attempt limit, so a poison message
    cannot run forever, and a job whose cancel was requested, so a cancel racing the claim
    wins. The returned row carries this attempt's fresh `claim_token`.
    """
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
        .where(Job.attempts < Job.max_attempts)
        .where(Job.cancel_requested.is_(False))
        .values(
            state=JobState.RUNNING.value,
            attempts=Job.attempts + 1,
            lease_until=now + timedelta(seconds=lease_seconds),
            worker=worker_name(),
            claim_token=new_id(),
            started_at=now,
            updated_at=now,
            error=None,
        )
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return None
    add_event(session, job_id, "state", {"state": JobState.RUNNING.value})
    session.commit()
    return session.get(Job, job_id, populate_existing=True)


def _held(job_id: str, token: str | None) -> Any:
    """The SQL condition "attempt `token` still holds running job `job_id`"."""
    return (Job.id == job_id) & (Job.state == JobState.RUNNING.value) & (Job.claim_token == token)


def fence(session: Session, job_id: str, token: str | None, **values: Any) -> None:
    """Check, in the caller's transaction, that attempt `token` still holds the job.

    Touches the row (plus `values`) with a conditional UPDATE; when no row matches, rolls
    the transaction back and raises `JobLost`, so nothing the caller added is committed.
    """
    res = session.execute(
        update(Job)
        .where(_held(job_id, token))
        .values(updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        raise JobLost(job_id)


def holds(session: Session, job_id: str, token: str | None) -> bool:
    """Whether attempt `token` still holds the job (a read, for checks before object writes)."""
    return session.scalar(select(Job.id).where(_held(job_id, token))) is not None


def renew_lease(
    session: Session, job_id: str, *, token: str | None, lease_seconds: int
) -> tuple[bool, bool]:
    """Extend this attempt's lease; returns (still ours, cancel requested)."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(_held(job_id, token))
        .values(lease_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False, True
    cancel = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()
    return True, bool(cancel)


def set_progress(
    session: Session,
    job_id: str,
    progress: float,
    message: str,
    *,
    token: str | None,
    **data: Any,
) -> None:
    """Record progress (0..1) and an event for the SSE stream; `JobLost` if not ours."""
    progress = min(max(float(progress), 0.0), 1.0)
    fence(session, job_id, token, progress=progress, message=message[:2000])
    add_event(session, job_id, "progress", {"progress": progress, "message": message, **data})
    session.commit()


def finish(
    session: Session,
    job_id: str,
    state: JobState,
    *,
    token: str | None,
    message: str = "",
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Move attempt `token`'s running job to a terminal state in the caller's transaction.

    A compare-and-set on (running, token): False when this attempt no longer holds the job.
    The caller commits: outputs created in the same session become visible together with
    the state, or not at all.
    """
    check_transition(JobState.RUNNING, state)
    values: dict[str, Any] = {
        "state": state.value,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
        "lease_until": None,
        "claim_token": None,
        "error": error,
    }
    if message:
        values["message"] = message[:2000]
    if state == JobState.SUCCEEDED:
        values["progress"] = 1.0
    if result is not None:
        values["result"] = result
    res = session.execute(
        update(Job)
        .where(_held(job_id, token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, "state", {"state": state.value, "error": error, "message": message})
    return True


def release(
    session: Session,
    job_id: str,
    target: JobState,
    message: str,
    *,
    where: tuple[Any, ...] = (),
    **values: Any,
) -> bool:
    """Take a running job off its worker: back to `queued`, or to a terminal state.

    The one place that clears a running job's worker, lease and claim token, for the
    reconciler (a worker that died) and the runner (a worker that was interrupted); each
    decides the target and its own counters (`values`), this writes it. A compare-and-set
    on `running` plus the caller's `where`; the caller commits. False when no row matched.
    """
    check_transition(JobState.RUNNING, target)
    now = utcnow()
    values |= {
        "state": target.value,
        "lease_until": None,
        "worker": None,
        "claim_token": None,
        "message": message,
        "updated_at": now,
    }
    if target != JobState.QUEUED:
        values["finished_at"] = now
    if target == JobState.FAILED:
        values["error"] = message
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, "state", {"state": target.value, "message": message})
    return True


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its worker sees the flag).

    The flag is set first, whatever state the caller last saw, then queued → cancelled is a
    compare-and-set, all in one transaction. A claim racing this either commits first (the
    job is running and its worker sees the flag at its next lease renewal) or finds the flag
    and refuses the job: the cancel is never lost.
    """
    now = utcnow()
    flagged = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
        .values(cancel_requested=True, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    cancelled = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.state == JobState.QUEUED.value)
        .values(
            state=JobState.CANCELLED.value,
            finished_at=now,
            updated_at=now,
            claim_token=None,
            message="cancelled before it started",
        )
        .execution_options(synchronize_session=False)
    )
    if cancelled.rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job.id, "state", {"state": JobState.CANCELLED.value})
    elif flagged.rowcount == 1:  # type: ignore[attr-defined]
        add_event(session, job.id, "cancel_requested", {})
    session.commit()
    refreshed = session.get(Job, job.id, populate_existing=True)
    assert refreshed is not None
    return refreshed
