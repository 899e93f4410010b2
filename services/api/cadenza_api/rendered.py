"""A rendering of stored MIDI (audio or piano roll): 200 from the cache, or 202 with its job.

Rendering runs on CPU workers, never in the API process. Files and samples both serve their
renderings through this one function, keyed by the MIDI's content hash.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse, Response
from sqlalchemy.orm import Session

from cadenza.config import Settings
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
) -> Response:
    """The cached rendering, or 202 with the render job that will make it (poll, then retry).

    `midi` is the (sha256, store key) of the MIDI bytes to render.
    """
    sha256, midi_key = midi
    try:
        return Response(store.get(render_key(sha256, fmt)), media_type=MEDIA_TYPES[fmt])
    except ObjectNotFound:
        pass
    job = submit_render(session, settings, owner_id=owner_id, sha256=sha256, key=midi_key)
    body = JobOut.model_validate(job).model_dump(mode="json")
    return JSONResponse(
        body, status_code=202, headers={"Retry-After": "2", "Location": f"/v1/jobs/{job.id}"}
    )
