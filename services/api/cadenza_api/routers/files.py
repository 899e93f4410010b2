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
from cadenza_api.openapi import (
    AUDIO_RENDER_MEDIA_TYPES,
    FILE_MEDIA_TYPES,
    V1_ERRORS,
    binary,
    errors,
    rendering,
)
from cadenza_api.rendered import rendered
from cadenza_api.schemas import FileOut
from cadenza_api.streams import stream_object

router = APIRouter(prefix="/v1/files", tags=["files"], responses=V1_ERRORS)

# Renderings are drawn from MIDI: asking for one of an audio file is a conflict, not a 404.
_RENDER_ERRORS = errors(404, 409, why={409: "This file is audio, not MIDI."})


@router.get(
    "/{file_id}",
    response_model=FileOut,
    operation_id="files_get",
    summary="Get a file's metadata",
    responses=errors(404),
)
def get_file(file_id: str, session: SessionDep, owner: CurrentOwner) -> FileOut:
    """Kind (`midi` or `audio`), format, size, content hash and what was measured (`meta`)."""
    return FileOut.model_validate(get_owned(session, File, file_id, owner.id))


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    operation_id="files_download",
    summary="Download a file",
    responses=binary("The stored bytes, typed by what the file is.", *FILE_MEDIA_TYPES)
    | errors(404),
)
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


@router.get(
    "/{file_id}/audio",
    response_class=Response,
    operation_id="files_get_audio",
    summary="Render a MIDI file to audio",
    responses=rendering("The audio (MP3 or WAV, as asked).", *AUDIO_RENDER_MEDIA_TYPES)
    | _RENDER_ERRORS,
)
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


@router.get(
    "/{file_id}/pianoroll.png",
    response_class=Response,
    operation_id="files_get_pianoroll",
    summary="Draw a MIDI file's piano roll",
    responses=rendering("The piano roll as a PNG.", "image/png") | _RENDER_ERRORS,
)
def file_pianoroll(
    file_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """A MIDI file's notes drawn as a piano roll: 200 with the PNG, or 202 with the job."""
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
