"""`/v1/jobs`: status, list, cancel, and a Server-Sent-Events stream of a job's progress."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from cadenza.db.models import Job, JobEvent
from cadenza.db.repo import get_owned, list_owned
from cadenza.db.session import session_factory
from cadenza.jobs import TERMINAL, JobState, request_cancel
from cadenza_api.deps import CurrentOwner, SessionDep
from cadenza_api.schemas import JobList, JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.get("", response_model=JobList)
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


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    return JobOut.model_validate(get_owned(session, Job, job_id, owner.id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, session: SessionDep, owner: CurrentOwner) -> JobOut:
    """Cancel a queued job now, or ask a running one to stop; a finished job is unchanged."""
    job = get_owned(session, Job, job_id, owner.id)
    if JobState(job.state) not in TERMINAL:
        job = request_cancel(session, job)
    return JobOut.model_validate(job)


@router.get("/{job_id}/events")
async def job_events(
    job_id: str, request: Request, session: SessionDep, owner: CurrentOwner, after: int = 0
) -> StreamingResponse:
    """Stream the job's events as SSE until it ends (`Last-Event-ID` resumes a stream)."""
    get_owned(session, Job, job_id, owner.id)
    last = request.headers.get("last-event-id", "")
    cursor = int(last) if last.isdigit() else after
    factory = session_factory(request.app.state.settings.resolved_database_url)

    def _poll(cur: int) -> tuple[list[JobEvent], str]:
        with factory() as s:
            events = list(
                s.scalars(
                    select(JobEvent)
                    .where(JobEvent.job_id == job_id, JobEvent.id > cur)
                    .order_by(JobEvent.id)
                    .limit(500)
                )
            )
            state = s.scalar(select(Job.state).where(Job.id == job_id)) or "failed"
        return events, state

    async def stream() -> AsyncIterator[bytes]:
        nonlocal cursor
        idle = 0.0
        while True:
            events, state = await asyncio.to_thread(_poll, cursor)
            for ev in events:
                cursor = ev.id
                payload = json.dumps({"kind": ev.kind, **ev.data, "at": ev.created_at.isoformat()})
                yield f"id: {ev.id}\nevent: {ev.kind}\ndata: {payload}\n\n".encode()
            if not events and JobState(state) in TERMINAL:
                yield f"event: end\ndata: {json.dumps({'state': state})}\n\n".encode()
                return
            if await request.is_disconnected():
                return
            if events:
                idle = 0.0
            else:
                idle += 0.5
                if idle >= 15:
                    idle = 0.0
                    yield b": keep-alive\n\n"
                await asyncio.sleep(0.5)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
