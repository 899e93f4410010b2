"""`/v1/models`: train one on a corpus (a `train` job), watch its metrics, download its
checkpoints and weights, and sample from it (a `sample` job)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select

from cadenza.db.models import Checkpoint, Corpus, File, Job, MetricRecord, Model, Sample, new_id
from cadenza.db.repo import NotFound, get_owned, get_visible_model, list_owned, pick_checkpoint
from cadenza.delete import adapters_of, delete_model
from cadenza.jobs import submit
from cadenza.sample.params import SampleParams, check_controls, check_for_model
from cadenza.storage import ObjectNotFound, job_key
from cadenza.train.config import audio_prior
from cadenza.train.params import ModelRequest, TrainParams, resolve_adapter_request, resolve_model
from cadenza.validation import Conflict, InvalidParams
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentCaller,
    CurrentOwner,
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.editing import (
    capabilities,
    check_audio_request,
    check_edit,
    sampling_checkpoint,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import CHECKPOINT, PNG, SAFETENSORS, describe
from cadenza_api.schemas import (
    CheckpointOut,
    DeletedOut,
    JobOut,
    MetricOut,
    ModelOut,
    ModelPatch,
    SampleList,
    SampleOut,
    SampleRequest,
)
from cadenza_api.streams import stream_object

router = v1_router("/v1/models", "models")


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    **describe("models_create", "Train a model on a corpus", 404, 409, 422, 429),
)
def create_model(
    body: ModelRequest, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> JobOut:
    """Queue training; the model row exists at once so its progress can be watched.

    Answers 202 with the job; its `model_id` names the model (`GET /v1/models/{id}` shows
    state, checkpoints and metrics while it trains). 404 for an unknown corpus or
    `init_checkpoint_id`; 409 when that checkpoint was trained with another tokenizer than the
    corpus; 422 names each invalid architecture, preset, `config` or `train` field.
    `train.audio_prior` `pair` (an audio-vq corpus only, 422 elsewhere) trains a coarse prior
    + upsampler instead of one flattened prior.

    With `base_model_id` (yours or a public model) and `adapter`, trains a LoRA adapter of
    that model on the corpus, which must be built with the same `base_model_id` (422
    otherwise): 404 for a base you cannot see, 409 while the base has no finished training,
    422 naming each invalid `adapter` field.
    """
    corpus = get_owned(session, Corpus, body.corpus_id, owner.id)
    tokenizer = (corpus.params.get("tokenizer_spec") or {}).get("name")
    base: Model | None = None
    adapter: dict[str, Any] | None = None
    if body.base_model_id is not None or body.adapter is not None:
        base, base_ckpt = _adaptable_base(session, body, corpus, owner.id)
        body, adapter = resolve_adapter_request(
            body,
            base_architecture=base.architecture,
            base_preset=base.preset,
            base_config=base.config,
        )
        body = body.model_copy(update={"init_checkpoint_id": base_ckpt.id})
        if "pair" in (audio_prior(body.train), audio_prior(base.train_config)):
            why = "an adapter cannot be trained on or for a coarse prior + upsampler"
            raise InvalidParams(
                f"invalid request: train.audio_prior: {why}; train a full model instead",
                code="invalid_adapter",
                details=[{"field": "train.audio_prior", "message": why}],
            )
    config, train = resolve_model(
        body, tokenizer=tokenizer, tokenizer_spec=corpus.params.get("tokenizer_spec")
    )
    if body.init_checkpoint_id and base is None:
        ckpt = session.get(Checkpoint, body.init_checkpoint_id)
        parent = session.get(Model, ckpt.model_id) if ckpt else None
        if ckpt is None or parent is None or parent.owner_id != owner.id:
            raise ApiError(404, "not_found", f"checkpoint {body.init_checkpoint_id} not found")
        if parent.tokenizer_hash != corpus.tokenizer_hash:
            raise ApiError(
                409,
                "tokenizer_mismatch",
                "the checkpoint was trained with another tokenizer than this corpus; "
                "fine-tune only on a corpus built with the same tokenizer",
            )
    job_id = new_id()
    model = Model(
        owner_id=owner.id,
        corpus_id=corpus.id,
        job_id=job_id,
        architecture=body.architecture,
        preset=body.preset,
        config=config if base is None else dict(base.config),
        train_config=train,
        vocab_size=corpus.vocab_size,
        tokenizer_hash=corpus.tokenizer_hash,
        init_checkpoint_id=body.init_checkpoint_id,
        base_model_id=base.id if base is not None else None,
        adapter=adapter,
    )
    session.add(model)
    session.flush()
    job = submit(
        session,
        settings,
        owner_id=owner.id,
        type="train",
        params=TrainParams(model_id=model.id, corpus_id=corpus.id),
        result={"model_id": model.id},
        job_id=job_id,
        held=body.cluster_job,
    )
    return JobOut.model_validate(job)


def _adaptable_base(
    session: SessionDep, body: ModelRequest, corpus: Corpus, owner_id: str
) -> tuple[Model, Checkpoint]:
    """The base model an adapter request names and the checkpoint the adapter trains on."""
    if body.base_model_id is None:
        raise InvalidParams(
            "invalid request: adapter: an adapter needs base_model_id (the model to adapt)",
            code="invalid_adapter",
            details=[{"field": "base_model_id", "message": "required with adapter"}],
        )
    base = get_visible_model(session, body.base_model_id, owner_id)
    if base.adapter is not None:
        why = f"model {base.id} is itself an adapter; adapt its base {base.base_model_id}"
        raise InvalidParams(
            f"invalid request: base_model_id: {why}",
            code="invalid_adapter",
            details=[{"field": "base_model_id", "message": why}],
        )
    if corpus.tokenizer_hash != base.tokenizer_hash:
        why = (
            f"corpus {corpus.id} was not tokenized with model {base.id}'s tokenizer; build the "
            f'corpus with POST /v1/corpora {{"dataset_id": …, "base_model_id": "{base.id}"}}'
        )
        raise InvalidParams(
            f"invalid request: base_model_id: {why}",
            code="tokenizer_mismatch",
            details=[{"field": "base_model_id", "message": why}],
        )
    ckpt = pick_checkpoint(session=session, model_id=base.id, which="best")
    if base.state != "ready" or ckpt is None:
        raise ApiError(
            409,
            "model_not_ready",
            f"base model {base.id} has not finished training (state: {base.state}); "
            "adapt it once it is ready",
        )
    return base, ckpt


def _model_out(session: SessionDep, model: Model) -> ModelOut:
    ckpts = session.scalars(
        select(Checkpoint).where(Checkpoint.model_id == model.id).order_by(Checkpoint.step)
    )
    metrics = session.scalars(
        select(MetricRecord).where(MetricRecord.model_id == model.id).order_by(MetricRecord.id)
    )
    out = ModelOut.model_validate(model)
    state = model.state
    if state == "training":
        # The row says training until its job commits; a failed or cancelled job says more.
        job_state = session.scalar(select(Job.state).where(Job.id == model.job_id))
        state = {"failed": "failed", "cancelled": "cancelled", "queued": "queued"}.get(
            job_state or "", state
        )
    return out.model_copy(
        update={
            "state": state,
            "checkpoints": [CheckpointOut.model_validate(c) for c in ckpts],
            "metrics": [MetricOut.model_validate(m) for m in metrics],
            "capabilities": capabilities(session, model),
        }
    )


@router.get("", response_model=list[ModelOut], **describe("models_list", "List models"))
def list_models(
    session: SessionDep,
    owner: CurrentOwner,
    limit: Limit = 100,
    offset: Offset = 0,
    public: bool = False,
) -> list[ModelOut]:
    """Your models, newest first, each with its checkpoints and metrics; with `public=true`,
    the public models of every owner instead (the ones you may sample and adapt)."""
    if public:
        stmt = (
            select(Model)
            .where(Model.visibility == "public")
            .order_by(Model.created_at.desc(), Model.id.desc())
            .limit(limit)
            .offset(offset)
        )
        return [_model_out(session, m) for m in session.scalars(stmt)]
    return [
        _model_out(session, m)
        for m in list_owned(session, Model, owner.id, limit=limit, offset=offset)
    ]


@router.get("/{model_id}", response_model=ModelOut, **describe("models_get", "Get a model", 404))
def get_model(model_id: str, session: SessionDep, owner: CurrentOwner) -> ModelOut:
    """Its state (`queued`, `training`, `ready`, `failed`, …), configs, checkpoints and losses,
    and its `capabilities`: the modes, attribute controls and style tags a sample request may
    use. Yours, or another owner's public model (its corpus, dataset, checkpoint files, weights
    and loss curve stay 404 to you)."""
    return _model_out(session, get_visible_model(session, model_id, owner.id))


@router.patch(
    "/{model_id}",
    response_model=ModelOut,
    **describe("models_update", "Publish or unpublish a model", 404, 409, 422),
)
def update_model(
    model_id: str, body: ModelPatch, session: SessionDep, caller: CurrentCaller
) -> ModelOut:
    """Set `visibility`: `public` lets every owner see, sample and adapt the model (never read
    its corpus, dataset, checkpoint files or weights); `private` takes that back. Your own
    models, or any model with an `admin` key. 409 when making private a model that other
    owners' adapters depend on (they would no longer sample): they must be deleted first."""
    model = session.get(Model, model_id) if len(model_id) <= 64 else None
    if model is None or (model.owner_id != caller.owner.id and not caller.allows("admin")):
        raise NotFound("model", model_id)
    if body.visibility == "private" and model.visibility != "private":
        others = [m for m, o in adapters_of(session, model.id) if o != model.owner_id]
        if others:
            shown = ", ".join(others[:5]) + (
                f" and {len(others) - 5} more" if len(others) > 5 else ""
            )
            raise Conflict(
                f"model {model.id} is the base of other owners' adapters {shown}; it stays "
                "public while they exist",
                code="has_dependents",
            )
    model.visibility = body.visibility
    session.commit()
    return _model_out(session, model)


@router.get(
    "/{model_id}/checkpoints/{checkpoint_id}",
    **describe("models_download_checkpoint", "Download a training checkpoint", 404, ok=CHECKPOINT),
)
def download_checkpoint(
    model_id: str, checkpoint_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The full training checkpoint (torch format, load with weights_only=True)."""
    model = get_owned(session, Model, model_id, owner.id)
    ckpt = session.get(Checkpoint, checkpoint_id)
    if ckpt is None or ckpt.model_id != model.id:
        raise ApiError(404, "not_found", f"checkpoint {checkpoint_id} not found")
    return stream_object(store, ckpt.object_key, filename=f"{model.id}-{ckpt.step}.pt")


@router.get(
    "/{model_id}/loss.png",
    **describe("models_get_loss_curve", "Draw a model's loss curves", 404, 409, ok=PNG),
)
def loss_png(model_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner) -> Response:
    """Training curves (train/val loss per step) as a PNG, redrawn at every evaluation (409
    before the first one)."""
    model = get_owned(session, Model, model_id, owner.id)
    try:
        return Response(store.get(job_key(model.job_id, "loss.png")), media_type="image/png")
    except ObjectNotFound as exc:
        raise ApiError(
            409, "no_metrics", "no loss curve yet: it is drawn at the first evaluation"
        ) from exc


@router.get(
    "/{model_id}/weights.safetensors",
    **describe("models_download_weights", "Download a model's weights", 404, 409, ok=SAFETENSORS),
)
def download_weights(
    model_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The best checkpoint's weights as safetensors (written when training ends; 409 before).

    For an adapter model, only the adapter's tensors, with its options and its base's spec in
    the metadata."""
    model = get_owned(session, Model, model_id, owner.id)
    return stream_object(
        store,
        job_key(model.job_id, "model.safetensors"),
        filename=f"{model.id}.safetensors",
        missing=(409, "not_ready", "no safetensors export yet: it is written when training ends"),
    )


@router.post(
    "/{model_id}/samples",
    status_code=202,
    response_model=JobOut,
    **describe("models_create_samples", "Generate music from a model", 404, 409, 422, 429),
)
def create_samples(
    model_id: str,
    body: SampleRequest,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: CurrentOwner,
) -> JobOut:
    """Queue `n` variations; the job's `sample_ids` name them when it succeeds.

    Answers 202 with the job; poll it, then fetch each sample's MIDI
    (`GET /v1/samples/{id}/midi`). With `primer_sample_id` the new samples continue that
    sample (of any of your models) and record it as their `parent_sample_id`. 404 for an
    unknown model, checkpoint, primer file or primer sample; 409 when the model has no
    checkpoint yet (wait for its training job to save one) or `primer_tokens` come from another
    tokenizer; 422 for an invalid option, more than one primer, a primer file that is not MIDI,
    or tokens outside the model's vocabulary, or `controls`/`tags` the model did not learn (see
    its `capabilities`). On an audio model (a corpus of `audio-vq`) the primer is a recording
    (`primer_file_id`, an audio file) or an audio sample (`primer_sample_id`), cut by
    `primer_seconds`; `max_seconds` sets the length; `tags` the model learned condition it
    (422 for a `pair` model, `capabilities.prior`: its coarse prior reads none); the samples
    are WAV (`/audio`, and a spectrogram at `/pianoroll.png`). `mode` `infill` rewrites
    `infill.bars` of a source piece (`source_file_id` or `source_sample_id`), `accompany` adds
    tracks with `accompany.programs`: 422 when the model cannot (see its `capabilities.modes`)
    or the source lacks those bars or tracks, 404 for a source that is not yours.
    Yours, or a public model of another owner (the samples are yours).
    """
    model = get_visible_model(session, model_id, owner.id)
    ckpt = sampling_checkpoint(session, model, body.checkpoint)
    caps = capabilities(session, model)
    audio = caps["output"] == "audio"
    if audio:
        check_audio_request(session, body, owner.id, pair=caps.get("prior") == "pair")
    elif body.primer_file_id:
        primer = get_owned(session, File, body.primer_file_id, owner.id)
        if primer.kind != "midi":
            raise ApiError(
                422,
                "primer_not_midi",
                f"primer file {primer.id} is {primer.kind}; transcribe it to MIDI first",
            )
    check_edit(session, store, model, body, owner.id)  # mode, source (cadenza_api.editing)
    if body.primer_sample_id and not audio:
        # Any of the caller's samples, of any model: its MIDI is re-encoded with this model's
        # tokenizer when the job builds the prompt, as a primer file's is.
        parent = get_owned(session, Sample, body.primer_sample_id, owner.id)
        if parent.meta.get("kind") == "audio":
            raise ApiError(
                422,
                "primer_not_midi",
                f"primer sample {parent.id} is audio; this model continues MIDI",
                details=[{"field": "primer_sample_id", "message": "an audio sample"}],
            )
    corpus = session.get(Corpus, model.corpus_id)
    names: list[str] = []
    if body.force_tokens:
        names = list(corpus.stats.get("token_names", [])) if corpus else []
    check_controls(body, corpus.stats.get("capabilities") if corpus else None)
    check_for_model(
        body, vocab_size=model.vocab_size, tokenizer_hash=model.tokenizer_hash, token_names=names
    )
    params = SampleParams(**body.model_dump(), model_id=model.id, checkpoint_id=ckpt.id)
    job = submit(session, settings, owner_id=owner.id, type="sample", params=params)
    return JobOut.model_validate(job)


@router.get(
    "/{model_id}/samples",
    response_model=SampleList,
    **describe("models_list_samples", "List a model's samples", 404),
)
def list_samples(
    model_id: str, session: SessionDep, owner: CurrentOwner, limit: Limit = 1000, offset: Offset = 0
) -> SampleList:
    """Your samples generated from this model (yours or a public one), newest first (`limit`
    at most 1000)."""
    get_visible_model(session, model_id, owner.id)
    rows = list_owned(session, Sample, owner.id, limit=limit, offset=offset, model_id=model_id)
    return SampleList(samples=[SampleOut.model_validate(s) for s in rows])


@router.delete(
    "/{model_id}",
    response_model=DeletedOut,
    **describe("models_delete", "Delete a model with its checkpoints and samples", 404, 409),
)
def delete_model_route(
    model_id: str, session: SessionDep, store: StoreDep, settings: SettingsDep, owner: CurrentOwner
) -> DeletedOut:
    """Delete the model with its checkpoints, metrics, weights, loss curve, and its samples
    (MIDI and renderings; a public model's samples of other owners too). 409 while its
    training job, a sample job on it, or a fine-tuning from its checkpoints is queued or
    running (cancel that job first), and while adapters (anyone's) are built on it: the 409
    names them; they must be deleted first."""
    deleted = delete_model(session, owner_id=owner.id, model_id=model_id[:64])
    return finish_delete(session, store, settings, deleted)
