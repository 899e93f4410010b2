"""A rendering of stored MIDI (audio or piano roll): 200 from the cache, or 202 with its job.

Rendering runs on CPU workers, never in the API process. Files and samples both serve their
renderings through this one function, keyed by the MIDI's content hash.

The cache is shared between owners (same bytes, one rendering), so a cache hit alone must not
answer: if it did, an owner could learn at once whether anybody else holds a given MIDI file.
An owner is served from the cache only for MIDI they rendered themselves (their own render
job for that content succeeded) or that their own job made (a sample, rendered by its job);
otherwise the request queues a render job like any first request.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.jobs.state import JobState
from cadenza.jobs.submit import submit_render
from cadenza.render import MEDIA_TYPES, render_key
from cadenza.storage import ObjectNotFound, ObjectStore
from cadenza_api.schemas import JobOut


def rendered(
    session: Session,
    settings: Settings,
    store: ObjectStore,
    owner_id: str,
    midi: tuple[str, str],
    fmt: str,
    *,
    made_by_owner: bool = False,
) -> Response:
    """The cached rendering, or 202 with the render job that will make it (poll, then retry).

    `midi` is the (sha256, store key) of the MIDI bytes to render; `made_by_owner` says the
    owner's own job produced (and rendered) them, as for a sample.
    """
    sha256, midi_key = midi
    if made_by_owner or _rendered_for(session, owner_id, sha256):
        try:
            return Response(store.get(render_key(sha256, fmt)), media_type=MEDIA_TYPES[fmt])
        except ObjectNotFound:
            pass
    job = submit_render(session, settings, owner_id=owner_id, sha256=sha256, key=midi_key)
    body = JobOut.model_validate(job).model_dump(mode="json")
    return JSONResponse(
        body, status_code=202, headers={"Retry-After": "2", "Location": f"/v1/jobs/{job.id}"}
    )


def _rendered_for(session: Session, owner_id: str, sha256: str) -> bool:
    """Whether a render job of this owner for this MIDI content has succeeded.

    Matched on the job's params as text: the hash is 64 hex digits, so a hit is that target.
    """
    hit = session.scalar(
        select(Job.id)
        .where(
            Job.owner_id == owner_id,
            Job.type == "render",
            Job.state == JobState.SUCCEEDED.value,
            cast(Job.params, Text).contains(sha256),
        )
        .limit(1)
    )
    return hit is not None
