"""The `train` job's parameters, torch-free: a model request and how it resolves.

A request names a corpus, an architecture, a preset and overrides of the model config and of
the training config. `resolve_model` turns it into the two validated configs that are stored
on the model row; the job itself carries only the ids (`TrainParams`), because the model row
is what the trainer, the sampler and the API all read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cadenza.limits.lists import check_nested_lists
from cadenza.validation import InvalidParams


class ModelRequest(BaseModel):
    """`POST /v1/models`: what to train, from which preset, with which overrides."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "corpus_id": "8b1d4e2f6a9c4d3e8f7a6b5c4d3e2f10",
                    "architecture": "music-transformer",
                    "preset": "tiny",
                    "train": {"max_steps": 2000, "eval_interval": 200},
                },
                {
                    "corpus_id": "5c0e1d2f3a4b4c5d9e8f7a6b5c4d3e21",
                    "base_model_id": "9a8b7c6d5e4f4a3b8c2d1e0f9a8b7c6d",
                    "adapter": {"type": "lora", "rank": 8, "alpha": 16},
                    "train": {"max_steps": 500, "lr": 0.002},
                },
            ]
        },
    )

    corpus_id: str = Field(min_length=1, max_length=64)
    architecture: str = Field(default="music-transformer", max_length=64)
    preset: str | None = Field(default="tiny", max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    init_checkpoint_id: str | None = Field(default=None, max_length=64)
    base_model_id: str | None = Field(
        default=None,
        max_length=64,
        description="adapt this model (yours or a public one) with `adapter`; the corpus must "
        "be built with the same `base_model_id`; architecture, preset and config are the base's",
    )
    adapter: dict[str, Any] | None = Field(
        default=None,
        description='with `base_model_id`: {"type": "lora", "rank": 8, "alpha": 16, '
        '"dropout": 0.0, "targets": [...]}; trains and stores only low-rank adapters',
    )
    cluster_job: bool = Field(
        default=False,
        description="Hold the training job for a Kubernetes Job instead of the GPU workers: "
        "no worker takes it; the pods that `cadenza k8s train-job JOB_ID | kubectl apply -f -` "
        "starts claim it (also after a drain or a lost pod).",
    )

    @model_validator(mode="after")
    def _bounded_lists(self) -> ModelRequest:
        check_nested_lists(self.config, "config")
        check_nested_lists(self.train, "train")
        if self.adapter is not None:
            check_nested_lists(self.adapter, "adapter")
        return self


#: `train.infill_fraction` of a model trained on a corpus that can carry infill examples.
DEFAULT_INFILL_FRACTION = 0.5


class TrainParams(BaseModel):
    """What a `train` job runs with: the model row to train (its configs live on the row)."""

    model_config = ConfigDict(extra="forbid")

    model_id: str
    corpus_id: str


def resolve_model(
    request: ModelRequest,
    *,
    tokenizer: str | None,
    tokenizer_spec: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated model config and training config of `request`, as stored JSON.

    `tokenizer` is the corpus's tokenizer name: a prior over quarter-vq codes learns from
    windows that start on a quarter (16 codes), so such a model gets `window_grid` 16 unless
    the request says otherwise (`train.window_grid: null` turns it off); an audio-vq prior's
    windows start on a coarse code (`window_grid` = 1 + fine_per_coarse; a `pair` prior reads
    the coarse codes alone, one id per step, so it needs none). `tokenizer_spec` is
    the corpus's whole spec: on a corpus that can carry infill examples (the `multitrack`
    preset) `train.infill_fraction` defaults to 0.5, and elsewhere it must stay 0.
    """
    from cadenza.models.registry import resolve_config
    from cadenza.tokenize.mmm import supports_editing
    from cadenza.tokenize.spec import CODES_PER_QUARTER
    from cadenza.train.config import TrainConfig

    try:
        cfg = resolve_config(request.architecture, request.preset, request.config)
    except ValidationError as exc:
        raise InvalidParams.from_validation("config", exc) from exc
    except ValueError as exc:
        raise InvalidParams(str(exc), code="invalid_config") from exc
    try:
        if request.preset:
            train = TrainConfig.from_preset(request.architecture, request.preset, request.train)
        else:
            train = TrainConfig.model_validate(request.train)
    except ValidationError as exc:
        raise InvalidParams.from_validation("train", exc, "invalid_train_config") from exc
    except ValueError as exc:
        raise InvalidParams(str(exc), code="invalid_train_config") from exc
    block = getattr(cfg, "block_size", None)
    if block is not None and train.seq_len > block:
        raise InvalidParams(
            f"train.seq_len ({train.seq_len}) exceeds config.block_size ({block})",
            code="invalid_train_config",
        )
    train_json = train.model_dump(mode="json")
    if tokenizer == "quarter-vq" and "window_grid" not in request.train:
        train_json["window_grid"] = CODES_PER_QUARTER
    pair = train.audio_prior == "pair"
    if pair and tokenizer != "audio-vq":
        raise InvalidParams(
            f"train.audio_prior pair needs an audio-vq corpus (this corpus is {tokenizer}); "
            "leave audio_prior out (flat) or train on a corpus built with audio-vq",
            code="invalid_train_config",
            details=[{"field": "train.audio_prior", "message": "needs an audio-vq corpus"}],
        )
    if tokenizer == "audio-vq" and not pair and "window_grid" not in request.train:
        # windows start on a coarse code, so the coarse/fine positions are the same in each
        from cadenza.tokenize.options import AudioVQConfig

        train_json["window_grid"] = AudioVQConfig.model_validate(
            (tokenizer_spec or {}).get("config", {})
        ).group
    editable = supports_editing(tokenizer_spec)
    if editable and "infill_fraction" not in request.train:
        train_json["infill_fraction"] = DEFAULT_INFILL_FRACTION
    if train.infill_fraction > 0 and not editable:
        raise InvalidParams(
            "train.infill_fraction needs a corpus built with the `multitrack` preset (MMM "
            "with the infill tokens); set it to 0 or build such a corpus",
            code="invalid_train_config",
        )
    return cfg.model_dump(mode="json"), train_json


def resolve_adapter_request(
    request: ModelRequest,
    *,
    base_architecture: str,
    base_preset: str | None,
    base_config: dict[str, Any],
) -> tuple[ModelRequest, dict[str, Any]]:
    """An adapter request as the model request to resolve (the base's architecture and
    preset, the request's `train` overrides) and its validated adapter options.

    The base fixes the network, so a request that also names an architecture, a preset or
    `config` that differ, or `init_checkpoint_id`, is refused naming the field.
    """
    from cadenza.models.adapters import resolve_adapter

    def refuse(field: str, why: str) -> InvalidParams:
        return InvalidParams(
            f"invalid request: {field}: {why}",
            code="invalid_adapter",
            details=[{"field": field, "message": why}],
        )

    given = request.model_fields_set
    if request.adapter is None:
        raise refuse(
            "adapter",
            'base_model_id needs an adapter, e.g. {"type": "lora", "rank": 8}; to fine-tune '
            "all weights of your own model use init_checkpoint_id",
        )
    if request.init_checkpoint_id is not None:
        raise refuse("init_checkpoint_id", "an adapter starts from its base model; leave it out")
    if request.config:
        raise refuse("config", "the base model fixes the network; leave config empty")
    if "architecture" in given and request.architecture != base_architecture:
        raise refuse("architecture", f"the base model is a {base_architecture}")
    if "preset" in given and request.preset not in (None, base_preset):
        raise refuse("preset", f"the base model's preset is {base_preset}")
    adapter = resolve_adapter(base_architecture, request.adapter)
    update = {
        "architecture": base_architecture,
        "preset": base_preset,
        "config": dict(base_config),
        "adapter": adapter,
    }
    return request.model_copy(update=update), adapter
