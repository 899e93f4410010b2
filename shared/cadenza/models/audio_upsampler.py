"""Jukebox's upsampler for audio-vq codes: the fine codes given the coarse codes around them.

The flattened audio-vq stream lets one prior predict each fine code from its own coarse code
and everything before it, never from the coarse codes after it. This model sees those too:
the fine codes of a window of coarse steps are one causal stream (``fine_per_coarse`` per
step), and every position's input adds a vector computed from the coarse codes of the window
and ``pad`` steps beyond each side: embedded, a non-causal stack of residual convolutions over
steps, repeated ×``fine_per_coarse`` with a learned vector per phase (Jukebox's conditioner).
Paired with a prior over the coarse codes alone it described the benchmark's validation audio
in 6 % fewer bits than one flattened prior of the same size (BENCHMARKS.md, "One flattened
prior, or a coarse prior + an upsampler"; ``bench/audio_prior.py`` trains and scores it).

:func:`cadenza.sample.audio.sample_audio_pair` generates with a coarse prior and one. Not wired
into training or the jobs yet: nothing in them builds one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from cadenza.models.configs import GPTConfig
from cadenza.models.gpt import Block
from cadenza.sample.sampler import SamplingParams, sample_next


class _ResConv(nn.Module):
    """x + conv(gelu(conv(gelu(x)))): a non-causal residual block over coarse steps."""

    def __init__(self, dim: int, kernel: int) -> None:
        super().__init__()
        self.a = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.b = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.b(F.gelu(self.a(F.gelu(x))))
        return out


class Upsampler(nn.Module):
    """p(fine codes of ``window`` steps | the coarse codes of the window and ``pad`` steps on
    each side). Position ``j``'s input is the previous fine code's embedding (a learned start
    vector at 0) plus its position's and the conditioner's vector of its step and phase; the
    head is tied to the fine embedding."""

    def __init__(
        self,
        n_coarse: int,
        n_fine: int,
        fine_per_coarse: int,
        window: int,
        pad: int,
        *,
        n_embd: int,
        n_layer: int,
        n_head: int,
        cond_blocks: int,
        kernel: int = 3,
    ) -> None:
        super().__init__()
        self.n_coarse, self.fpc, self.window, self.pad = n_coarse, fine_per_coarse, window, pad
        self.c_emb = nn.Embedding(n_coarse + 1, n_embd)  # the last: a step outside the file
        self.cond = nn.Sequential(*[_ResConv(n_embd, kernel) for _ in range(cond_blocks)])
        self.phase = nn.Parameter(torch.zeros(fine_per_coarse, n_embd))
        self.f_emb = nn.Embedding(n_fine, n_embd)
        self.start = nn.Parameter(torch.zeros(n_embd))
        self.pos = nn.Embedding(window * fine_per_coarse, n_embd)
        cfg = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                        block_size=window * fine_per_coarse, dropout=0.0, bias=True)  # fmt: skip
        self.h = nn.ModuleList([Block(cfg, False, True) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def conditioning(self, coarse: Tensor) -> Tensor:
        """coarse (B, window + 2·pad) codes (``n_coarse`` outside the file) → (B, window·fpc, C)."""
        x = self.cond(self.c_emb(coarse).transpose(1, 2)).transpose(1, 2)
        x = x[:, self.pad : x.shape[1] - self.pad]
        x = x.repeat_interleave(self.fpc, dim=1)
        return x + self.phase.repeat(x.shape[1] // self.fpc, 1)

    def forward(self, fine: Tensor, cond: Tensor) -> Tensor:
        """fine (B, T): the window's fine codes (each position's input is the code before it);
        cond from :meth:`conditioning` → logits (B, T, n_fine) of fine[:, 0..T-1]."""
        B, T = fine.shape
        prev = torch.cat([self.start.expand(B, 1, -1), self.f_emb(fine[:, :-1])], dim=1)
        x = prev + self.pos(torch.arange(T, device=fine.device)) + cond[:, :T]
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.f_emb.weight)


def coarse_window(
    coarse: NDArray[np.int64], start: int, window: int, pad: int, outside: int
) -> NDArray[np.int64]:
    """Coarse codes of steps ``start - pad .. start + window + pad - 1``, ``outside`` beyond
    the file."""
    out = np.full(window + 2 * pad, outside, np.int64)
    lo, hi = max(0, start - pad), min(coarse.size, start + window + pad)
    out[lo - (start - pad) : hi - (start - pad)] = coarse[lo:hi]
    return out


def window_starts(length: int, span: int, stride: int, off: int) -> list[tuple[int, int]]:
    """(window start, first target scored in it) covering targets ``off .. length - 1``, where
    a window starting at ``s`` predicts targets ``s + off .. s + off + span - 1``: the first
    window at 0, the next ones at ``off + k·stride`` (for an id stream, ``off`` = 1: on a
    step's start after BOS, as training windows start), each target scored in the first window
    that holds it after the previous window's targets (so with at least ``span - stride``
    before it once past the first window)."""
    out: list[tuple[int, int]] = []
    done, k = off, 0
    while done < length:
        s = off + k * stride if k else 0
        end = min(length, s + off + span)
        if end > done:
            out.append((s, done))
            done = end
        k += 1
    return out


@torch.no_grad()
def upsampler_nll(
    model: Upsampler, coarse: NDArray[np.int64], fine: NDArray[np.int64]
) -> NDArray[np.float64]:
    """NLL (nats) of each fine code of a file ((steps, fpc) codes) given all its coarse codes,
    scored in windows every half window (:func:`window_starts`)."""
    w, fpc = model.window, model.fpc
    nll = np.zeros(coarse.size * fpc)
    for s, first in window_starts(coarse.size, w, max(1, w // 2), 0):
        f = torch.from_numpy(fine[s : s + w].reshape(-1))[None]
        cond = model.conditioning(
            torch.from_numpy(coarse_window(coarse, s, w, model.pad, model.n_coarse))[None]
        )
        lp = torch.log_softmax(model(f, cond)[0], -1)
        got = -lp[torch.arange(f.shape[1]), f[0]].numpy()
        nll[first * fpc : (s + w) * fpc] = got[(first - s) * fpc :]
    return nll


@torch.no_grad()
def upsample(
    model: Upsampler,
    coarse: NDArray[np.int64],
    fine_known: NDArray[np.int64],
    params: SamplingParams,
) -> NDArray[np.int64]:
    """Fine codes (steps, fpc) for every step of ``coarse``: the first ``len(fine_known)``
    steps as given, the rest sampled window by window, each window keeping the last half
    window of steps before it as context and seeing the coarse codes of all of it and beyond.
    Seeded by ``params.seed`` (None: a fresh seed)."""
    w, fpc = model.window, model.fpc
    gen = torch.Generator()
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)
    fine = [int(x) for x in fine_known.reshape(-1)]
    while len(fine) < coarse.size * fpc:
        s = max(0, len(fine) // fpc - w // 2)
        cond = model.conditioning(
            torch.from_numpy(coarse_window(coarse, s, w, model.pad, model.n_coarse))[None]
        )
        while len(fine) < min(coarse.size, s + w) * fpc:
            ctx = torch.tensor(fine[s * fpc :] + [0], dtype=torch.long)[None]
            logits = model(ctx, cond)[:, -1]
            fine.append(int(sample_next(logits, params, None, gen)[0]))
    return np.asarray(fine, np.int64).reshape(coarse.size, fpc)


__all__ = ["Upsampler", "coarse_window", "upsample", "upsampler_nll", "window_starts"]
