"""`/v1/datasets`: create and list datasets, upload files (streamed, validated, all or
nothing), list them, and queue audio jobs over a dataset's recordings."""

from __future__ import annotations

import asyncio

from fastapi import Request
from sqlalchemy import select

from cadenza.audio.params import AudioParams
from cadenza.db.models import Dataset, File
from cadenza.db.repo import NotFound, datasets_with_counts, get_owned, list_owned
from cadenza.delete import delete_dataset
from cadenza.ingest import (
    Incoming,
    Rejected,
    check_all,
    cleanup_unreferenced,
    release,
    store_files,
)
from cadenza.jobs import submit
from cadenza.midi.load import MidiLimits
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    FileLimit,
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    StoreDep,
    UploadAllowed,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import UPLOAD_BODY, describe
from cadenza_api.schemas import (
    AudioJobRequest,
    DatasetCreate,
    DatasetOut,
    DeletedOut,
    FileList,
    FileOut,
    JobOut,
    TagsPatch,
)
from cadenza_api.upload import parse_upload

router = v1_router("/v1/datasets", "datasets")


def _dataset_out(ds: Dataset, file_count: int) -> DatasetOut:
    return DatasetOut.model_validate(ds).model_copy(update={"file_count": file_count})


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    **describe("datasets_create", "Create a dataset"),
)
def create_dataset(body: DatasetCreate, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    """An empty, named collection of your MIDI and audio files; upload into it next."""
    ds = Dataset(owner_id=owner.id, name=body.name, description=body.description, tags=body.tags)
    session.add(ds)
    session.commit()
    return _dataset_out(ds, 0)


@router.get("", response_model=list[DatasetOut], **describe("datasets_list", "List datasets"))
def list_datasets(
    session: SessionDep, owner: CurrentOwner, limit: Limit = 100, offset: Offset = 0
) -> list[DatasetOut]:
    """Your datasets, newest first, with their file counts (`limit` at most 1000)."""
    rows = datasets_with_counts(session, owner.id, limit=limit, offset=offset)
    return [_dataset_out(ds, n) for ds, n in rows]


@router.get(
    "/{dataset_id}", response_model=DatasetOut, **describe("datasets_get", "Get a dataset", 404)
)
def get_dataset(dataset_id: str, session: SessionDep, owner: CurrentOwner) -> DatasetOut:
    """The dataset's name, description and file count."""
    found = datasets_with_counts(session, owner.id, dataset_id=dataset_id[:64], limit=1)
    if not found:
        raise NotFound("dataset", dataset_id)
    return _dataset_out(*found[0])


@router.patch(
    "/{dataset_id}",
    response_model=DatasetOut,
    **describe("datasets_patch", "Set a dataset's style tags", 404, 422),
)
def patch_dataset(
    dataset_id: str, body: TagsPatch, session: SessionDep, owner: CurrentOwner
) -> DatasetOut:
    """Replace the dataset's style tags (`{"tags": ["baroque"]}`). A corpus made with
    `learn_tags` learns every file's tags together with its dataset's; corpora already built
    keep the tags they learned."""
    ds = get_owned(session, Dataset, dataset_id[:64], owner.id)
    ds.tags = body.tags
    session.commit()
    found = datasets_with_counts(session, owner.id, dataset_id=ds.id, limit=1)
    return _dataset_out(*found[0])


@router.post(
    "/{dataset_id}/files",
    status_code=201,
    response_model=FileList,
    openapi_extra=UPLOAD_BODY,
    dependencies=[UploadAllowed],
    **describe(
        "datasets_upload_files", "Upload files into a dataset", 400, 404, 409, 413, 415, 422, 429
    ),
)
async def upload_files(
    dataset_id: str,
    request: Request,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> FileList:
    """Upload one or many files (`-F files=@a.mid -F files=@b.wav`) or a zip of them.

    Every file is validated first (MIDI parsed, audio probed, by content, not by name); if any
    is refused, none is stored and the error names the file: 413 past a limit (the request,
    a MIDI file's bytes, notes or tracks, a zip's size, entries or ratio, files per request),
    415 for a file that is neither MIDI nor supported audio, 422 for MIDI that cannot be read.
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
            checked = await asyncio.to_thread(
                check_all,
                items,
                midi_limits=limits,
                max_unpacked=settings.max_request_unpacked_bytes,
            )
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
                cleanup_unreferenced(
                    session=session,
                    store=store,
                    keys=keys,
                    grace_s=settings.sweep_grace_seconds,
                )
                raise
            return [FileOut.model_validate(r) for r in rows]

        try:
            files = await asyncio.to_thread(_store)
        finally:
            release(checked, items)
    finally:
        form.close()
    return FileList(files=files)


@router.get(
    "/{dataset_id}/files",
    response_model=FileList,
    **describe("datasets_list_files", "List a dataset's files", 404),
)
def list_files(
    dataset_id: str,
    session: SessionDep,
    owner: CurrentOwner,
    kind: str | None = None,
    limit: FileLimit = 1000,
    offset: Offset = 0,
) -> FileList:
    """The dataset's files, newest first; `kind=midi` or `kind=audio` keeps one kind."""
    get_owned(session, Dataset, dataset_id, owner.id)
    filters = {"dataset_id": dataset_id} | ({"kind": kind} if kind else {})
    rows = list_owned(session, File, owner.id, limit=limit, offset=offset, **filters)
    return FileList(files=[FileOut.model_validate(r) for r in rows])


@router.post(
    "/{dataset_id}/audio-jobs",
    status_code=202,
    response_model=JobOut,
    **describe(
        "datasets_create_audio_job", "Convert, crop or transcribe a dataset's audio", 404, 409, 429
    ),
)
def create_audio_job(
    dataset_id: str,
    body: AudioJobRequest,
    session: SessionDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> JobOut:
    """Queue convert / crop / transcribe over audio files of the dataset (all by default).

    Answers 202 with the job; poll it (`GET /v1/jobs/{id}`) and read its `file_ids`. 404 also
    for a `file_ids` entry that is not one of the dataset's audio files; 409 when it has none;
    422 for an invalid option, a cut list included (checked once the files are found).
    """
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


@router.delete(
    "/{dataset_id}",
    response_model=DeletedOut,
    **describe("datasets_delete", "Delete a dataset and its files", 404, 409),
)
def delete_dataset_route(
    dataset_id: str,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    owner: CurrentOwner,
) -> DeletedOut:
    """Delete the dataset, its files and their stored bytes (and renderings).

    Corpora made from it stay, with `dataset_id` null: they hold their own tokenizer and
    token arrays, so their models keep working. 409 while a queued or running job reads the
    dataset (cancel the job first).
    """
    deleted = delete_dataset(session, owner_id=owner.id, dataset_id=dataset_id[:64])
    return finish_delete(session, store, settings, deleted)
