"""Job states, the transitions between them, and the SQL that moves one job along.

The job row is the truth; the broker only carries a job id and may deliver it twice or
never. So every move is a compare-and-set on the row: a second delivery finds the job no
longer `queued` and does nothing, and a killed worker's job is found by its expired lease.
"""

from __future__ import annotations

import enum
import os
import socket
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cadenza.db.models import Job, JobEvent, utcnow
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
) -> Job:
    """Add a queued job on its type's queue (the caller commits, then enqueues).

    `params` are stored as given; `cadenza.jobs.submit` validates them against the type's
    params model first.
    """
    job = Job(
        owner_id=owner_id,
        type=type,
        queue=job_type(type).queue,
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
    cannot run forever.
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


def renew_lease(session: Session, job_id: str, *, lease_seconds: int) -> tuple[bool, bool]:
    """Extend the lease of a running job; returns (still ours, cancel requested)."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
        .values(lease_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    session.commit()
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False, True
    cancel = session.execute(select(Job.cancel_requested).where(Job.id == job_id)).scalar_one()
    return True, bool(cancel)


def set_progress(session: Session, job_id: str, progress: float, message: str, **data: Any) -> None:
    """Record progress (0..1) and an event for the SSE stream."""
    progress = min(max(float(progress), 0.0), 1.0)
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
        .values(progress=progress, message=message[:2000], updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    add_event(session, job_id, "progress", {"progress": progress, "message": message, **data})
    session.commit()


def finish(
    session: Session,
    job_id: str,
    state: JobState,
    *,
    message: str = "",
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> bool:
    """Move a running job to a terminal state in the caller's transaction (CAS on running).

    The caller commits: outputs created in the same session become visible together with
    the state, or not at all.
    """
    check_transition(JobState.RUNNING, state)
    values: dict[str, Any] = {
        "state": state.value,
        "finished_at": utcnow(),
        "updated_at": utcnow(),
        "lease_until": None,
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
        .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(session, job_id, "state", {"state": state.value, "error": error, "message": message})
    return True


def request_cancel(session: Session, job: Job) -> Job:
    """Cancel a queued job at once; ask a running one to stop (its worker sees the flag)."""
    if job.state == JobState.QUEUED:
        session.execute(
            update(Job)
            .where(Job.id == job.id, Job.state == JobState.QUEUED.value)
            .values(
                state=JobState.CANCELLED.value,
                cancel_requested=True,
                finished_at=utcnow(),
                updated_at=utcnow(),
                message="cancelled before it started",
            )
            .execution_options(synchronize_session=False)
        )
        add_event(session, job.id, "state", {"state": JobState.CANCELLED.value})
    elif job.state == JobState.RUNNING:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(cancel_requested=True, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        add_event(session, job.id, "cancel_requested", {})
    session.commit()
    refreshed = session.get(Job, job.id, populate_existing=True)
    assert refreshed is not None
    return refreshed
