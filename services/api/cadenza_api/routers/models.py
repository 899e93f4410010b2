"""`/v1/models`: train one on a corpus (a `train` job), watch its metrics, download its
checkpoints and weights, and sample from it (a `sample` job)."""

from __future__ import annotations

from fastapi.responses import Response, StreamingResponse
from sqlalchemy import select

from cadenza.db.models import Checkpoint, Corpus, File, Job, MetricRecord, Model, Sample, new_id
from cadenza.db.repo import get_owned, list_owned, pick_checkpoint
from cadenza.delete import delete_model
from cadenza.jobs import submit
from cadenza.sample.params import SampleParams, check_controls, check_for_model
from cadenza.storage import ObjectNotFound, job_key
from cadenza.train.params import TrainParams, resolve_model
from cadenza_api.deletes import finish_delete
from cadenza_api.deps import (
    CurrentOwner,
    Limit,
    Offset,
    SessionDep,
    SettingsDep,
    StoreDep,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import CHECKPOINT, PNG, SAFETENSORS, describe
from cadenza_api.schemas import (
    CheckpointOut,
    DeletedOut,
    JobOut,
    MetricOut,
    ModelOut,
    ModelRequest,
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
    """
    corpus = get_owned(session, Corpus, body.corpus_id, owner.id)
    tokenizer = (corpus.params.get("tokenizer_spec") or {}).get("name")
    config, train = resolve_model(body, tokenizer=tokenizer)
    if body.init_checkpoint_id:
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
        config=config,
        train_config=train,
        vocab_size=corpus.vocab_size,
        tokenizer_hash=corpus.tokenizer_hash,
        init_checkpoint_id=body.init_checkpoint_id,
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


def _model_out(session: SessionDep, model: Model) -> ModelOut:
    ckpts = session.scalars(
        select(Checkpoint).where(Checkpoint.model_id == model.id).order_by(Checkpoint.step)
    )
    metrics = session.scalars(
        select(MetricRecord).where(MetricRecord.model_id == model.id).order_by(MetricRecord.id)
    )
    out = ModelOut.model_validate(model)
    corpus = session.get(Corpus, model.corpus_id)
    if corpus is not None and corpus.stats.get("capabilities"):
        out.capabilities = dict(corpus.stats["capabilities"])
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
        }
    )


@router.get("", response_model=list[ModelOut], **describe("models_list", "List models"))
def list_models(
    session: SessionDep, owner: CurrentOwner, limit: Limit = 100, offset: Offset = 0
) -> list[ModelOut]:
    """Your models, newest first, each with its checkpoints and metrics."""
    return [
        _model_out(session, m)
        for m in list_owned(session, Model, owner.id, limit=limit, offset=offset)
    ]


@router.get("/{model_id}", response_model=ModelOut, **describe("models_get", "Get a model", 404))
def get_model(model_id: str, session: SessionDep, owner: CurrentOwner) -> ModelOut:
    """Its state (`queued`, `training`, `ready`, `failed`, …), configs, checkpoints and losses,
    and its `capabilities`: the attribute controls and style tags a sample request may set."""
    return _model_out(session, get_owned(session, Model, model_id, owner.id))


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
    """The best checkpoint's weights as safetensors (written when training ends; 409 before)."""
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
    owner: CurrentOwner,
) -> JobOut:
    """Queue `n` variations; the job's `sample_ids` name them when it succeeds.

    Answers 202 with the job; poll it, then fetch each sample's MIDI
    (`GET /v1/samples/{id}/midi`). 409 when the model has no checkpoint yet (wait for its
    training job to save one) or `primer_tokens` come from another tokenizer; 422 for an
    invalid option, a primer file that is not MIDI, or tokens outside the model's vocabulary,
    or `controls`/`tags` the model did not learn (see its `capabilities`).
    """
    model = get_owned(session, Model, model_id, owner.id)
    ckpt = pick_checkpoint(session=session, model_id=model.id, which=body.checkpoint)
    if ckpt is None:
        if body.checkpoint not in ("best", "latest"):
            raise ApiError(404, "not_found", f"checkpoint {body.checkpoint} not found")
        raise ApiError(
            409,
            "model_not_ready",
            f"model {model.id} has no checkpoint yet (state: {model.state}); "
            "wait for its training job to save one",
        )
    if body.primer_file_id:
        primer = get_owned(session, File, body.primer_file_id, owner.id)
        if primer.kind != "midi":
            raise ApiError(
                422,
                "primer_not_midi",
                f"primer file {primer.id} is {primer.kind}; transcribe it to MIDI first",
            )
    names: list[str] = []
    corpus = session.get(Corpus, model.corpus_id)
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
    """The samples generated from this model, newest first (`limit` at most 1000)."""
    get_owned(session, Model, model_id, owner.id)
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
    (MIDI and renderings). 409 while its training job, a sample job on it, or a fine-tuning
    from its checkpoints is queued or running (cancel that job first)."""
    deleted = delete_model(session, owner_id=owner.id, model_id=model_id[:64])
    return finish_delete(session, store, settings, deleted)
