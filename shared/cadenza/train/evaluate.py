"""Scoring a split during training, and the training-loss/throughput window between log rows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from torch import nn

from cadenza.train.config import TrainConfig
from cadenza.train.data import (
    Batcher,
    eval_starts,
    prefixed_starts,
    prefixed_windows,
    windows,
)
from cadenza.train.distributed import DistInfo, all_reduce_sum


def perplexity(loss: float) -> float:
    """exp(loss), saturating at +inf instead of raising OverflowError for a diverged model."""
    if not math.isfinite(loss):
        return float("inf")
    return math.exp(loss) if loss < 700.0 else float("inf")


@torch.no_grad()
def evaluate(
    model: nn.Module,
    arr: np.ndarray,
    cfg: TrainConfig,
    info: DistInfo,
    batcher: Batcher,
    autocast: Callable[[], AbstractContextManager[Any]],
    bos_id: int | None = None,
    cond_slots: int = 0,
) -> float:
    """Mean per-token loss over fixed windows of one split, shared out across ranks. With
    ``cond_slots`` (a tagged audio-vq corpus) the windows are cut as for training, each
    opening with its file's BOS and conditioning prefix, at evenly spaced allowed starts."""
    starts = eval_starts(arr.shape[0], cfg.seq_len, cfg.eval_batches * cfg.batch_size)
    bos = np.zeros(0, np.int64)
    if cond_slots and bos_id is not None:
        high = arr.shape[0] - cfg.seq_len
        bos, allowed = prefixed_starts(arr, bos_id, cond_slots, cfg.window_grid or 1, high)
        if allowed.size:
            pick = np.linspace(0, allowed.size - 1, min(starts.size, allowed.size))
            starts = allowed[np.unique(pick.round().astype(np.int64))]
        else:
            cond_slots = 0  # no window fits: score plain windows rather than none
    mine = starts[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for begin in range(0, mine.shape[0], cfg.batch_size):
        chunk = mine[begin : begin + cfg.batch_size]
        if cond_slots:
            x, y = batcher(prefixed_windows(arr, bos, chunk, cfg.seq_len, cond_slots))
        else:
            x, y = batcher(windows(arr, chunk, cfg.seq_len))
        with autocast():
            _, loss = model(x, y)
        total += float(loss.float().item()) * chunk.shape[0]
        count += chunk.shape[0]
    model.train(was_training)
    total, count = all_reduce_sum([total, count], info, str(batcher.device))
    return total / max(count, 1.0)


class LossWindow:
    """Training loss and tokens/s over the steps since the last log row.

    The loss is summed on the device (`loss_acc`) and read once per log row, so logging every N
    steps costs one GPU sync per N steps. Time spent evaluating or checkpointing (`pause`) is
    left out of the throughput, which measures optimisation steps only.
    """

    def __init__(self, device: torch.device, tokens_per_step: int) -> None:
        self.loss_acc = torch.zeros((), device=device)
        self.device = str(device)
        self.tokens_per_step = tokens_per_step
        self.steps = 0
        self.start = time.perf_counter()
        self.paused = 0.0  # seconds spent in eval/checkpoint inside the current window
        self.train_time = 0.0
        self.tokens = 0  # tokens trained in this call (a resumed run counts from its resume)

    def count_step(self) -> None:
        self.steps += 1
        self.tokens += self.tokens_per_step

    def pause(self, seconds: float) -> None:
        self.paused += seconds

    def close(self, info: DistInfo) -> tuple[float, float]:
        """End the window: (mean loss per step over all ranks, tokens/s), then start a new one.

        The caller emits its row before calling `restart`, so that row's cost is not counted.
        """
        (loss_sum,) = all_reduce_sum([float(self.loss_acc.item())], info, self.device)
        busy = max(1e-9, time.perf_counter() - self.start - self.paused)
        self.train_time += busy
        mean_loss = loss_sum / info.world_size / self.steps
        return mean_loss, self.tokens_per_step * self.steps / busy

    def restart(self) -> None:
        self.loss_acc.zero_()
        self.steps = 0
        self.paused = 0.0
        self.start = time.perf_counter()

    def tokens_per_s(self) -> float:
        """Throughput over the whole call, counting the unfinished window."""
        if self.steps:
            self.train_time += max(1e-9, time.perf_counter() - self.start - self.paused)
            self.steps = 0
        return self.tokens / self.train_time if self.train_time > 0 else 0.0
