"""`/v1/datasets`: create and list datasets, upload files (streamed, validated, all or
nothing), list them, and queue audio jobs over a dataset's recordings."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from sqlalchemy import func, select

from cadenza.audio.params import AudioParams
from cadenza.db.models import Dataset, File
from cadenza.db.repo import get_owned, list_owned
from cadenza.ingest import Incoming, Rejected, check_all, cleanup_unreferenced, store_files
from cadenza.jobs import submit
from cadenza.midi.load import MidiLimits
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError
from cadenza_api.schemas import (
    AudioJobRequest,
    DatasetCreate,
    DatasetOut,
    FileList,
    FileOut,
    JobOut,
)
from cadenza_api.upload import parse_upload

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


def _dataset_out(session: SessionDep, ds: Dataset) -> DatasetOut:
    count = session.scalar(select(func.count(File.id)).where(File.dataset_id == ds.id)) or 0
    return DatasetOut.model_validate(ds).model_copy(update={"file_count": count})


@router.post("", status_code=201, response_model=DatasetOut)
def create_dataset(body: DatasetCreate, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    ds = Dataset(owner_id=owner.id, name=body.name, description=body.description)
    session.add(ds)
    session.commit()
    return _dataset_out(session, ds)


@router.get("", response_model=list[DatasetOut])
def list_datasets(
    session: SessionDep, owner: CurrentOwner, limit: int = 100, offset: int = 0
) -> list[DatasetOut]:
    rows = list_owned(session, Dataset, owner.id, limit=min(limit, 1000), offset=offset)
    return [_dataset_out(session, d) for d in rows]


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    return _dataset_out(session, get_owned(session, Dataset, dataset_id, owner.id))


@router.post("/{dataset_id}/files", status_code=201, response_model=FileList)
async def upload_files(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> FileList:
    """Upload one or many files (`-F files=@a.mid -F files=@b.wav`) or a zip of them.

    Every file is validated first; if any is refused, none is stored.
    """
    # 404 before reading the body; the DB call runs in a worker thread, not on the event loop.
    await asyncio.to_thread(get_owned, session, Dataset, dataset_id, owner.id)
    form = await parse_upload(
        request,
        max_total=settings.max_upload_bytes,
        max_files=settings.max_files_per_upload,
    )
    try:
        items = [Incoming(p.filename, p.file, p.size, p.sha256) for p in form.files]
        limits = MidiLimits(max_bytes=settings.max_midi_bytes)
        try:
            checked = await asyncio.to_thread(check_all, items, midi_limits=limits)
        except Rejected as exc:
            raise ApiError(exc.status, exc.code, exc.message) from exc

        def _store() -> list[FileOut]:
            keys: list[str] = []
            try:
                rows = store_files(
                    session=session,
                    store=store,
                    owner_id=owner.id,
                    dataset_id=dataset_id,
                    checked=checked,
                )
                keys = [r.object_key for r in rows]
                session.commit()
            except Exception:
                session.rollback()
                cleanup_unreferenced(session=session, store=store, keys=keys)
                raise
            return [FileOut.model_validate(r) for r in rows]

        files = await asyncio.to_thread(_store)
    finally:
        form.close()
    return FileList(files=files)


@router.get("/{dataset_id}/files", response_model=FileList)
def list_files(
    dataset_id: str,
    session: SessionDep,
    owner: CurrentOwner,
    kind: str | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> FileList:
    get_owned(session, Dataset, dataset_id, owner.id)
    filters = {"dataset_id": dataset_id} | ({"kind": kind} if kind else {})
    rows = list_owned(session, File, owner.id, limit=min(limit, 10000), offset=offset, **filters)
    return FileList(files=[FileOut.model_validate(r) for r in rows])


@router.post("/{dataset_id}/audio-jobs", status_code=202, response_model=JobOut)
def create_audio_job(
    dataset_id: str,
    body: AudioJobRequest,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> JobOut:
    """Queue convert / crop / transcribe over audio files of the dataset (all by default)."""
    get_owned(session, Dataset, dataset_id, owner.id)
    stmt = select(File.id).where(File.dataset_id == dataset_id, File.kind == "audio")
    if body.file_ids:
        stmt = stmt.where(File.id.in_(body.file_ids))
    found = list(session.scalars(stmt.order_by(File.created_at, File.id)))
    missing = sorted(set(body.file_ids) - set(found))
    if missing:
        raise ApiError(
            404, "not_found", f"no audio file {', '.join(missing[:5])} in dataset {dataset_id}"
        )
    if not found:
        raise ApiError(409, "no_audio_files", "the dataset has no audio files; upload some first")
    params = AudioParams.model_validate(
        {**body.model_dump(), "dataset_id": dataset_id, "file_ids": found}
    )
    job = submit(session, settings, owner_id=owner.id, type="audio", params=params)
    return JobOut.model_validate(job)
