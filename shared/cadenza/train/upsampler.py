"""Training a pair model's upsampler: the second phase of a ``train.audio_prior = "pair"`` job.

The `train` job first trains the coarse prior with the ordinary trainer on the coarse-only
stream (any architecture), then :func:`train_upsampler` fits
:class:`cadenza.models.audio_upsampler.Upsampler` on the training split's codes with the
trainer's optimiser settings (AdamW, its lr schedule, betas, decay on matrices, clipping),
keeping the weights of its lowest validation NLL as the trainer keeps its best checkpoint.
This is the loop ``bench/audio_prior.py`` measured (BENCHMARKS.md, "One flattened prior, or a
coarse prior + an upsampler").

The phase holds no resumable state of its own: the upsampler is small and trains in a
fraction of the coarse prior's time, so a job interrupted during it (or resumed after it)
retrains the upsampler from scratch and writes it into the checkpoints again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor

from cadenza.models.audio_upsampler import Upsampler, coarse_window, upsampler_nll
from cadenza.train.config import TrainConfig

Codes = Sequence[tuple[NDArray[np.int64], NDArray[np.int64]]]

#: Coarse steps the conditioner sees beyond each side of a window, its residual blocks and the
#: attention heads: bench/audio_prior.py's measured defaults.
COND_PAD, COND_BLOCKS, N_HEAD = 4, 1, 2


def build_upsampler(
    cfg: TrainConfig, *, n_coarse: int, n_fine: int, fine_per_coarse: int, width: int
) -> Upsampler:
    """The upsampler a pair model's training config asks for: windows of
    ``seq_len // fine_per_coarse`` steps (so its stream is as long as the prior's windows),
    ``cfg.upsampler_width`` wide (else ``width``, the coarse prior's) with
    ``cfg.upsampler_layers`` layers."""
    w = cfg.upsampler_width or width
    w += w % N_HEAD  # the heads split the width evenly
    return Upsampler(n_coarse, n_fine, fine_per_coarse, max(1, cfg.seq_len // fine_per_coarse),
                     COND_PAD, n_embd=w, n_layer=cfg.upsampler_layers, n_head=N_HEAD,
                     cond_blocks=COND_BLOCKS)  # fmt: skip


def val_nll(model: Upsampler, files: Codes, max_steps: int) -> float:
    """Mean NLL (nats per fine code) of the first ``max_steps`` coarse steps of ``files``
    (the trainer's evaluation is bounded alike: ``eval_batches`` × ``batch_size`` windows)."""
    total, count, left = 0.0, 0, max_steps
    for c, f in files:
        if left <= 0:
            break
        c, f = c[:left], f[:left]
        left -= c.size
        total += float(upsampler_nll(model, c, f).sum())
        count += f.size
    return total / max(count, 1)


def train_upsampler(
    model: Upsampler,
    files: Codes,
    cfg: TrainConfig,
    score: Callable[[], float] | None = None,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[int, float | None], None] | None = None,
) -> tuple[float, int, bool]:
    """``cfg.max_steps`` optimiser steps on batches of ``cfg.batch_size`` random windows of
    ``files``. With ``score`` (validation NLL), it is called every ``cfg.eval_interval`` steps
    and at the end, and the weights of the lowest score are kept. ``should_stop`` is asked
    after each step (true: stop there, keeping the best so far, else the current weights);
    ``on_progress(step, score)`` hears of every evaluation. Returns (the kept weights' score
    or NaN without ``score``, the kept step, whether it was stopped)."""
    if not files:
        raise ValueError("the upsampler needs training audio: the training split has no codes")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    w, pad, outside = model.window, model.pad, model.n_coarse
    starts = [(i, s) for i, (c, _) in enumerate(files) for s in range(max(1, c.size - w + 1))]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "emb" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "emb" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    best: tuple[float, int, dict[str, Tensor] | None] = (math.inf, cfg.max_steps, None)
    model.train()
    stopped, done = False, 0
    for step in range(cfg.max_steps):
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        picks = rng.integers(len(starts), size=cfg.batch_size)
        fine, cond = [], []
        for k in picks:
            i, s = starts[int(k)]
            c, f = files[i]
            fine.append(f[s : s + w].reshape(-1))
            cond.append(coarse_window(c, s, w, pad, outside))
        n = min(x.size for x in fine)
        y = torch.from_numpy(np.stack([x[:n] for x in fine]))
        logits = model(y, model.conditioning(torch.from_numpy(np.stack(cond))))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        done = step + 1
        stopped = should_stop is not None and should_stop()
        if score is not None and (done % cfg.eval_interval == 0 or done == cfg.max_steps):
            model.eval()
            got = score()
            model.train()
            if got < best[0]:
                best = (got, done, {k: v.clone() for k, v in model.state_dict().items()})
            if on_progress is not None:
                on_progress(done, got)
        if stopped:
            break
    model.eval()
    if best[2] is not None:
        model.load_state_dict(best[2])
        return best[0], best[1], stopped
    return math.nan, done, stopped


__all__ = ["build_upsampler", "train_upsampler", "val_nll"]
