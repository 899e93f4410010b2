"""`/v1/jobs`: status, list, cancel, and a Server-Sent-Events stream of a job's progress."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import StreamingResponse

from cadenza.db.models import Job
from cadenza.db.repo import get_owned, list_owned
from cadenza.delete import delete_job
from cadenza.jobs import TERMINAL, JobState, request_cancel
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.openapi import EVENT_STREAM, describe
from cadenza_api.schemas import DeletedOut, JobList, JobOut
from cadenza_api.streams import job_event_stream, sse_response

router = v1_router("/v1/jobs", "jobs")


@router.get("", response_model=JobList, **describe("jobs_list", "List jobs"))
def list_jobs(
    session: SessionDep,
    owner: CurrentOwner,
    state: str | None = None,
    type: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> JobList:
    """Your jobs, newest first; filter by `state` (queued, running, succeeded, failed,
    cancelled) and `type` (tokenize, train, sample, audio, render)."""
    filters = {k: v for k, v in {"state": state, "type": type}.items() if v}
    rows = list_owned(session, Job, owner.id, limit=limit, offset=offset, **filters)
    return JobList(jobs=[JobOut.model_validate(j) for j in rows])


@router.get("/{job_id}", response_model=JobOut, **describe("jobs_get", "Get a job", 404))
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Its state and progress, and once it succeeded the ids of what it made (`corpus_id`,
    `model_id`, `sample_ids`, `file_ids`); poll until the state is terminal."""
    return JobOut.model_validate(get_owned(session, Job, job_id, owner.id))


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    **describe("jobs_cancel", "Cancel a job", 404),
)
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Cancel a queued job now, or ask a running one to stop; a finished job is unchanged."""
    job = get_owned(session, Job, job_id, owner.id)
    if JobState(job.state) not in TERMINAL:
        job = request_cancel(session, job)
    return JobOut.model_validate(job)


@router.get(
    "/{job_id}/events",
    **describe("jobs_events", "Stream a job's progress events", 404, ok=EVENT_STREAM),
)
def job_events(
    job_id: str, request: Request, session: SessionDep, owner: CurrentOwner, after: int = 0
) -> StreamingResponse:
    """Stream the job's events as SSE until it ends (`Last-Event-ID` resumes a stream)."""
    get_owned(session, Job, job_id, owner.id)
    last = request.headers.get("last-event-id", "")
    cursor = int(last) if last.isdigit() else after
    return sse_response(job_event_stream(request.app.state.event_polls, job_id, cursor, request))


@router.delete(
    "/{job_id}",
    response_model=DeletedOut,
    **describe("jobs_delete", "Delete a finished job", 404, 409),
)
def delete_job_route(
    job_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, owner: CurrentOwner
) -> DeletedOut:
    """Delete a finished job's row and its events. 409 while it is queued or running: cancel
    it first. What it made (a corpus, model, samples, files) stays: delete those on their own;
    leftovers of a failed or cancelled job that nothing uses are removed."""
    deleted = delete_job(session, owner_id=owner.id, job_id=job_id[:64])
    return finish_delete(session, store, settings, deleted)
