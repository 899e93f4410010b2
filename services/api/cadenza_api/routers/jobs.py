"""Jobs: status, list, cancel, and a Server-Sent-Events stream of their progress."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.db.repo import get_owned, list_owned
from cadenza.jobs import TERMINAL, JobState, create_job, request_cancel
from cadenza.queue import enqueue
from cadenza_api.deps import CurrentOwner, SessionDep
from cadenza_api.schemas import JobList, JobOut
from cadenza_api.streams import job_event_stream, sse_response

router = APIRouter(tags=["jobs"])
log = logging.getLogger("cadenza.api")


def submit(
    session: Session,
    settings: Settings,
    *,
    owner_id: str,
    type: str,
    params: dict[str, Any],
    result: dict[str, Any] | None = None,
    job_id: str | None = None,
) -> Job:
    """Create the job row, commit it, then enqueue its id (never the other way round).

    If the broker is unreachable the job stays queued and the worker's reconciler re-sends
    it, so a broker blip loses nothing.
    """
    job = create_job(
        session,
        owner_id=owner_id,
        type=type,
        params=params,
        result=result,
        max_attempts=settings.job_max_attempts,
        job_id=job_id,
    )
    session.commit()
    try:
        enqueue(settings, job.id, job.queue)
    except Exception:
        log.exception("enqueue of job %s failed; the reconciler will re-send it", job.id)
    return job


@router.get("/v1/jobs", response_model=JobList)
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    state: str | None = None,
    type: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> JobList:
    filters = {k: v for k, v in {"state": state, "type": type}.items() if v}
    rows = list_owned(session, Job, owner.id, limit=min(limit, 1000), offset=offset, **filters)
    return JobList(jobs=[JobOut.model_validate(j) for j in rows])


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    return JobOut.model_validate(get_owned(session, Job, job_id, owner.id))


@router.post("/v1/jobs/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Cancel a queued job now, or ask a running one to stop; a finished job is unchanged."""
    job = get_owned(session, Job, job_id, owner.id)
    if JobState(job.state) not in TERMINAL:
        job = request_cancel(session, job)
    return JobOut.model_validate(job)


@router.get("/v1/jobs/{job_id}/events")
def job_events(
    job_id: str, request: Request, session: SessionDep, owner: CurrentOwner, after: int = 0
) -> StreamingResponse:
    """Stream the job's events as SSE until it ends (`Last-Event-ID` resumes a stream)."""
    get_owned(session, Job, job_id, owner.id)
    last = request.headers.get("last-event-id", "")
    cursor = int(last) if last.isdigit() else after
    return sse_response(job_event_stream(request.app.state.event_polls, job_id, cursor, request))
