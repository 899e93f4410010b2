"""Cadenza's token models: GPT, Music Transformer (relative attention), GRU and LSTM.

Importing this package does not import torch: the configs (`configs`), the model presets
(`presets`) and the registry that validates them (`registry`) are torch-free so the API process
can validate a training request. The model classes (`gpt`, `rnn`), the relative-attention kernel
(`relative_attention`), the base class and the checkpoint helpers load torch on first attribute
access. The training presets live in `cadenza.train.presets`; `TRAIN_PRESETS` and
`train_preset` are re-exported here (lazily) for existing callers.

Typical use::

    from cadenza.models import resolve_config, build_model
    cfg = resolve_config("music-transformer", "tiny", {"dropout": 0.1})
    model = build_model("music-transformer", cfg, vocab_size=tokenizer.vocab_size)
    logits, loss = model(idx, targets)                  # (B, T, V), scalar
    groups = model.optim_groups(weight_decay=0.1)       # for torch.optim.AdamW
    ckpt = {"model": model.state_dict(), "model_spec": model.spec(), ...}
    model = model_from_checkpoint(torch.load(path, weights_only=True))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.models.configs import (
    GPTConfig,
    GRUConfig,
    LSTMConfig,
    MusicTransformerConfig,
    RNNConfig,
    TransformerConfig,
)
from cadenza.models.presets import ALIASES, PRESETS
from cadenza.models.registry import ARCHITECTURES, build_model, model_class, resolve_config

if TYPE_CHECKING:
    from cadenza.models.base import IGNORE_INDEX, CadenzaModel
    from cadenza.models.checkpoint import (
        MODEL_SPEC_KEY,
        MODEL_STATE_KEY,
        build_from_spec,
        load_checkpoint,
        model_from_checkpoint,
        model_from_safetensors,
        model_to_safetensors,
    )
    from cadenza.models.gpt import GPT, KVCache, MusicTransformer
    from cadenza.models.relative_attention import relative_logits
    from cadenza.models.rnn import GRULM, LSTMLM, RNNCache
    from cadenza.train.presets import TRAIN_PRESETS, train_preset

_LAZY: dict[str, str] = {
    name: module
    for module, names in {
        "cadenza.models.base": ("CadenzaModel", "IGNORE_INDEX"),
        "cadenza.models.gpt": ("GPT", "MusicTransformer", "KVCache"),
        "cadenza.models.relative_attention": ("relative_logits",),
        "cadenza.models.rnn": ("GRULM", "LSTMLM", "RNNCache"),
        "cadenza.models.checkpoint": (
            "MODEL_SPEC_KEY",
            "MODEL_STATE_KEY",
            "build_from_spec",
            "load_checkpoint",
            "model_from_checkpoint",
            "model_from_safetensors",
            "model_to_safetensors",
        ),
        # Torch-free, but imported on use so this package never imports `cadenza.train` at load.
        "cadenza.train.presets": ("TRAIN_PRESETS", "train_preset"),
    }.items()
    for name in names
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "ALIASES",
    "ARCHITECTURES",
    "GPT",
    "GPTConfig",
    "GRUConfig",
    "GRULM",
    "IGNORE_INDEX",
    "KVCache",
    "LSTMConfig",
    "LSTMLM",
    "MODEL_SPEC_KEY",
    "MODEL_STATE_KEY",
    "MusicTransformer",
    "MusicTransformerConfig",
    "PRESETS",
    "RNNCache",
    "RNNConfig",
    "TRAIN_PRESETS",
    "CadenzaModel",
    "TransformerConfig",
    "build_from_spec",
    "build_model",
    "load_checkpoint",
    "model_from_checkpoint",
    "model_class",
    "model_from_safetensors",
    "model_to_safetensors",
    "relative_logits",
    "resolve_config",
    "train_preset",
]
