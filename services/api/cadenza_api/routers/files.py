"""`/v1/files`: one stored file's metadata, its bytes, and renderings of MIDI files."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from cadenza.db.models import File
from cadenza.db.repo import get_owned
from cadenza.render import MEDIA_TYPES
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError
from cadenza_api.rendered import RENDER_202, rendered
from cadenza_api.schemas import FileOut
from cadenza_api.streams import stream_object

router = APIRouter(prefix="/v1/files", tags=["files"])


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, session: SessionDep, owner: CurrentOwner) -> FileOut:
    return FileOut.model_validate(get_owned(session, File, file_id, owner.id))


@router.get("/{file_id}/content")
def download_file(
    file_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """Stream a stored file with the content type of what it really is."""
    row = get_owned(session, File, file_id, owner.id)
    return stream_object(
        store,
        row.object_key,
        filename=row.name,
        media_type=MEDIA_TYPES.get(row.format, "application/octet-stream"),
    )


def _midi(session: SessionDep, file_id: str, owner_id: str, hint: str) -> File:
    f = get_owned(session, File, file_id, owner_id)
    if f.kind != "midi":
        raise ApiError(409, "not_midi", hint)
    return f


@router.get("/{file_id}/audio", responses=RENDER_202)
def file_audio(
    file_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """A MIDI file rendered to audio: 200 with the audio, or 202 with the job rendering it."""
    f = _midi(session, file_id, owner.id, "this is an audio file already; GET its /content")
    return rendered(
        session,
        settings,
        store,
        owner_id=owner.id,
        sha256=f.sha256,
        midi_key=f.object_key,
        fmt=format,
    )


@router.get("/{file_id}/pianoroll.png", responses=RENDER_202)
def file_pianoroll(
    file_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    f = _midi(session, file_id, owner.id, "piano rolls are drawn from MIDI; transcribe audio first")
    return rendered(
        session,
        settings,
        store,
        owner_id=owner.id,
        sha256=f.sha256,
        midi_key=f.object_key,
        fmt="png",
    )
