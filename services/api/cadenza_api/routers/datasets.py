"""Datasets and their files: create, list, upload (streamed, validated, all-or-nothing)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select

from cadenza.db.models import Dataset, File
from cadenza.db.repo import get_owned, list_owned
from cadenza.ingest import Incoming, Rejected, check_all, cleanup_unreferenced, store_files
from cadenza.midi.load import MidiLimits
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError
from cadenza_api.schemas import DatasetCreate, DatasetOut, FileList, FileOut
from cadenza_api.streams import stream_object
from cadenza_api.upload import parse_upload

router = APIRouter(tags=["datasets"])

MEDIA_TYPES = {
    "mid": "audio/midi",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "m4a": "audio/mp4",
}


def _dataset_out(session: SessionDep, ds: Dataset) -> DatasetOut:
    count = session.scalar(select(func.count(File.id)).where(File.dataset_id == ds.id)) or 0
    return DatasetOut.model_validate(ds).model_copy(update={"file_count": count})


@router.post("/v1/datasets", status_code=201, response_model=DatasetOut)
def create_dataset(body: DatasetCreate, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    ds = Dataset(owner_id=owner.id, name=body.name, description=body.description)
    session.add(ds)
    session.commit()
    return _dataset_out(session, ds)


@router.get("/v1/datasets", response_model=list[DatasetOut])
def list_datasets(
    session: SessionDep, owner: CurrentOwner, limit: int = 100, offset: int = 0
) -> list[DatasetOut]:
    rows = list_owned(session, Dataset, owner.id, limit=min(limit, 1000), offset=offset)
    return [_dataset_out(session, d) for d in rows]


@router.get("/v1/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    return _dataset_out(session, get_owned(session, Dataset, dataset_id, owner.id))


@router.post("/v1/datasets/{dataset_id}/files", status_code=201, response_model=FileList)
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
    get_owned(session, Dataset, dataset_id, owner.id)  # 404 before reading the body
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


@router.get("/v1/datasets/{dataset_id}/files", response_model=FileList)
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


@router.get("/v1/files/{file_id}", response_model=FileOut)
def get_file(file_id: str, session: SessionDep, owner: CurrentOwner) -> FileOut:
    return FileOut.model_validate(get_owned(session, File, file_id, owner.id))


@router.get("/v1/files/{file_id}/content")
def download_file(
    file_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """Stream a stored file with the content type of what it really is."""
    row = get_owned(session, File, file_id, owner.id)
    media = MEDIA_TYPES.get(row.format, "application/octet-stream")
    return stream_object(store, row.object_key, filename=row.name, media_type=media)
