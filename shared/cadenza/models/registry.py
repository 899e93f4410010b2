"""Architectures, their validated configs, presets, and `build_model`.

This module imports no torch at module level: the API process validates a user's
`{architecture, preset, config}` before it enqueues a training job, and DESIGN.md keeps heavy
imports out of that process. Only `build_model` imports the model classes, lazily.

Vocabulary size is never part of a config: it comes from the corpus tokenizer when the model is
built, so a config cannot disagree with the data (earlier system A hard-coded 258 while its REMI
vocabulary had 276-279 tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel


# ----------------------------------------------------------------------------- configs


class TransformerConfig(BaseModel):
    """Decoder-only transformer shape; shared by `gpt` and `music-transformer`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_layer: int = Field(6, ge=1, le=64, description="number of transformer blocks")
    n_head: int = Field(8, ge=1, le=64, description="attention heads per block")
    n_embd: int = Field(256, ge=8, le=8192, description="model width; divisible by n_head")
    block_size: int = Field(1024, ge=2, le=65536, description="longest context the model sees")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout on attention and residuals")
    bias: bool = Field(True, description="biases in Linear and LayerNorm (nanoGPT option)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TransformerConfig:
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}); "
                "change one of the two"
            )
        return self


class GPTConfig(TransformerConfig):
    """nanoGPT: learned absolute positions, so it never sees a position >= block_size."""


class MusicTransformerConfig(TransformerConfig):
    """Music Transformer: relative attention instead of absolute positions."""

    rel_shared_heads: bool = Field(
        True,
        description="one relative table per layer shared by all heads (earlier system A) "
        "instead of one per head",
    )


class RNNConfig(BaseModel):
    """Embedding -> LayerNorm -> GRU/LSTM -> LayerNorm -> Linear (earlier system C)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embed_dim: int = Field(256, ge=1, le=8192, description="token embedding width")
    hidden_size: int = Field(1024, ge=1, le=16384, description="recurrent state width")
    num_layers: int = Field(1, ge=1, le=16, description="stacked recurrent layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout between recurrent layers")


class GRUConfig(RNNConfig):
    """GRU language model."""


class LSTMConfig(RNNConfig):
    """LSTM language model."""


ARCHITECTURES: dict[str, type[BaseModel]] = {
    "gpt": GPTConfig,
    "music-transformer": MusicTransformerConfig,
    "gru": GRUConfig,
    "lstm": LSTMConfig,
}
"""Architecture name -> its config class. The model classes are looked up in `build_model`."""


# ----------------------------------------------------------------------------- presets

_TINY_TRANSFORMER: dict[str, Any] = {
    # Trains in about a minute on 2 CPU cores; used by tests, `make demo` and CI.
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 64,
    "block_size": 128,
    "dropout": 0.0,
}
_TINY_RNN: dict[str, Any] = {"embed_dim": 64, "hidden_size": 128, "num_layers": 1, "dropout": 0.0}
_KERAS_CHORD: dict[str, Any] = {
    # Earlier system C: Embedding(312, 256) -> LayerNorm -> GRU/LSTM(1024) -> LayerNorm -> Dense.
    "embed_dim": 256,
    "hidden_size": 1024,
    "num_layers": 1,
    "dropout": 0.0,
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt": {
        "tiny": dict(_TINY_TRANSFORMER),
        "small": {"n_layer": 6, "n_head": 8, "n_embd": 256, "block_size": 1024, "dropout": 0.1},
        # Earlier system B: minGPT "gpt-nano" over 32-id SentencePiece sequences.
        "mingpt-nano": {"n_layer": 3, "n_head": 3, "n_embd": 48, "block_size": 32, "dropout": 0.1},
        # Earlier system E: the minGPT prior over 16 VQ-VAE codes, windows of 192 codes.
        "bachsformer-prior": {
            "n_layer": 4,
            "n_head": 8,
            "n_embd": 128,
            "block_size": 191,
            "dropout": 0.1,
        },
    },
    "music-transformer": {
        "tiny": dict(_TINY_TRANSFORMER),
        "small": {"n_layer": 6, "n_head": 8, "n_embd": 256, "block_size": 1024, "dropout": 0.1},
        # Earlier system A (Colab nanoGPT + relative attention over MidiTok REMI).
        "colab-remi": {
            "n_layer": 12,
            "n_head": 12,
            "n_embd": 360,
            "block_size": 1024,
            "dropout": 0.0,
            "rel_shared_heads": True,
        },
    },
    "gru": {"tiny": dict(_TINY_RNN), "keras-chord": dict(_KERAS_CHORD)},
    "lstm": {"tiny": dict(_TINY_RNN), "keras-chord": dict(_KERAS_CHORD)},
}
"""architecture -> preset name -> config fields. A preset is a starting point; overrides win."""


def _train(
    *,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    max_steps: int,
    weight_decay: float,
    betas: tuple[float, float],
    grad_clip: float | None,
    min_lr_ratio: float,
    eval_interval: int,
) -> dict[str, Any]:
    """One TRAIN_PRESETS entry; keyword-only so every preset spells out every field."""
    return {
        "lr": lr,
        "batch_size": batch_size,
        "warmup_steps": warmup_steps,
        "max_steps": max_steps,
        "weight_decay": weight_decay,
        "betas": betas,
        "grad_clip": grad_clip,
        "min_lr_ratio": min_lr_ratio,
        "eval_interval": eval_interval,
    }


_TINY_TRAIN = _train(
    lr=1e-3,
    batch_size=16,
    warmup_steps=20,
    max_steps=300,
    weight_decay=0.1,
    betas=(0.9, 0.99),
    grad_clip=1.0,
    min_lr_ratio=0.1,
    eval_interval=50,
)
# Earlier system C trained with Keras Adam(1e-4) for 40 epochs, batch 256: no weight decay, Keras
# default betas, no clipping, constant lr. Its step count depended on the corpus; 20k steps is
# 40 epochs of ~128k 101-token chunks. (AdamW with weight_decay 0 is Adam.)
_KERAS_CHORD_TRAIN = _train(
    lr=1e-4,
    batch_size=256,
    warmup_steps=0,
    max_steps=20_000,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    grad_clip=None,
    min_lr_ratio=1.0,
    eval_interval=500,
)

# nanoGPT's GPT-2 recipe scaled down: shared by the `small` gpt and music-transformer presets.
_SMALL_TRAIN = _train(
    lr=6e-4,
    batch_size=16,
    warmup_steps=500,
    max_steps=20_000,
    weight_decay=0.1,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    min_lr_ratio=0.1,
    eval_interval=500,
)

# minGPT's trainer (systems B and E): no warmup, and it does not decay the lr.
_MINGPT_TRAIN = _train(
    lr=3e-4,
    batch_size=64,
    warmup_steps=0,
    max_steps=5_000,
    weight_decay=0.1,
    betas=(0.9, 0.95),
    grad_clip=1.0,
    min_lr_ratio=1.0,
    eval_interval=500,
)

TRAIN_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "gpt": {
        "tiny": dict(_TINY_TRAIN),
        "small": dict(_SMALL_TRAIN),
        # minGPT trainer defaults with system B's lr and batch, and system E's.
        "mingpt-nano": dict(_MINGPT_TRAIN, lr=3e-3, batch_size=64),
        "bachsformer-prior": dict(_MINGPT_TRAIN, lr=1e-3, batch_size=128),
    },
    "music-transformer": {
        "tiny": dict(_TINY_TRAIN),
        "small": dict(_SMALL_TRAIN),
        # System A: lr 6e-4, batch 16, 60k iters, warmup 500, eval every 1000, AdamW wd 0.1,
        # betas (0.9, 0.95), clip 1.0, cosine decay to lr/10 (it trained in float16).
        "colab-remi": _train(
            lr=6e-4,
            batch_size=16,
            warmup_steps=500,
            max_steps=60_000,
            weight_decay=0.1,
            betas=(0.9, 0.95),
            grad_clip=1.0,
            min_lr_ratio=0.1,
            eval_interval=1000,
        ),
    },
    "gru": {"tiny": dict(_TINY_TRAIN, lr=3e-3), "keras-chord": dict(_KERAS_CHORD_TRAIN)},
    "lstm": {"tiny": dict(_TINY_TRAIN, lr=3e-3), "keras-chord": dict(_KERAS_CHORD_TRAIN)},
}
"""architecture -> preset -> recommended optimiser/schedule for the training loop.

Keys: lr (peak), batch_size, warmup_steps (linear), max_steps, weight_decay (AdamW, applied only
to the "decay" group of `CadenzaModel.optim_groups`), betas, grad_clip (max global norm, None =
off), min_lr_ratio (cosine floor as a fraction of lr; 1.0 = constant lr), eval_interval (steps).
"""


# ----------------------------------------------------------------------------- resolution


def _names(keys: Any) -> str:
    return ", ".join(sorted(keys))


@overload
def resolve_config(
    architecture: Literal["gpt"], preset: str | None = ..., overrides: dict[str, Any] | None = ...
) -> GPTConfig: ...
@overload
def resolve_config(
    architecture: Literal["music-transformer"],
    preset: str | None = ...,
    overrides: dict[str, Any] | None = ...,
) -> MusicTransformerConfig: ...
@overload
def resolve_config(
    architecture: Literal["gru"], preset: str | None = ..., overrides: dict[str, Any] | None = ...
) -> GRUConfig: ...
@overload
def resolve_config(
    architecture: Literal["lstm"], preset: str | None = ..., overrides: dict[str, Any] | None = ...
) -> LSTMConfig: ...
@overload
def resolve_config(
    architecture: str, preset: str | None = ..., overrides: dict[str, Any] | None = ...
) -> BaseModel: ...
def resolve_config(
    architecture: str, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> BaseModel:
    """Validate preset + overrides for `architecture` into its frozen config model.

    Raises ValueError for an unknown architecture or preset (listing the valid ones) or a
    `vocab_size` key, and pydantic's ValidationError (a ValueError) naming any bad field.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of: {_names(ARCHITECTURES)}"
        )
    overrides = dict(overrides or {})
    if "vocab_size" in overrides:
        raise ValueError(
            "vocab_size is not a model config field: it is set from the corpus tokenizer when "
            "the model is built; remove it from the config"
        )
    fields: dict[str, Any] = {}
    if preset is not None:
        presets = PRESETS[architecture]
        if preset not in presets:
            raise ValueError(
                f"unknown preset {preset!r} for {architecture!r}; choose one of: {_names(presets)}"
            )
        fields.update(presets[preset])
    fields.update(overrides)
    return ARCHITECTURES[architecture].model_validate(fields)


def train_preset(architecture: str, preset: str) -> dict[str, Any]:
    """A copy of TRAIN_PRESETS[architecture][preset], with a helpful error when missing."""
    if architecture not in TRAIN_PRESETS:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of: {_names(TRAIN_PRESETS)}"
        )
    presets = TRAIN_PRESETS[architecture]
    if preset not in presets:
        raise ValueError(
            f"unknown preset {preset!r} for {architecture!r}; choose one of: {_names(presets)}"
        )
    return dict(presets[preset])


def build_model(
    architecture: str, config: dict[str, Any] | BaseModel, vocab_size: int
) -> CadenzaModel:
    """Instantiate an untrained model; `vocab_size` always comes from the corpus tokenizer."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if isinstance(config, BaseModel):
        expected = ARCHITECTURES.get(architecture)
        if expected is None:
            raise ValueError(
                f"unknown architecture {architecture!r}; choose one of: {_names(ARCHITECTURES)}"
            )
        if type(config) is not expected:
            raise ValueError(
                f"config for {architecture!r} must be a {expected.__name__}, "
                f"got {type(config).__name__}"
            )
        cfg = config
    else:
        cfg = resolve_config(architecture, None, config)

    # Imported here so that validating configs never imports torch.
    from cadenza.models.gpt import GPT, MusicTransformer
    from cadenza.models.rnn import GRULM, LSTMLM

    classes: dict[str, Any] = {
        "gpt": GPT,
        "music-transformer": MusicTransformer,
        "gru": GRULM,
        "lstm": LSTMLM,
    }
    model: CadenzaModel = classes[architecture](cfg, vocab_size)
    return model
