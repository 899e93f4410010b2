"""Training: config, the hook-driven loop, full-state checkpoints and DDP plumbing.

`TrainConfig` is importable without torch (the API validates a training request with it);
everything else loads torch on first use, like `cadenza.models`.

    from cadenza.train import TrainConfig, train
    cfg = TrainConfig.from_preset("music-transformer", "tiny", {"max_steps": 200})
    result = train(spec, {"train": a, "val": b}, cfg, hooks, tokenizer_hash=h)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.train.config import Precision, TrainConfig

if TYPE_CHECKING:
    from cadenza.train.checkpoint import (
        checkpoints_to_prune,
        export_safetensors,
        model_from_checkpoint,
        pack,
        unpack,
    )
    from cadenza.train.distributed import DistInfo, cleanup_distributed, init_distributed
    from cadenza.train.loop import NullHooks, StopReason, TrainHooks, TrainResult, train

_LAZY: dict[str, str] = {
    "pack": "cadenza.train.checkpoint",
    "unpack": "cadenza.train.checkpoint",
    "export_safetensors": "cadenza.train.checkpoint",
    "model_from_checkpoint": "cadenza.train.checkpoint",
    "checkpoints_to_prune": "cadenza.train.checkpoint",
    "DistInfo": "cadenza.train.distributed",
    "init_distributed": "cadenza.train.distributed",
    "cleanup_distributed": "cadenza.train.distributed",
    "NullHooks": "cadenza.train.loop",
    "StopReason": "cadenza.train.loop",
    "TrainHooks": "cadenza.train.loop",
    "TrainResult": "cadenza.train.loop",
    "train": "cadenza.train.loop",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "DistInfo",
    "NullHooks",
    "Precision",
    "StopReason",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "checkpoints_to_prune",
    "cleanup_distributed",
    "export_safetensors",
    "init_distributed",
    "model_from_checkpoint",
    "pack",
    "train",
    "unpack",
]
