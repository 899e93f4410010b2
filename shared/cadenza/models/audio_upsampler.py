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

:func:`cadenza.sample.audio.sample_audio_pair` generates with a coarse prior and one. A model
trained with ``train.audio_prior = "pair"`` (:mod:`cadenza.train.upsampler`) carries one in each
of its checkpoints under :data:`UPSAMPLER_KEY` (:func:`upsampler_entry`), beside the coarse
prior's own weights, so `best` and `latest` are each a whole pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from torch import Tensor, nn

from cadenza.models.configs import GPTConfig
from cadenza.models.gpt import Block
from cadenza.sample.sampler import SamplingParams, sample_next

if TYPE_CHECKING:
    from cadenza.tokenize.audio_vq import AudioVQTokenizer

#: The checkpoint entry of a pair model's upsampler (absent from every other checkpoint).
UPSAMPLER_KEY = "upsampler"


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

        self.arch = {"n_coarse": n_coarse, "n_fine": n_fine, "fine_per_coarse": fine_per_coarse,
                     "window": window, "pad": pad, "n_embd": n_embd, "n_layer": n_layer,
                     "n_head": n_head, "cond_blocks": cond_blocks, "kernel": kernel}  # fmt: skip

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


def upsampler_entry(model: Upsampler) -> dict[str, Any]:
    """The checkpoint entry of ``model``: its constructor's arguments (ints) and its weights
    (CPU tensors), plain containers a weights-only load opens."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"arch": dict(model.arch), "state": state}


def upsampler_from_entry(entry: Mapping[str, Any]) -> Upsampler:
    """The upsampler (eval mode, CPU) of a checkpoint's :data:`UPSAMPLER_KEY` entry."""
    arch = {k: int(v) for k, v in dict(entry["arch"]).items()}
    n_coarse, n_fine, fpc = arch.pop("n_coarse"), arch.pop("n_fine"), arch.pop("fine_per_coarse")
    window, pad = arch.pop("window"), arch.pop("pad")
    model = Upsampler(n_coarse, n_fine, fpc, window, pad, **arch)
    model.load_state_dict(dict(entry["state"]))
    return model.eval()


def coarse_stream(ids: NDArray[np.int64], tok: AudioVQTokenizer) -> NDArray[np.int64]:
    """A flattened corpus stream without its fine ids (and tag ids): specials and coarse ids
    keep their ids, so a coarse prior's vocabulary is the first ``tok.fine_base`` ids."""
    return ids[ids < tok.fine_base]


def file_codes(
    ids: NDArray[np.int64], tok: AudioVQTokenizer
) -> list[tuple[NDArray[np.int64], NDArray[np.int64]]]:
    """(coarse (steps,), fine (steps, fine_per_coarse)) codes of each file of a flattened
    corpus stream (files start at BOS)."""
    starts = np.flatnonzero(ids == tok.bos_id).tolist() + [ids.size]
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    out = []
    for a, b in zip(starts[:-1], starts[1:], strict=True):
        c, f = tok.ids_to_codes(ids[a:b].tolist())
        if c.size:
            out.append((c, f.reshape(c.size, tok.cfg.fine_per_coarse)))
    return out


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


__all__ = [
    "UPSAMPLER_KEY",
    "Upsampler",
    "coarse_stream",
    "coarse_window",
    "file_codes",
    "upsample",
    "upsampler_entry",
    "upsampler_from_entry",
    "upsampler_nll",
    "window_starts",
]
