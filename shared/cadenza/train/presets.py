"""Training presets: the optimiser and schedule that go with each model preset (no torch).

Same names and old-name aliases as the model presets (`cadenza.models.presets`), so one
`preset` in a request picks both the model shape and how to train it; `TrainConfig.from_preset`
starts from these values.

Keys: lr (peak), batch_size, warmup_steps (linear), max_steps, weight_decay (AdamW, applied only
to the "decay" group of `CadenzaModel.optim_groups`), betas, grad_clip (max global norm, None =
off), min_lr_ratio (cosine floor as a fraction of lr; 1.0 = constant lr), eval_interval (steps).
"""

from __future__ import annotations

from typing import Any

from cadenza.models.presets import ALIASES, Fields, PresetTable, names

# nanoGPT's GPT-2 recipe scaled down: the `small` presets, and the base the others change.
_NANOGPT_TRAIN: Fields = {
    "lr": 6e-4,
    "batch_size": 16,
    "warmup_steps": 500,
    "max_steps": 20_000,
    "weight_decay": 0.1,
    "betas": (0.9, 0.95),
    "grad_clip": 1.0,
    "min_lr_ratio": 0.1,
    "eval_interval": 500,
}
_TINY_TRAIN = dict(
    _NANOGPT_TRAIN, lr=1e-3, warmup_steps=20, max_steps=300, betas=(0.9, 0.99), eval_interval=50
)
# minGPT's trainer (behind `nano` and `vq-prior`): no warmup, and it does not decay the lr.
_MINGPT_TRAIN = dict(
    _NANOGPT_TRAIN, lr=3e-4, batch_size=64, warmup_steps=0, max_steps=5_000, min_lr_ratio=1.0
)
# The Keras chord-duration model trained with Adam(1e-4) for 40 epochs, batch 256: no weight
# decay, Keras' default betas, no clipping, constant lr. Its step count depended on the corpus;
# 20k steps is 40 epochs of ~128k 101-token chunks. (AdamW with weight_decay 0 is Adam.)
_WIDE_RNN_TRAIN = dict(
    _NANOGPT_TRAIN,
    lr=1e-4,
    batch_size=256,
    warmup_steps=0,
    weight_decay=0.0,
    betas=(0.9, 0.999),
    grad_clip=None,
    min_lr_ratio=1.0,
)

TRAIN_PRESETS: dict[str, PresetTable] = {
    "gpt": PresetTable(
        {
            "tiny": dict(_TINY_TRAIN),
            "small": dict(_NANOGPT_TRAIN),
            # minGPT's trainer with the lr and batch that gpt-nano and the VQ-code prior used.
            "nano": dict(_MINGPT_TRAIN, lr=3e-3, batch_size=64),
            "vq-prior": dict(_MINGPT_TRAIN, lr=1e-3, batch_size=128),
        },
        ALIASES["gpt"],
    ),
    "music-transformer": PresetTable(
        {
            "tiny": dict(_TINY_TRAIN),
            "small": dict(_NANOGPT_TRAIN),
            # The Colab relative-attention pipeline ran nanoGPT's recipe for 60k iterations,
            # evaluating every 1000 (it trained in float16).
            "base": dict(_NANOGPT_TRAIN, max_steps=60_000, eval_interval=1000),
        },
        ALIASES["music-transformer"],
    ),
    "gru": PresetTable(
        {"tiny": dict(_TINY_TRAIN, lr=3e-3), "wide": dict(_WIDE_RNN_TRAIN)}, ALIASES["gru"]
    ),
    "lstm": PresetTable(
        {"tiny": dict(_TINY_TRAIN, lr=3e-3), "wide": dict(_WIDE_RNN_TRAIN)}, ALIASES["lstm"]
    ),
}
"""architecture -> preset (or its old name) -> recommended optimiser/schedule for the loop."""


def train_preset(architecture: str, preset: str) -> dict[str, Any]:
    """A copy of TRAIN_PRESETS[architecture][preset], with a helpful error when missing."""
    if architecture not in TRAIN_PRESETS:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of: {names(TRAIN_PRESETS)}"
        )
    return TRAIN_PRESETS[architecture].fields(architecture, preset)


__all__ = ["TRAIN_PRESETS", "train_preset"]
