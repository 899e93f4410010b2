"""MIDI in, MIDI out: `POST /v1/models/{id}/continue` takes a MIDI file as the request body
and answers with the generated MIDI, for a DAW plug-in or a script that has no use for ids;
`/infill` (`?bars=3-4&tracks=0`) and `/accompany` (`?programs=33,0&drums=true`) edit the body
instead, with a model that can (its `capabilities.modes`).

The body is stored as a file of the owner's `midi-requests` dataset (validated as an upload
is; listed and deletable like any file) and becomes the primer of an ordinary `sample` job,
so the result is a sample like any other (lineage, renderings, deletes). The answer waits up
to `wait` seconds for the job: 200 with the MIDI (a zip of them when `n` > 1), else 202 with
the job to poll. The wait holds no database slot and no thread: the route's session is closed
once the job is queued, and the response polls the job on short sessions of its own.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from hashlib import sha256
from typing import Annotated, Any

import anyio
import anyio.to_thread
from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from cadenza.config import Settings
from cadenza.db.models import Corpus, Dataset, Job, Owner, Sample
from cadenza.db.repo import get_visible_model
from cadenza.ingest import (
    Incoming,
    Rejected,
    check_file,
    cleanup_unreferenced,
    store_files,
)
from cadenza.jobs import TERMINAL, JobState, submit
from cadenza.midi.load import MidiLimits, sniff_midi
from cadenza.sample.modes import check_mode
from cadenza.sample.params import SampleParams, SampleRequest
from cadenza.storage import ObjectStore
from cadenza.tokenize.spec import AUDIO_TOKENIZERS
from cadenza_api.deps import (
    CurrentOwner,
    Database,
    SessionDep,
    SettingsDep,
    StoreDep,
    UploadAllowed,
    v1_router,
)
from cadenza_api.editing import capabilities, check_source_file, sampling_checkpoint
from cadenza_api.errors import ApiError, error_body
from cadenza_api.openapi import BINARY, describe
from cadenza_api.schemas import JobOut

router = v1_router("/v1/models", "models")

# The dataset a MIDI request's body is kept in, one per owner, made on first use.
REQUESTS_DATASET = "midi-requests"
REQUESTS_DESCRIPTION = (
    "MIDI files sent to POST /v1/models/{id}/continue, kept as the primers of their samples"
)
# Media types a MIDI body may be sent as (curl --data-binary sends the last one by default).
MIDI_BODY_TYPES = ("audio/midi", "audio/x-midi", "audio/mid", "application/octet-stream")
# Request fields a MIDI request cannot take in its query: its body is the primer.
NOT_IN_QUERY = (
    "primer_file_id",
    "primer_sample_id",
    "primer_tokens",
    "primer_tokenizer_hash",
    "force_tokens",
    "mode",
    "source_file_id",
    "source_sample_id",
    "infill",
    "accompany",
)
# Fields that are objects or lists: they go in the JSON of POST /v1/models/{id}/samples.
JSON_ONLY = ("controls", "tags")
POLL_S = 0.2
DEFAULT_WAIT_S = 60.0
MAX_WAIT_S = 600.0


# What the MIDI routes share: how long they wait, and the errors they can answer.
WaitQuery = Annotated[
    float,
    Query(
        ge=0,
        le=MAX_WAIT_S,
        description="seconds to wait for the music before answering 202 with the job",
    ),
]
MIDI_STATUSES = (400, 404, 409, 413, 415, 422, 429)


def _query_options() -> list[dict[str, Any]]:
    """The sampling options a MIDI request takes in its query, as OpenAPI parameters: every
    scalar field of `SampleRequest`, with its schema (documented and fuzzed like the JSON)."""
    schema = SampleRequest.model_json_schema()
    out = []
    for name, prop in schema["properties"].items():
        if name in NOT_IN_QUERY or name in JSON_ONLY:
            continue
        prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
        out.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": prop,
                "description": SampleRequest.model_fields[name].description or name,
            }
        )
    return out


MIDI_REQUEST: dict[str, Any] = {
    "parameters": _query_options(),
    "requestBody": {
        "required": True,
        "description": "A Standard MIDI File: the primer the model continues.",
        "content": {t: {"schema": BINARY} for t in MIDI_BODY_TYPES},
    },
}
MIDI_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The generated MIDI (`n` = 1), or a zip of `sample-<id>.mid` files. "
        "`X-Cadenza-Sample-Ids` names the samples, `X-Cadenza-Job-Id` the job.",
        "content": {"audio/midi": {"schema": BINARY}, "application/zip": {"schema": BINARY}},
    },
    202: {
        "model": JobOut,
        "description": "Not done within `wait` seconds: the sample job, still running. Poll it "
        "(its URL is in `Location`); its `sample_ids` give the MIDI once it succeeded.",
    },
}


def sampling_options(
    request: Request, *, edit: dict[str, Any] | None = None, own: tuple[str, ...] = ()
) -> SampleRequest:
    """The query's sampling options as a `SampleRequest` (422 naming a bad or unknown one).

    `edit` (for the infill and accompany routes) gives the mode and its spec, read from the
    route's own query parameters `own`; without it the body is the primer to continue."""
    query = {k: v for k, v in request.query_params.items() if k != "wait" and k not in own}
    if len(set(request.query_params.keys())) != len(request.query_params.multi_items()):
        raise ApiError(422, "invalid_request", "each query parameter may be given once")
    steering = sorted(k for k in query if k in JSON_ONLY)
    if steering:
        raise ApiError(
            422,
            "invalid_request",
            f"{', '.join(steering)}: attribute controls and tags are not taken as query "
            "parameters; upload the MIDI file and send them in the JSON of "
            "POST /v1/models/{id}/samples",
        )
    given = sorted(k for k in query if k in NOT_IN_QUERY)
    if given:
        raise ApiError(
            422,
            "invalid_request",
            f"{', '.join(given)}: the request body is the primer; send the other options only",
        )
    try:
        # Validated as the JSON route would validate it with the body as its primer file
        # (or, for an edit, its source file).
        body = {"source_file_id": "request-body"} if edit else {"primer_file_id": "request-body"}
        return SampleRequest.model_validate({**query, **(edit or {}), **body})
    except ValidationError as exc:
        details = [
            {"field": ".".join(str(p) for p in e["loc"]) or "query", "message": e["msg"]}
            for e in exc.errors()
        ]
        fields = ", ".join(d["field"] for d in details)
        raise ApiError(
            422, "invalid_request", f"invalid query parameters: {fields}", details=details
        ) from None


async def _read_midi_body(request: Request, limit: int) -> Incoming:
    """The body, spooled (memory, then disk), hashed and size-checked as it arrives (413)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind not in MIDI_BODY_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"the body is {kind}; send the MIDI file itself as audio/midi "
            "(curl --data-binary @song.mid -H 'Content-Type: audio/midi')",
        )
    body = tempfile.SpooledTemporaryFile(max_size=1 << 20)  # noqa: SIM115 (the caller closes it)
    size = 0
    digest = sha256()
    async for chunk in request.stream():
        size += len(chunk)
        digest.update(chunk)
        if size > limit:
            body.close()
            raise ApiError(
                413, "too_large", f"the MIDI body is over {limit} bytes, the limit for a MIDI file"
            )
        body.write(chunk)
    if size == 0:
        body.close()
        raise ApiError(400, "empty_body", "the request has no body: send a MIDI file")
    return Incoming("request.mid", body, size, digest.hexdigest())


def _requests_dataset(session: Session, owner_id: str) -> str:
    found = session.scalar(
        select(Dataset.id)
        .where(Dataset.owner_id == owner_id, Dataset.name == REQUESTS_DATASET)
        .order_by(Dataset.created_at)
        .limit(1)
    )
    if found is not None:
        return found
    ds = Dataset(owner_id=owner_id, name=REQUESTS_DATASET, description=REQUESTS_DESCRIPTION)
    session.add(ds)
    session.flush()
    return ds.id


@router.post(
    "/{model_id}/continue",
    openapi_extra=MIDI_REQUEST,
    dependencies=[UploadAllowed],
    **describe(
        "models_continue_midi",
        "Continue a MIDI file (MIDI in, MIDI out)",
        *MIDI_STATUSES,
        ok=MIDI_ANSWERS,
    ),
)
async def continue_midi(
    model_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    wait: WaitQuery = DEFAULT_WAIT_S,
) -> Response:
    """Send a MIDI file as the body (`Content-Type: audio/midi`) and the sampling options of
    `POST /v1/models/{id}/samples` as query parameters (`?primer_bars=4&max_bars=8&seed=7`);
    get the continuation back as `audio/midi` when it is ready within `wait` seconds (default
    60), else 202 with the job. The body is kept in your `midi-requests` dataset as the
    samples' primer. 404 for an unknown model, 409 while it has no checkpoint, 415 for a body
    that is not MIDI, 422 for MIDI that cannot be read or an invalid option.
    """
    await _model_first(session, model_id, owner)
    options = sampling_options(request)
    return await answer_midi(model_id, request, session, settings, store, owner, wait, options)


async def _model_first(session: Session, model_id: str, owner: Owner) -> None:
    """404 for a model the caller may not use, before its options are looked at: another
    owner's model is not found whatever the query says (nor is its existence hinted at)."""
    await anyio.to_thread.run_sync(get_visible_model, session, model_id, owner.id)


async def answer_midi(
    model_id: str,
    request: Request,
    session: Session,
    settings: Settings,
    store: ObjectStore,
    owner: Owner,
    wait: float,
    options: SampleRequest,
) -> Response:
    """Queue the sample job of a MIDI request (the body is its primer, or the source it
    edits) and answer with the music, or 202 with the job after `wait` seconds."""
    edit = options.mode != "continue"

    def _check_model(s: Session) -> str:
        model = get_visible_model(s, model_id, owner.id)  # yours, or a public model
        corpus = s.get(Corpus, model.corpus_id)
        if corpus is not None and corpus.params.get("tokenizer_spec", {}).get("name") in (
            AUDIO_TOKENIZERS
        ):
            raise ApiError(
                422,
                "audio_model",
                f"model {model.id} continues recordings, not MIDI: upload the recording to a "
                "dataset and POST /v1/models/{id}/samples with its primer_file_id",
            )
        if edit:
            check_mode(options.mode, capabilities(s, model)["modes"])
        return sampling_checkpoint(s, model, options.checkpoint).id

    checkpoint_id = await anyio.to_thread.run_sync(_check_model, session)
    incoming = await _read_midi_body(request, settings.max_midi_bytes)
    try:
        if not sniff_midi(incoming.head(64)):
            raise ApiError(
                415,
                "not_midi",
                "the body is not a Standard MIDI File (it does not start with MThd); send the "
                ".mid file's bytes (transcribe audio to MIDI first: POST "
                "/v1/datasets/{id}/audio-jobs)",
            )
        limits = MidiLimits(max_bytes=settings.max_midi_bytes)
        try:
            checked = [
                await anyio.to_thread.run_sync(lambda: check_file(incoming, midi_limits=limits))
            ]
        except Rejected as exc:
            raise ApiError(exc.status, exc.code, exc.message) from exc
        if edit:
            check_source_file(None, options, checked[0].meta)

        def _queue(s: Session) -> Job:
            keys: list[str] = []
            try:
                dataset_id = _requests_dataset(s, owner.id)
                rows = store_files(
                    session=s,
                    store=store,
                    owner_id=owner.id,
                    dataset_id=dataset_id,
                    checked=checked,
                )
                keys = [r.object_key for r in rows]
                given = "source_file_id" if edit else "primer_file_id"
                params = SampleParams(
                    **{**options.model_dump(), given: rows[0].id},
                    model_id=model_id,
                    checkpoint_id=checkpoint_id,
                )
                # submit commits the file row together with the job, then sends the job id.
                return submit(s, settings, owner_id=owner.id, type="sample", params=params)
            except BaseException:
                s.rollback()
                cleanup_unreferenced(
                    session=s, store=store, keys=keys, grace_s=settings.sweep_grace_seconds
                )
                raise

        job = await anyio.to_thread.run_sync(_queue, session)
    finally:
        incoming.body.close()
    return AwaitedSample(request.app.state, job.id, wait)


def _ints(name: str, value: str) -> list[int]:
    """A query list like "33,0" (422 naming `name` otherwise)."""
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"{name}: a comma-separated list of integers, e.g. 33,0"
        ) from None


def _bars(value: str | None) -> list[int]:
    """`?bars=3-4` (or a single bar, `?bars=3`) as [first, last]."""
    if not value:
        raise ApiError(422, "invalid_request", "bars: say which bars to rewrite, e.g. bars=3-4")
    parts = value.split("-")
    try:
        first, last = int(parts[0]), int(parts[-1])
    except ValueError:
        raise ApiError(422, "invalid_request", "bars: a bar or a range of bars, e.g. 3-4") from None
    if len(parts) > 2:
        raise ApiError(422, "invalid_request", "bars: a bar or a range of bars, e.g. 3-4")
    return [first, last]


def _edit_request(extra: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """The OpenAPI of an edit route: its own query parameters, then the sampling options."""
    return {
        "parameters": [*extra, *_query_options()],
        "requestBody": {
            "required": True,
            "description": f"A Standard MIDI File: the piece to {what}.",
            "content": {t: {"schema": BINARY} for t in MIDI_BODY_TYPES},
        },
    }


INFILL_PARAMS = [
    {
        "name": "bars",
        "in": "query",
        "required": True,
        "schema": {"type": "string", "pattern": "^[0-9]+(-[0-9]+)?$"},
        "description": "bars to rewrite, 1-based and inclusive: 3-4 (or one bar: 3)",
    },
    {
        "name": "tracks",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
        "description": "indexes (0-based) of the tracks to rewrite, e.g. 0,2; default all",
    },
]
ACCOMPANY_PARAMS = [
    {
        "name": "programs",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": "^[0-9]+(,[0-9]+)*$"},
        "description": "General MIDI program of each new track, e.g. 33,0",
    },
    {
        "name": "drums",
        "in": "query",
        "required": False,
        "schema": {"type": "boolean"},
        "description": "add a drum track",
    },
]


@router.post(
    "/{model_id}/infill",
    openapi_extra=_edit_request(INFILL_PARAMS, "rewrite bars of"),
    dependencies=[UploadAllowed],
    **describe(
        "models_infill_midi",
        "Rewrite bars of a MIDI file (MIDI in, MIDI out)",
        *MIDI_STATUSES,
        ok=MIDI_ANSWERS,
    ),
)
async def infill_midi(
    model_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    wait: WaitQuery = DEFAULT_WAIT_S,
) -> Response:
    """Send a MIDI file as the body and `?bars=3-4` (1-based, inclusive; `&tracks=0,2` to
    rewrite only those tracks, 0-based): get it back with those bars newly written and every
    other note unchanged (on the tokenizer's grid), as `audio/midi`, or 202 with the job after
    `wait` seconds. The other sampling options of `POST /v1/models/{id}/samples` go in the
    query too. 422 when the model cannot infill (its `capabilities.modes`), for bars or tracks
    the file does not have, or an invalid option; 415 for a body that is not MIDI.
    """
    await _model_first(session, model_id, owner)
    query = request.query_params
    spec: dict[str, Any] = {"bars": _bars(query.get("bars"))}
    if query.get("tracks"):
        spec["tracks"] = _ints("tracks", query["tracks"])
    edit = {"mode": "infill", "infill": spec}
    options = sampling_options(request, edit=edit, own=("bars", "tracks"))
    return await answer_midi(model_id, request, session, settings, store, owner, wait, options)


@router.post(
    "/{model_id}/accompany",
    openapi_extra=_edit_request(ACCOMPANY_PARAMS, "accompany"),
    dependencies=[UploadAllowed],
    **describe(
        "models_accompany_midi",
        "Add tracks to a MIDI file (MIDI in, MIDI out)",
        *MIDI_STATUSES,
        ok=MIDI_ANSWERS,
    ),
)
async def accompany_midi(
    model_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
    wait: WaitQuery = DEFAULT_WAIT_S,
) -> Response:
    """Send a MIDI file as the body and `?programs=33,0` (a new track per General MIDI
    program) and/or `&drums=true`: get it back with its tracks unchanged and the new ones
    added, as `audio/midi`, or 202 with the job after `wait` seconds. 422 when the model cannot
    accompany (its `capabilities.modes`) or for an invalid option; 415 for a body that is not
    MIDI.
    """
    await _model_first(session, model_id, owner)
    query = request.query_params
    spec: dict[str, Any] = {"programs": _ints("programs", query.get("programs") or "")}
    if "drums" in query:
        spec["drums"] = query["drums"]
    edit = {"mode": "accompany", "accompany": spec}
    options = sampling_options(request, edit=edit, own=("programs", "drums"))
    return await answer_midi(model_id, request, session, settings, store, owner, wait, options)


class AwaitedSample(Response):
    """The answer of a MIDI request: made when the job ends or the wait is over, whichever
    comes first (or nothing, when the client hangs up meanwhile)."""

    def __init__(self, app_state: State, job_id: str, wait_s: float) -> None:
        super().__init__(status_code=202)
        self.db: Database = app_state.db
        self.store: ObjectStore = app_state.store
        self.job_id, self.wait_s = job_id, wait_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer: Response | None = None

        async def wait_for_job() -> None:
            nonlocal answer
            answer = await self._outcome()
            tg.cancel_scope.cancel()

        async def watch_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for_job)
            tg.start_soon(watch_disconnect)
        if answer is not None:
            await answer(scope, receive, send)

    async def _outcome(self) -> Response:
        deadline = anyio.current_time() + self.wait_s
        while True:
            job = await self.db.run(self._job)
            if JobState(job.state) in TERMINAL or anyio.current_time() >= deadline:
                break
            await anyio.sleep(min(POLL_S, max(0.0, deadline - anyio.current_time())))
        location = {"Location": f"/v1/jobs/{job.id}", "X-Cadenza-Job-Id": job.id}
        if job.state == JobState.SUCCEEDED.value:
            rows = await self.db.run(self._samples)
            return await anyio.to_thread.run_sync(self._music, rows)
        if job.state == JobState.FAILED.value:
            message = f"the sample job {job.id} failed: {job.error or 'no reason given'}"
            return JSONResponse(error_body("job_failed", message), 409, headers=location)
        if job.state == JobState.CANCELLED.value:
            message = f"the sample job {job.id} was cancelled"
            return JSONResponse(error_body("job_cancelled", message), 409, headers=location)
        return Response(job.model_dump_json(), 202, location, media_type="application/json")

    def _job(self, session: Session) -> JobOut:
        return JobOut.model_validate(session.get_one(Job, self.job_id))

    def _samples(self, session: Session) -> list[tuple[str, str]]:
        found = session.execute(
            select(Sample.id, Sample.midi_key)
            .where(Sample.job_id == self.job_id)
            .order_by(Sample.index)
        )
        return [(sample_id, key) for sample_id, key in found]

    def _music(self, rows: list[tuple[str, str]]) -> Response:
        headers = {
            "X-Cadenza-Job-Id": self.job_id,
            "X-Cadenza-Sample-Ids": ",".join(sample_id for sample_id, _ in rows),
        }
        if len(rows) == 1:
            sample_id, key = rows[0]
            headers |= {
                "Content-Disposition": f'attachment; filename="sample-{sample_id}.mid"',
                "Location": f"/v1/samples/{sample_id}",
            }
            return Response(self.store.get(key), 200, headers, media_type="audio/midi")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for sample_id, key in rows:
                zf.writestr(f"sample-{sample_id}.mid", self.store.get(key))
        headers["Content-Disposition"] = f'attachment; filename="samples-{self.job_id}.zip"'
        return Response(out.getvalue(), 200, headers, media_type="application/zip")
