"""Training: config, the hook-driven loop, full-state checkpoints and DDP plumbing.

`TrainConfig` is importable without torch (the API validates a training request with it);
everything else loads torch on first use, like `cadenza.models`. Rebuilding a trained model for
inference (and the safetensors export) belongs to `cadenza.models.checkpoint`; this package adds
only the training state on top of that format.

    from cadenza.train import TrainConfig, train
    cfg = TrainConfig.from_preset("music-transformer", "tiny", {"max_steps": 200})
    result = train(spec, {"train": a, "val": b}, cfg, hooks, tokenizer_hash=h)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.train.config import Precision, TrainConfig

if TYPE_CHECKING:
    from cadenza.train.checkpoint import checkpoints_to_prune, pack, unpack
    from cadenza.train.distributed import DistInfo, cleanup_distributed, init_distributed
    from cadenza.train.loop import NullHooks, StopReason, TrainHooks, TrainResult, train

_EXPORTS: dict[str, tuple[str, ...]] = {
    "cadenza.train.checkpoint": ("pack", "unpack", "checkpoints_to_prune"),
    "cadenza.train.distributed": ("DistInfo", "init_distributed", "cleanup_distributed"),
    "cadenza.train.loop": ("NullHooks", "StopReason", "TrainHooks", "TrainResult", "train"),
}
_LAZY: dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}


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
    "init_distributed",
    "pack",
    "train",
    "unpack",
]
