"""Audio jobs (convert, crop, transcribe) and rendered audio / piano-roll pictures."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import ValidationError
from sqlalchemy import select

from cadenza.db.models import Dataset, File, Sample
from cadenza.db.repo import get_owned
from cadenza.storage import ObjectNotFound, ObjectStore, check_key
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError, validation_message
from cadenza_api.routers.jobs import submit
from cadenza_api.schemas import AudioJobCreate, JobOut

router = APIRouter(tags=["audio"])
AUDIO_MEDIA = {"wav": "audio/wav", "mp3": "audio/mpeg"}


@router.post("/v1/datasets/{dataset_id}/audio-jobs", status_code=202, response_model=JobOut)
def create_audio_job(
    dataset_id: str,
    body: AudioJobCreate,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> JobOut:
    """Queue convert / crop / transcribe over audio files of the dataset (all by default)."""
    get_owned(session, Dataset, dataset_id, owner.id)
    stmt = select(File).where(File.dataset_id == dataset_id, File.kind == "audio")
    if body.file_ids:
        stmt = stmt.where(File.id.in_(body.file_ids))
    files = list(session.scalars(stmt))
    if body.file_ids:
        missing = sorted(set(body.file_ids) - {f.id for f in files})
        if missing:
            raise ApiError(
                404, "not_found", f"no audio file {', '.join(missing[:5])} in dataset {dataset_id}"
            )
    if not files:
        raise ApiError(409, "no_audio_files", "the dataset has no audio files; upload some first")
    params: dict[str, Any] = {
        "dataset_id": dataset_id,
        "operation": body.operation,
        "file_ids": [f.id for f in files],
    }
    if body.operation == "convert":
        params["convert"] = (body.convert or {}).model_dump() if body.convert else {}
    elif body.operation == "crop":
        crop = body.crop.model_dump() if body.crop else {}
        if crop.get("positions_text"):
            from cadenza.audio.convert import parse_positions

            try:
                crop["positions"] = parse_positions(crop.pop("positions_text"))
            except ValueError as exc:
                raise ApiError(422, "invalid_positions", f"crop.positions_text: {exc}") from exc
        crop.pop("positions_text", None)
        if crop.get("positions") is not None:
            if any(p <= 0 for p in crop["positions"]):
                raise ApiError(422, "invalid_positions", "crop.positions must be > 0 seconds")
            crop["positions"] = sorted(set(crop["positions"]))
        if crop.get("min_tail_s", 0) > crop.get("interval_s", 30.0):
            raise ApiError(422, "invalid_request", "crop.min_tail_s must be ≤ crop.interval_s")
        params["crop"] = crop
    else:
        from cadenza.audio.transcribe import TranscribeParams

        try:
            params["transcribe"] = TranscribeParams.model_validate(
                body.transcribe or {}
            ).model_dump(mode="json")
        except ValidationError as exc:
            msg, details = validation_message(
                [{**e, "loc": ("transcribe", *e["loc"])} for e in exc.errors()]
            )
            raise ApiError(422, "invalid_transcribe", msg, details=details) from exc
    job = submit(session, settings, owner_id=owner.id, type="audio", params=params)
    return JobOut.model_validate(job)


def _render_cached(store: ObjectStore, sha: str, midi_key: str, fmt: str) -> bytes:
    """Render MIDI to audio/PNG once per content hash; later requests read the cache."""
    key = check_key(f"renders/{sha[:2]}/{sha}.{fmt}")
    try:
        return store.get(key)
    except ObjectNotFound:
        pass
    midi = store.get(midi_key)
    if fmt == "png":
        from cadenza.midi.pianoroll import pianoroll_png

        data = pianoroll_png(midi)
    else:
        from cadenza.midi.render import SoundfontMissing, render_midi

        try:
            data = render_midi(midi, fmt=fmt)  # type: ignore[arg-type]
        except SoundfontMissing as exc:
            raise ApiError(503, "soundfont_missing", str(exc)) from exc
    store.put(key, data)
    return data


async def _rendered(store: ObjectStore, sha: str, midi_key: str, fmt: str) -> Response:
    data = await asyncio.to_thread(_render_cached, store, sha, midi_key, fmt)
    media = "image/png" if fmt == "png" else AUDIO_MEDIA[fmt]
    return Response(data, media_type=media)


def _sample_sha(sample: Sample) -> str:
    import hashlib

    return hashlib.sha256(sample.midi_key.encode()).hexdigest()


@router.get("/v1/samples/{sample_id}/audio")
async def sample_audio(
    sample_id: str,
    session: SessionDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """The sample rendered with the General MIDI soundfont."""
    sample = get_owned(session, Sample, sample_id, owner.id)
    return await _rendered(store, _sample_sha(sample), sample.midi_key, format)


@router.get("/v1/samples/{sample_id}/pianoroll.png")
async def sample_pianoroll(
    sample_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    sample = get_owned(session, Sample, sample_id, owner.id)
    return await _rendered(store, _sample_sha(sample), sample.midi_key, "png")


@router.get("/v1/files/{file_id}/audio")
async def file_audio(
    file_id: str,
    session: SessionDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """A MIDI file rendered to audio (audio files: use /content)."""
    f = get_owned(session, File, file_id, owner.id)
    if f.kind != "midi":
        raise ApiError(409, "not_midi", "this is an audio file already; GET its /content")
    return await _rendered(store, f.sha256, f.object_key, format)


@router.get("/v1/files/{file_id}/pianoroll.png")
async def file_pianoroll(
    file_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    f = get_owned(session, File, file_id, owner.id)
    if f.kind != "midi":
        raise ApiError(409, "not_midi", "piano rolls are drawn from MIDI; transcribe audio first")
    return await _rendered(store, f.sha256, f.object_key, "png")
