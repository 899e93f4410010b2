"""Cadenza's token models: GPT, Music Transformer (relative attention), GRU and LSTM.

Importing this package does not import torch: the registry (configs, presets, validation) is
torch-free so the API process can validate a training request. The model classes, the base
class and the checkpoint helpers load torch on first attribute access.

Typical use::

    from cadenza.models import resolve_config, build_model, TRAIN_PRESETS
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
from cadenza.models.registry import (
    ARCHITECTURES,
    PRESETS,
    TRAIN_PRESETS,
    GPTConfig,
    GRUConfig,
    LSTMConfig,
    MusicTransformerConfig,
    RNNConfig,
    TransformerConfig,
    build_model,
    resolve_config,
    train_preset,
)

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
    from cadenza.models.gpt import GPT, KVCache, MusicTransformer, relative_logits
    from cadenza.models.rnn import GRULM, LSTMLM, RNNCache

_LAZY: dict[str, str] = {
    "CadenzaModel": "cadenza.models.base",
    "IGNORE_INDEX": "cadenza.models.base",
    "GPT": "cadenza.models.gpt",
    "MusicTransformer": "cadenza.models.gpt",
    "KVCache": "cadenza.models.gpt",
    "relative_logits": "cadenza.models.gpt",
    "GRULM": "cadenza.models.rnn",
    "LSTMLM": "cadenza.models.rnn",
    "RNNCache": "cadenza.models.rnn",
    "MODEL_SPEC_KEY": "cadenza.models.checkpoint",
    "MODEL_STATE_KEY": "cadenza.models.checkpoint",
    "build_from_spec": "cadenza.models.checkpoint",
    "load_checkpoint": "cadenza.models.checkpoint",
    "model_from_checkpoint": "cadenza.models.checkpoint",
    "model_from_safetensors": "cadenza.models.checkpoint",
    "model_to_safetensors": "cadenza.models.checkpoint",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
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
    "model_from_safetensors",
    "model_to_safetensors",
    "relative_logits",
    "resolve_config",
    "train_preset",
]
