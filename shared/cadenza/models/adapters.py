"""Adapter options (LoRA), torch-free: what `POST /v1/models` may say under `adapter`.

An adapter model trains a few low-rank matrices on top of a frozen base model
(`cadenza.models.lora` holds the torch half). The API validates a request with
`resolve_adapter` before any job exists, so a bad rank or an unknown layer name is a 422 naming
the field, not a failed training job.

`LORA_TARGETS` lists, per architecture, the linear layers an adapter may wrap, by their name
inside a block (the same name in every block). The tied output head of the transformers is not
among them: it is the token embedding too, so adapting it would move the input side as well.
`tests/unit/test_lora.py` checks this table against the layers the built models really have.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cadenza.validation import InvalidParams

_TRANSFORMER_TARGETS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "gpt": _TRANSFORMER_TARGETS,
    "music-transformer": _TRANSFORMER_TARGETS,
    # The recurrent cells are fused kernels with no linear layer to wrap; only the output
    # projection is one.
    "gru": ("head",),
    "lstm": ("head",),
}
"""Architecture -> names of the linear layers a LoRA adapter may wrap (the default: all)."""

MAX_RANK = 256


class AdapterSpec(BaseModel):
    """A LoRA adapter: W x + (alpha / rank) * B A x, with A (rank x in) and B (out x rank).

    B starts at zero, so an untrained adapter leaves the base model's output unchanged.
    """

    model_config = ConfigDict(extra="forbid")

    type: Literal["lora"] = "lora"
    rank: int = Field(default=8, ge=1, le=MAX_RANK, description="rank of the update B A")
    alpha: float = Field(
        default=16.0, gt=0, le=4096, description="scale: the update is multiplied by alpha/rank"
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout on the adapter input")
    targets: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=16,
        description="linear layers to adapt (default: every adaptable layer of the architecture)",
    )


def resolve_adapter(architecture: str, raw: dict[str, Any]) -> dict[str, Any]:
    """The validated adapter of a model of `architecture`, as stored JSON (targets filled in).

    InvalidParams names the field (`adapter.rank`, `adapter.targets`, …).
    """
    allowed = LORA_TARGETS.get(architecture)
    if allowed is None:
        raise InvalidParams(
            f"adapter: architecture {architecture} cannot take a LoRA adapter",
            code="invalid_adapter",
            details=[{"field": "adapter", "message": "architecture has no adaptable layers"}],
        )
    try:
        spec = AdapterSpec.model_validate(raw)
    except ValidationError as exc:
        raise InvalidParams.from_validation("adapter", exc) from exc
    targets = list(dict.fromkeys(spec.targets or allowed))
    unknown = [t for t in targets if t not in allowed]
    if unknown:
        message = (
            f"unknown layer(s) {', '.join(map(repr, unknown))} for {architecture}; "
            f"choose among {', '.join(allowed)}"
        )
        raise InvalidParams(
            f"invalid request: adapter.targets: {message}",
            code="invalid_adapter",
            details=[{"field": "adapter.targets", "message": message}],
        )
    return spec.model_copy(update={"targets": targets}).model_dump(mode="json")
