"""Queue a job: validate its parameters, commit its row, then send its id to its queue.

The order matters. The row is committed before the id is sent, so a worker never receives an
id it cannot find; if the broker is down the row stays queued and the reconciler re-sends it,
so a broker blip loses nothing. Every producer (API routes, the CLI, tests) submits here.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.jobs.queue import HELD_QUEUE, enqueue
from cadenza.jobs.registry import job_type
from cadenza.jobs.state import create_job
from cadenza.limits import check_job
from cadenza.render.params import RenderParams, RenderTarget

log = logging.getLogger("cadenza.jobs")


def submit(
    session: Session,
    settings: Settings,
    *,
    owner_id: str,
    type: str,
    params: BaseModel,
    result: dict[str, Any] | None = None,
    job_id: str | None = None,
    held: bool = False,
) -> Job:
    """Create job `type` with `params` (an instance of the type's params model) and enqueue it.

    `held` (training jobs only) puts it on `queue.HELD_QUEUE` instead: no worker takes it, the
    pods of the Kubernetes Job that `cadenza k8s train-job` renders for it do. Budgets and rate
    are checked as for any training job; while held it occupies no worker.

    The session's pending rows (say, the model row a training job fills) commit with the job.
    The owner's budgets, quotas and rate (`cadenza.limits.check_job`) are checked first: a
    refusal raises before the job row exists, and the caller's rollback drops its pending rows.
    """
    spec = job_type(type)
    if held and type != "train":
        raise ValueError(f"only training jobs can be held for a cluster Job, not {type} jobs")
    if not isinstance(params, spec.params):
        given = params.__class__.__name__
        raise TypeError(f"{spec.name} jobs take {spec.params.__name__}, not {given}")
    check_job(
        session,
        settings,
        owner_id=owner_id,
        type=type,
        queue=spec.queue,
        model_id=getattr(params, "model_id", None) if type == "train" else None,
    )
    job = create_job(
        session,
        owner_id=owner_id,
        type=type,
        params=params.model_dump(mode="json"),
        result=result,
        max_attempts=settings.job_max_attempts,
        job_id=job_id,
        queue=HELD_QUEUE if held else None,
    )
    session.commit()
    try:
        enqueue(settings, job.id, job.queue)
    except Exception:
        log.exception("enqueue of job %s failed; the reconciler will re-send it", job.id)
    return job


def submit_render(
    session: Session, settings: Settings, *, owner_id: str, sha256: str, key: str
) -> Job:
    """The owner's queued or running render job for this MIDI content, else a new one.

    Renderings are cached by content hash, so a second request for the same MIDI while the
    first is still rendering waits on that job instead of queueing a duplicate.
    """
    active = session.scalars(
        select(Job).where(
            Job.owner_id == owner_id,
            Job.type == "render",
            Job.state.in_(["queued", "running"]),
        )
    )
    for job in active:
        if any(t.sha256 == sha256 for t in RenderParams.model_validate(job.params).targets):
            return job
    params = RenderParams(targets=[RenderTarget(sha256=sha256, key=key)])
    return submit(session, settings, owner_id=owner_id, type="render", params=params)
