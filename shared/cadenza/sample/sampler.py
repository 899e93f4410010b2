"""Autoregressive sampling with a KV cache, N variations as one batch, unbounded length.

`generate` reads the prompt once (prefill) and then one token per step through
`CadenzaModel.forward_step`, so a step costs one position of compute whatever the context
length. Without a cache a sampler recomputes the whole context every step (as nanoGPT's and
minGPT's `generate` do); `generate_uncached` does that, for tests and the benchmark.

Long-form: a transformer only sees `block_size` positions. When the context would exceed it,
the window restarts at the last `window_keep` tokens (new token included; default half a block):
`crop_cache` re-encodes those once, and decoding continues. Every generated token therefore
sees between `window_keep` and `block_size` tokens of context, is output exactly once (no seams,
no repeated windows), and its logits equal a full forward pass over its window.

Reproducibility: all randomness comes from one `torch.Generator` seeded with `params.seed`, and
the random draws do not depend on caching, so cached and recompute sampling with the same seed
give the same tokens (up to float rounding of the logits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cadenza.models.base import CadenzaModel

OnToken = Callable[[int, list[list[int]]], bool | None]
"""on_token(step, tokens): step = new tokens so far (1-based), tokens = the new tokens of every
row so far (live lists: read, do not mutate). Return True to stop early (cancel)."""


@dataclass
class SamplingParams:
    """How to turn logits into tokens. Defaults sample the model's distribution unchanged."""

    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int | None = None  # keep the k most likely tokens
    top_p: float | None = None  # keep the smallest set whose probability reaches p
    min_p: float | None = None  # drop tokens less likely than min_p x the most likely one
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in the recent window (CTRL)
    repetition_window: int = 64  # how many recent context tokens the penalty looks at
    max_new_tokens: int = 256
    seed: int | None = None  # None = a fresh random seed
    eos_id: int | None = None
    stop_at_eos: bool = True  # a row ends at eos_id (which is kept as its last token)
    window_keep: int | None = None  # tokens kept when sliding past block_size; None = half

    def __post_init__(self) -> None:
        # The shared fields are checked by the API's own model, so the sampler accepts exactly
        # what a request may say (temperature 0 = greedy; min_p 0 = off).
        from cadenza.sample.params import SamplingOptions

        shared = {name: getattr(self, name) for name in _SHARED_FIELDS}
        try:
            checked = SamplingOptions.model_validate(shared)
        except ValueError as exc:
            raise ValueError(f"invalid sampling parameters: {exc}") from exc
        self.min_p = checked.min_p
        checks: list[tuple[str, bool, str]] = [
            ("eos_id", self.eos_id is None or self.eos_id >= 0, ">= 0 or None"),
            ("window_keep", self.window_keep is None or self.window_keep >= 1, ">= 1 or None"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")


_SHARED_FIELDS = (
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "repetition_penalty",
    "repetition_window",
    "max_new_tokens",
    "seed",
    "stop_at_eos",
)


# ----------------------------------------------------------------------------- logit filters
# Pure functions on logits (B, V); each returns a new tensor with removed tokens at -inf.


def apply_repetition_penalty(logits: Tensor, history: Tensor, penalty: float) -> Tensor:
    """CTRL penalty: for tokens in history (B, W) (ids < 0 ignored), divide positive logits by
    `penalty` and multiply negative ones, so a seen token always becomes less likely."""
    if penalty == 1.0 or history.numel() == 0:
        return logits
    valid = history >= 0
    counts = torch.zeros_like(logits, dtype=torch.int32)
    counts.scatter_add_(1, history.clamp(min=0), valid.to(torch.int32))
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(counts > 0, penalised, logits)


def apply_top_k(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits per row (ties with the k-th are kept too)."""
    if k is None or k >= logits.size(-1):
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus: keep the smallest set of most likely tokens whose total probability is >= p.

    A token is dropped when the tokens ranked above it already reach p; the most likely token
    is always kept.
    """
    if p is None or p >= 1.0:
        return logits
    if p <= 0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # probability of the better-ranked tokens
    drop_sorted = mass_before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def apply_min_p(logits: Tensor, min_p: float | None) -> Tensor:
    """Drop tokens whose probability is below min_p times the row's highest probability."""
    if min_p is None:
        return logits
    if not 0 < min_p <= 1:
        raise ValueError(f"min_p must be in (0, 1], got {min_p}")
    # p_i < min_p * p_max  <=>  logit_i < logit_max + log(min_p)  (softmax-free, exact in logs)
    threshold = logits.max(dim=-1, keepdim=True).values + math.log(min_p)
    return logits.masked_fill(logits < threshold, float("-inf"))


def filter_logits(logits: Tensor, params: SamplingParams, history: Tensor | None) -> Tensor:
    """Repetition penalty, temperature, top-k, top-p, min-p, in that order (as in HF)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # filters and softmax in at least float32
    if history is not None:
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    if params.temperature > 0:
        logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


def sample_next(
    logits: Tensor, params: SamplingParams, history: Tensor | None, generator: torch.Generator
) -> Tensor:
    """logits (B, V) of the newest position -> next token ids (B,)."""
    logits = filter_logits(logits, params, history)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).view(-1)


# ----------------------------------------------------------------------------- steppers


class _Stepper(Protocol):
    """Produces next-token logits (B, V): once for the prompt, then once per new token."""

    def prefill(self, idx: Tensor, pad: Tensor | None) -> Tensor: ...

    def step(self, token: Tensor) -> Tensor: ...


def _window_keep(model: CadenzaModel, params: SamplingParams) -> int:
    block = model.block_size
    if block is None:
        return 0  # unbounded context: never slides
    keep = params.window_keep if params.window_keep is not None else max(1, block // 2)
    if keep > block:
        raise ValueError(f"window_keep ({keep}) cannot exceed the model's block_size ({block})")
    return keep


class _CachedStepper:
    """KV-cache / hidden-state decoding; slides by `crop_cache` when the block is full."""

    def __init__(self, model: CadenzaModel, batch: int, device: torch.device, keep: int) -> None:
        self.model, self.keep = model, keep
        self.cache = model.init_cache(batch, device)

    def prefill(self, idx: Tensor, pad: Tensor | None) -> Tensor:
        block = self.model.block_size
        if block is not None and idx.size(1) > block:  # the window restarts at the last keep
            idx = idx[:, -self.keep :]
            pad = pad[:, -self.keep :] if pad is not None else None
        return self.model.forward_step(idx, self.cache, pad_mask=pad)[:, -1]  # (B, V)

    def step(self, token: Tensor) -> Tensor:
        block = self.model.block_size
        if block is not None and self.model.cache_len(self.cache) + 1 > block:
            self.model.crop_cache(self.cache, self.keep - 1)  # + the new token = keep
        return self.model.forward_step(token, self.cache)[:, -1]  # (B, V)


class _RecomputeStepper:
    """Full forward over the context window at every step (no KV cache).

    keep=None slides the window by one token per step (the last block_size tokens, as nanoGPT's
    `generate` does); an int follows `_CachedStepper`'s policy exactly, for equivalence tests.
    """

    def __init__(self, model: CadenzaModel, keep: int | None) -> None:
        self.model, self.keep = model, keep
        self.start = 0
        self.ctx = torch.empty(0, 0, dtype=torch.long)
        self.pad: Tensor | None = None

    def prefill(self, idx: Tensor, pad: Tensor | None) -> Tensor:
        self.ctx, self.pad = idx, pad
        return self._logits()

    def step(self, token: Tensor) -> Tensor:
        self.ctx = torch.cat([self.ctx, token], dim=1)
        if self.pad is not None:
            self.pad = F.pad(self.pad, (0, 1), value=False)
        return self._logits()

    def _logits(self) -> Tensor:
        T, block = self.ctx.size(1), self.model.block_size
        if block is not None and T - self.start > block:
            self.start = T - (block if self.keep is None else self.keep)
        window = self.ctx[:, self.start :]
        pad = self.pad[:, self.start :] if self.pad is not None else None
        if pad is None or not bool(pad.any()):
            logits, _ = self.model(window)
        else:  # forward() has no padding mask; a prefill into a fresh cache is the same pass
            cache = self.model.init_cache(window.size(0), window.device)
            logits = self.model.forward_step(window, cache, pad_mask=pad)
        return logits[:, -1]  # (B, V)


# ----------------------------------------------------------------------------- driver


def _left_pad(rows: list[list[int]], device: torch.device) -> tuple[Tensor, Tensor | None]:
    """rows of different lengths -> idx (B, P) right-aligned, pad (B, P) or None if none."""
    P = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), P, dtype=torch.long)
    pad = torch.ones(len(rows), P, dtype=torch.bool)
    for b, r in enumerate(rows):
        idx[b, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        pad[b, P - len(r) :] = False
    return idx.to(device), (pad.to(device) if bool(pad.any()) else None)


def _check_inputs(model: CadenzaModel, prompts: list[list[int]], n: int) -> None:
    if n < 1:
        raise ValueError(f"n (variations per prompt) must be >= 1, got {n}")
    if not prompts:
        raise ValueError("prompts is empty; pass at least one prompt (e.g. [[bos_id]])")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; start from at least one token (e.g. BOS)")
        bad = [t for t in p if not 0 <= t < model.vocab_size]
        if bad:
            raise ValueError(
                f"prompt {i} has ids outside the vocabulary [0, {model.vocab_size}): {bad[:5]}"
            )


def _run(
    model: CadenzaModel,
    make_stepper: Callable[[int, torch.device], _Stepper],
    prompts: list[list[int]],
    params: SamplingParams,
    n: int,
    on_token: OnToken | None,
    device: torch.device | str | None,
) -> list[list[int]]:
    """Shared sampling loop; only how logits are obtained differs between the samplers."""
    _check_inputs(model, prompts, n)
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    rows = [list(p) for p in prompts for _ in range(n)]  # prompt-major: p0 x n, p1 x n, ...
    B = len(rows)
    idx, pad = _left_pad(rows, dev)  # (B, P)

    gen = torch.Generator(device=dev)
    if params.seed is None:
        gen.seed()
    else:
        gen.manual_seed(params.seed)

    history: Tensor | None = None  # (B, W) recent context ids, -1 = nothing
    if params.repetition_penalty != 1.0:
        recent = idx if pad is None else idx.masked_fill(pad, -1)
        W = params.repetition_window
        history = F.pad(recent, (W, 0), value=-1)[:, -W:]

    out: list[list[int]] = [[] for _ in range(B)]
    finished = [False] * B
    stop_id = params.eos_id if params.stop_at_eos else None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            stepper = make_stepper(B, dev)
            logits = stepper.prefill(idx, pad)  # (B, V)
            for step in range(1, params.max_new_tokens + 1):
                token = sample_next(logits, params, history, gen)  # (B,)
                if history is not None:
                    history = torch.cat([history[:, 1:], token.view(B, 1)], dim=1)
                for b, t in enumerate(token.tolist()):
                    if not finished[b]:
                        out[b].append(t)
                        finished[b] = t == stop_id
                cancel = on_token is not None and bool(on_token(step, out))
                if cancel or all(finished) or step == params.max_new_tokens:
                    break
                logits = stepper.step(token.view(B, 1))
    finally:
        model.train(was_training)
    return out


def generate(
    model: CadenzaModel,
    prompts: list[list[int]],
    params: SamplingParams | None = None,
    *,
    n: int = 1,
    on_token: OnToken | None = None,
    device: torch.device | str | None = None,
) -> list[list[int]]:
    """Sample n continuations of every prompt as one batch with the model's cache.

    Returns the new tokens of each variation, prompt-major (prompt 0's n variations first).
    Prompts may differ in length (left-padded and masked). A row that hits `eos_id` ends there
    (eos included). `device` is where the model lives (default: its parameters' device).
    """
    params = params or SamplingParams()
    keep = _window_keep(model, params)

    def make(batch: int, dev: torch.device) -> _Stepper:
        return _CachedStepper(model, batch, dev, keep)

    return _run(model, make, prompts, params, n, on_token, device)


def generate_uncached(
    model: CadenzaModel,
    prompts: list[list[int]],
    params: SamplingParams | None = None,
    *,
    n: int = 1,
    on_token: OnToken | None = None,
    device: torch.device | str | None = None,
    window: str = "slide",
) -> list[list[int]]:
    """Like `generate`, but recompute the whole context window every step.

    window="slide": the context is the last block_size tokens, moving one token per step (what
    nanoGPT's and minGPT's `generate` do). window="same": the window policy of `generate`, so
    both samplers see the same contexts and, with the same seed, produce the same tokens.
    """
    params = params or SamplingParams()
    if window not in ("slide", "same"):
        raise ValueError(f"window must be 'slide' or 'same', got {window!r}")
    keep: int | None = _window_keep(model, params) if window == "same" else None

    def make(batch: int, dev: torch.device) -> _Stepper:
        return _RecomputeStepper(model, keep)

    return _run(model, make, prompts, params, n, on_token, device)
