"""Models: train one on a corpus (a `train` job), watch its metrics, list checkpoints."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select

from cadenza.db.models import Checkpoint, Corpus, Job, MetricRecord, Model, new_id
from cadenza.db.repo import get_owned, list_owned
from cadenza.models.registry import resolve_config
from cadenza.storage import ObjectNotFound, job_key
from cadenza.tokenize.spec import CODES_PER_QUARTER
from cadenza.train.config import TrainConfig
from cadenza_api.deps import CurrentOwner, SessionDep, SettingsDep, StoreDep
from cadenza_api.errors import ApiError, invalid
from cadenza_api.routers.jobs import submit
from cadenza_api.schemas import CheckpointOut, JobOut, MetricOut, ModelCreate, ModelOut
from cadenza_api.streams import stream_object

router = APIRouter(tags=["models"])


def _validate(body: ModelCreate) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resolve and validate the model and training configs; 422 naming the field."""
    try:
        cfg = resolve_config(body.architecture, body.preset, body.config)
    except ValidationError as exc:
        raise invalid("config", exc) from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_config", str(exc)) from exc
    try:
        if body.preset:
            train = TrainConfig.from_preset(body.architecture, body.preset, body.train)
        else:
            train = TrainConfig.model_validate(body.train)
    except ValidationError as exc:
        raise invalid("train", exc, "invalid_train_config") from exc
    except ValueError as exc:
        raise ApiError(422, "invalid_train_config", str(exc)) from exc
    block = getattr(cfg, "block_size", None)
    if block is not None and train.seq_len > block:
        raise ApiError(
            422,
            "invalid_train_config",
            f"train.seq_len ({train.seq_len}) exceeds config.block_size ({block})",
        )
    return cfg.model_dump(mode="json"), train.model_dump(mode="json")


@router.post("/v1/models", status_code=202, response_model=JobOut)
def create_model(
    body: ModelCreate, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> JobOut:
    """Queue training; the model row exists at once so its progress can be watched."""
    corpus = get_owned(session, Corpus, body.corpus_id, owner.id)
    config, train = _validate(body)
    tokenizer = (corpus.params.get("tokenizer_spec") or {}).get("name")
    if tokenizer == "quarter-vq" and "window_grid" not in body.train:
        # A prior over VQ codes learns from windows that start on a quarter (system E's
        # stride); GET /v1/models shows it, and train.window_grid=null turns it off.
        train["window_grid"] = CODES_PER_QUARTER
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
        params={"model_id": model.id, "corpus_id": corpus.id},
        result={"model_id": model.id},
        job_id=job_id,
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


@router.get("/v1/models", response_model=list[ModelOut])
def list_models(session: SessionDep, owner: CurrentOwner, limit: int = 100) -> list[ModelOut]:
    return [_model_out(session, m) for m in list_owned(session, Model, owner.id, limit=limit)]


@router.get("/v1/models/{model_id}", response_model=ModelOut)
def get_model(model_id: str, session: SessionDep, owner: CurrentOwner) -> ModelOut:
    return _model_out(session, get_owned(session, Model, model_id, owner.id))


@router.get("/v1/models/{model_id}/checkpoints/{checkpoint_id}")
def download_checkpoint(
    model_id: str, checkpoint_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The full training checkpoint (torch format, load with weights_only=True)."""
    model = get_owned(session, Model, model_id, owner.id)
    ckpt = session.get(Checkpoint, checkpoint_id)
    if ckpt is None or ckpt.model_id != model.id:
        raise ApiError(404, "not_found", f"checkpoint {checkpoint_id} not found")
    return stream_object(store, ckpt.object_key, filename=f"{model.id}-{ckpt.step}.pt")


@router.get("/v1/models/{model_id}/loss.png")
def loss_png(model_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner) -> Response:
    """Training curves (train/val loss per step) as a PNG, redrawn at every evaluation."""
    model = get_owned(session, Model, model_id, owner.id)
    try:
        return Response(store.get(job_key(model.job_id, "loss.png")), media_type="image/png")
    except ObjectNotFound as exc:
        raise ApiError(
            409, "no_metrics", "no loss curve yet: it is drawn at the first evaluation"
        ) from exc


@router.get("/v1/models/{model_id}/weights.safetensors")
def download_weights(
    model_id: str, session: SessionDep, store: StoreDep, owner: CurrentOwner
) -> StreamingResponse:
    """The best checkpoint's weights as safetensors (written when training ends)."""
    model = get_owned(session, Model, model_id, owner.id)
    return stream_object(
        store,
        job_key(model.job_id, "model.safetensors"),
        filename=f"{model.id}.safetensors",
        missing=(409, "not_ready", "no safetensors export yet: it is written when training ends"),
    )
