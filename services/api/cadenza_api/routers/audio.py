"""Audio jobs (convert, crop, transcribe) and rendered audio / piano-roll pictures."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from cadenza.db.models import Dataset, File, Job, Sample
from cadenza.db.repo import get_owned
from cadenza.render import MEDIA_TYPES, render_key
from cadenza.storage import ObjectNotFound, ObjectStore
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError, invalid
from cadenza_api.routers.jobs import submit
from cadenza_api.schemas import AudioJobCreate, JobOut

router = APIRouter(tags=["audio"])


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
            from cadenza.audio.positions import parse_positions

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
            raise invalid("transcribe", exc) from exc
    job = submit(session, settings, owner_id=owner.id, type="audio", params=params)
    return JobOut.model_validate(job)


def _active_render_job(session: SessionDep, owner_id: str, sha: str) -> Job | None:
    """A queued or running render job of this owner for this content, if any (no duplicates)."""
    jobs = session.scalars(
        select(Job).where(
            Job.owner_id == owner_id,
            Job.type == "audio",
            Job.state.in_(["queued", "running"]),
        )
    )
    for job in jobs:
        if job.params.get("operation") == "render" and any(
            t["sha256"] == sha for t in job.params.get("targets", [])
        ):
            return job
    return None


def _rendered(
    session: SessionDep,
    settings: SettingsDep,
    store: ObjectStore,
    owner_id: str,
    sha: str,
    midi_key: str,
    fmt: str,
) -> Response:
    """The cached rendering, or 202 with the render job that will make it (poll, then retry)."""
    key = render_key(sha, fmt)
    try:
        return Response(store.get(key), media_type=MEDIA_TYPES[fmt])
    except ObjectNotFound:
        pass
    job = _active_render_job(session, owner_id, sha) or submit(
        session,
        settings,
        owner_id=owner_id,
        type="audio",
        params={"operation": "render", "targets": [{"sha256": sha, "key": midi_key}]},
    )
    body = JobOut.model_validate(job).model_dump(mode="json")
    return JSONResponse(
        body, status_code=202, headers={"Retry-After": "2", "Location": f"/v1/jobs/{job.id}"}
    )


def _sample_sha(sample: Sample) -> str:
    sha = sample.meta.get("sha256")
    if not sha:
        raise ApiError(409, "not_rendered", "this sample has no content hash; sample again")
    return str(sha)


@router.get("/v1/samples/{sample_id}/audio", responses={202: {"model": JobOut}})
def sample_audio(
    sample_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """The sample rendered with the General MIDI soundfont (rendered by its sample job)."""
    sample = get_owned(session, Sample, sample_id, owner.id)
    sha = _sample_sha(sample)
    return _rendered(session, settings, store, owner.id, sha, sample.midi_key, format)


@router.get("/v1/samples/{sample_id}/pianoroll.png", responses={202: {"model": JobOut}})
def sample_pianoroll(
    sample_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    sample = get_owned(session, Sample, sample_id, owner.id)
    sha = _sample_sha(sample)
    return _rendered(session, settings, store, owner.id, sha, sample.midi_key, "png")


@router.get("/v1/files/{file_id}/audio", responses={202: {"model": JobOut}})
def file_audio(
    file_id: str,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    format: Literal["mp3", "wav"] = "mp3",
) -> Response:
    """A MIDI file rendered to audio: 200 with the audio, or 202 with the job rendering it."""
    f = get_owned(session, File, file_id, owner.id)
    if f.kind != "midi":
        raise ApiError(409, "not_midi", "this is an audio file already; GET its /content")
    return _rendered(session, settings, store, owner.id, f.sha256, f.object_key, format)


@router.get("/v1/files/{file_id}/pianoroll.png", responses={202: {"model": JobOut}})
def file_pianoroll(
    file_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep, owner: CurrentOwner
) -> Response:
    f = get_owned(session, File, file_id, owner.id)
    if f.kind != "midi":
        raise ApiError(409, "not_midi", "piano rolls are drawn from MIDI; transcribe audio first")
    return _rendered(session, settings, store, owner.id, f.sha256, f.object_key, "png")
