"""Architecture name -> (config class, model class); validated configs; `build_model`.

This module imports no torch at module level: the API process validates a user's
`{architecture, preset, config}` with `resolve_config` before it enqueues a training job and
must not pay for torch. The model classes are named by module path and imported only when a
model is built, so the dependency runs one way (the model modules import `configs`, never this
module).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from pydantic import BaseModel

from cadenza.models.configs import GPTConfig, GRUConfig, LSTMConfig, MusicTransformerConfig
from cadenza.models.presets import PRESETS, names

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel


@dataclass(frozen=True)
class Architecture:
    """One registered architecture: the config it validates and the module that implements it."""

    config: type[BaseModel]
    model: str  # "package.module:Class"; imported by `model_class` only (it loads torch)


REGISTRY: dict[str, Architecture] = {
    "gpt": Architecture(GPTConfig, "cadenza.models.gpt:GPT"),
    "music-transformer": Architecture(
        MusicTransformerConfig, "cadenza.models.gpt:MusicTransformer"
    ),
    "gru": Architecture(GRUConfig, "cadenza.models.rnn:GRULM"),
    "lstm": Architecture(LSTMConfig, "cadenza.models.rnn:LSTMLM"),
}
"""Every architecture a model can be trained as; `gpt.py` and `rnn.py` hold the classes."""

ARCHITECTURES: dict[str, type[BaseModel]] = {name: a.config for name, a in REGISTRY.items()}
"""Architecture name -> its config class (the torch-free half of REGISTRY)."""


def _architecture(name: str) -> Architecture:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {names(REGISTRY)}")
    return REGISTRY[name]


def model_class(architecture: str) -> type[CadenzaModel]:
    """The model class of `architecture`, imported now (this imports torch)."""
    module, _, cls = _architecture(architecture).model.partition(":")
    found: type[CadenzaModel] = getattr(importlib.import_module(module), cls)
    return found


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

    `preset` may be a current name or an old alias (both give the same fields). Raises
    ValueError for an unknown architecture or preset (listing the valid ones) or a
    `vocab_size` key, and pydantic's ValidationError (a ValueError) naming any bad field.
    """
    config = _architecture(architecture).config
    overrides = dict(overrides or {})
    if "vocab_size" in overrides:
        raise ValueError(
            "vocab_size is not a model config field: it is set from the corpus tokenizer when "
            "the model is built; remove it from the config"
        )
    fields = {} if preset is None else PRESETS[architecture].fields(architecture, preset)
    fields.update(overrides)
    return config.model_validate(fields)


def build_model(
    architecture: str, config: dict[str, Any] | BaseModel, vocab_size: int
) -> CadenzaModel:
    """Instantiate an untrained model; `vocab_size` always comes from the corpus tokenizer."""
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if isinstance(config, BaseModel):
        expected = _architecture(architecture).config
        if type(config) is not expected:
            raise ValueError(
                f"config for {architecture!r} must be a {expected.__name__}, "
                f"got {type(config).__name__}"
            )
        cfg = config
    else:
        cfg = resolve_config(architecture, None, config)
    return model_class(architecture)(cfg, vocab_size)


__all__ = [
    "ARCHITECTURES",
    "REGISTRY",
    "Architecture",
    "build_model",
    "model_class",
    "resolve_config",
]
