"""`/v1/files`: one stored file's metadata, its bytes, and renderings of MIDI files."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import Response, StreamingResponse

from cadenza.db.models import File
from cadenza.db.repo import get_owned
from cadenza.delete import delete_file
from cadenza.render import MEDIA_TYPES
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import (
    AUDIO_RENDERING,
    PIANOROLL_RENDERING,
    STORED_FILE,
    describe,
)
from cadenza_api.rendered import rendered
from cadenza_api.schemas import DeletedOut, FileOut, TagsPatch
from cadenza_api.streams import stream_object

router = v1_router("/v1/files", "files")


@router.get(
    "/{file_id}", response_model=FileOut, **describe("files_get", "Get a file's metadata", 404)
)
def get_file(file_id: str, session: SessionDep, owner: CurrentOwner) -> FileOut:
    """Kind (`midi` or `audio`), format, size, content hash and what was measured (`meta`:
    notes, tracks, programs and duration of MIDI; codec, sample rate, channels and duration of
    audio)."""
    return FileOut.model_validate(get_owned(session, File, file_id, owner.id))


@router.patch(
    "/{file_id}",
    response_model=FileOut,
    **describe("files_patch", "Set a file's style tags", 404, 422),
)
def patch_file(file_id: str, body: TagsPatch, session: SessionDep, owner: CurrentOwner) -> FileOut:
    """Replace the file's style tags (`{"tags": ["mine-2019"]}`), learned with its dataset's by
    a corpus made with `learn_tags`."""
    row = get_owned(session, File, file_id, owner.id)
    row.tags = body.tags
    session.commit()
    return FileOut.model_validate(row)


@router.get(
    "/{file_id}/content", **describe("files_download", "Download a file", 404, ok=STORED_FILE)
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
    **describe("files_get_audio", "Render a MIDI file to audio", 404, 409, ok=AUDIO_RENDERING),
)
def file_audio(
    file_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """A MIDI file rendered to audio: 200 with the audio, or 202 with the job rendering it.

    409 for an audio file: renderings are drawn from MIDI (GET its `/content` instead).
    """
    f = _midi(session, file_id, owner.id, "this is an audio file already; GET its /content")
    return rendered(session, settings, store, owner.id, (f.sha256, f.object_key), format)


@router.get(
    "/{file_id}/pianoroll.png",
    **describe(
        "files_get_pianoroll", "Draw a MIDI file's piano roll", 404, 409, ok=PIANOROLL_RENDERING
    ),
)
def file_pianoroll(
    file_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    """A MIDI file's notes drawn as a piano roll: 200 with the PNG, or 202 with the job.

    409 for an audio file: transcribe it to MIDI first.
    """
    f = _midi(session, file_id, owner.id, "piano rolls are drawn from MIDI; transcribe audio first")
    return rendered(session, settings, store, owner.id, (f.sha256, f.object_key), "png")


@router.delete(
    "/{file_id}",
    response_model=DeletedOut,
    **describe("files_delete", "Delete a file", 404, 409),
)
def delete_file_route(
    file_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, owner: CurrentOwner
) -> DeletedOut:
    """Delete one file of a dataset, its stored bytes and renderings (bytes another file
    shares stay). 409 while a queued or running job reads it (cancel the job first).
    Corpora already made from it keep their token arrays."""
    deleted = delete_file(session, owner_id=owner.id, file_id=file_id[:64])
    return finish_delete(session, store, settings, deleted)
