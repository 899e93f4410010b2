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
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from cadenza.models.base import CadenzaModel
from cadenza.models.quantize import prepare_for_sampling
from cadenza.sample.constrain import Constraint
from cadenza.sample.decode import (
    Decoder,
    compile_available,
    compile_pays,
    has_compiled,
    span_for,
)
from cadenza.sample.steer import Steer

if TYPE_CHECKING:
    from cadenza.tokenize.grammar import Grammar

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
    compile: bool | None = None  # compile the decode step; None = when it pays (decode.py)
    quantize: str = "none"  # "int8": decode with the model's int8 copy (models.quantize)
    constrained: bool = True  # mask what the grammar passed to generate() forbids

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
    "compile",
    "quantize",
    "constrained",
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


def _scaled(logits: Tensor, params: SamplingParams, history: Tensor | None) -> Tensor:
    """Float32-or-wider logits with the repetition penalty and temperature applied."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # filters and softmax in at least float32
    if history is not None:
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    if params.temperature > 0:
        logits = logits / params.temperature
    return logits


def filter_logits(logits: Tensor, params: SamplingParams, history: Tensor | None) -> Tensor:
    """Repetition penalty, temperature, top-k, top-p, min-p, in that order (as in HF)."""
    logits = _scaled(logits, params, history)
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    return apply_min_p(logits, params.min_p)


def _filter_sorted(values: Tensor, params: SamplingParams) -> Tensor:
    """top-p and min-p on the k survivors of top-k, already sorted best first (B, k): the
    same rules as `apply_top_p` / `apply_min_p` on the whole row, without sorting it."""
    if params.top_p is not None and params.top_p < 1.0:
        probs = torch.softmax(values, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        values = values.masked_fill(mass_before >= params.top_p, float("-inf"))
    if params.min_p is not None:
        values = values.masked_fill(values < values[:, :1] + math.log(params.min_p), float("-inf"))
    return values


def top_k_distribution(
    logits: Tensor, params: SamplingParams, history: Tensor | None
) -> tuple[Tensor, Tensor]:
    """(probabilities (B, k), token ids (B, k)) after every filter, for params.top_k = k."""
    assert params.top_k is not None
    values, ids = torch.topk(_scaled(logits, params, history), params.top_k, dim=-1)
    return torch.softmax(_filter_sorted(values, params), dim=-1), ids


def sample_next(
    logits: Tensor, params: SamplingParams, history: Tensor | None, generator: torch.Generator
) -> Tensor:
    """logits (B, V) of the newest position -> next token ids (B,).

    With top_k set, only the k best tokens are kept (`torch.topk`, O(V)), top-p and min-p
    then look at those k already sorted, and the draw is over k probabilities: the whole
    vocabulary is never sorted. The support and probabilities are those of `filter_logits`
    (which keeps ties with the k-th logit too; this keeps exactly k).
    """
    k = params.top_k
    if params.temperature > 0 and k is not None and k < logits.size(-1):
        probs, ids = top_k_distribution(logits, params, history)
        choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        return ids.gather(1, choice).view(-1)
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

    def select(self, rows: Tensor) -> None: ...


def _window_keep(model: CadenzaModel, params: SamplingParams) -> int:
    block = model.block_size
    if block is None:
        return 0  # unbounded context: never slides
    keep = params.window_keep if params.window_keep is not None else max(1, block // 2)
    if keep > block:
        raise ValueError(f"window_keep ({keep}) cannot exceed the model's block_size ({block})")
    return keep


class _CachedStepper:
    """KV-cache / hidden-state decoding; slides by `crop_cache` when the block is full.

    Models with a fixed-shape step (`decode_state` not None: the transformers) decode through
    `Decoder` (eager, compiled or a CUDA graph) over their pre-allocated cache; the others
    (RNNs) through `forward_step`.
    """

    def __init__(
        self,
        model: CadenzaModel,
        batch: int,
        device: torch.device,
        keep: int,
        params: SamplingParams,
    ) -> None:
        self.model, self.keep = model, keep
        self.cache = model.init_cache(batch, device)
        self.state = model.decode_state(self.cache)
        self.decoder: Decoder | None = None
        if self.state is not None:
            self.decoder = Decoder(model, decode_mode(model, params, self.state, batch))
        self.pos = torch.zeros((), dtype=torch.long, device=device)

    def prefill(self, idx: Tensor, pad: Tensor | None) -> Tensor:
        block = self.model.block_size
        if block is not None and idx.size(1) > block:  # the window restarts at the last keep
            idx = idx[:, -self.keep :]
            pad = pad[:, -self.keep :] if pad is not None else None
        return self.model.forward_step(idx, self.cache, pad_mask=pad)[:, -1]  # (B, V)

    def step(self, token: Tensor) -> Tensor:
        block = self.model.block_size
        length = self.model.cache_len(self.cache)
        if block is not None and length + 1 > block:
            self.model.crop_cache(self.cache, self.keep - 1)  # + the new token = keep
            length = self.model.cache_len(self.cache)
        if self.decoder is None or self.state is None:
            return self.model.forward_step(token, self.cache)[:, -1]  # (B, V)
        self.pos.fill_(length)
        logits = self.decoder(token, self.pos, self.state, span_for(length, block or length + 1))
        # The cache's bookkeeping (tokens for crop_cache, length) stays outside the fixed step.
        self.cache.tokens[:, length] = token[:, 0]
        self.cache.length = length + 1
        return logits

    def select(self, rows: Tensor) -> None:
        self.cache = self.model.select_cache_rows(self.cache, rows)
        self.state = self.model.decode_state(self.cache)


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

    def select(self, rows: Tensor) -> None:
        self.ctx = self.ctx.index_select(0, rows)
        self.pad = self.pad.index_select(0, rows) if self.pad is not None else None

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

SYNC_EVERY = 8
"""Steps between host reads of the sampled tokens: finished rows, `on_token`, cancel and the
all-rows-done stop are checked this often (a divisor of 16 and 32, the job handler's progress
and bar-check periods). Between reads the loop runs tensor ops only (EOS per row included)."""


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


def decode_mode(
    model: CadenzaModel, params: SamplingParams, state: tuple[Tensor, ...], batch: int
) -> str:
    """How the cached sampler runs its fixed-shape step: "cudagraph" on CUDA; on CPU "compile"
    when asked for (`params.compile`) or, unset, when the job is long enough to repay compiling
    or this process compiled the same shapes before (`cadenza.sample.decode`); else "eager"."""
    dev = state[0].device
    if params.compile is False:
        return "eager"
    if dev.type == "cuda":
        return "cudagraph"
    if not compile_available():
        return "eager"
    token = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    if params.compile or compile_pays(params.max_new_tokens) or has_compiled(model, token, state):
        return "compile"
    return "eager"


class _Rows:
    """The new tokens of the live rows, kept on the device between host reads.

    `buf` (live, max_new) holds every step's tokens; a row's `end` is the number of its tokens
    to keep (its EOS included), max_new until it samples EOS. `flush` copies the steps since
    the last read to the Python lists the caller sees.
    """

    def __init__(self, B: int, max_new: int, stop_id: int | None, dev: torch.device) -> None:
        self.out: list[list[int]] = [[] for _ in range(B)]
        self.index = list(range(B))  # live row -> original row
        self.buf = torch.empty(B, max_new, dtype=torch.long, device=dev)
        self.end = torch.full((B,), max_new, dtype=torch.long, device=dev)
        self.done = torch.zeros(B, dtype=torch.bool, device=dev)
        self.stop_id = stop_id
        self.read = 0  # steps already copied to `out`
        self.max_new = max_new

    def record(self, step: int, token: Tensor) -> None:
        self.buf[:, step - 1] = token
        if self.stop_id is not None:
            hit = (token == self.stop_id) & ~self.done
            self.end.masked_fill_(hit, step)
            self.done |= hit

    def flush(self, step: int) -> list[bool]:
        """Copy steps read..step to the lists; return which live rows are finished."""
        chunk = self.buf[:, self.read : step].tolist()
        ends = self.end.tolist()
        for live, row in enumerate(self.index):
            keep = min(ends[live], step) - self.read
            if keep > 0:
                self.out[row].extend(chunk[live][:keep])
        self.read = step
        return [e <= step for e in ends]

    def select(self, rows: Tensor, keep: list[int]) -> None:
        self.buf = self.buf.index_select(0, rows)
        self.end = self.end.index_select(0, rows)
        self.done = self.done.index_select(0, rows)
        self.index = [self.index[i] for i in keep]


def _run(
    model: CadenzaModel,
    make_stepper: Callable[[int, torch.device], _Stepper],
    prompts: list[list[int]],
    params: SamplingParams,
    n: int,
    on_token: OnToken | None,
    device: torch.device | str | None,
    grammar: Grammar | None = None,
    steer: Steer | None = None,
) -> list[list[int]]:
    """Shared sampling loop; only how logits are obtained differs between the samplers.

    With a `grammar` and `params.constrained`, every step masks the ids the grammar forbids
    in each row's state before the filters (`cadenza.sample.constrain`). `steer` (attribute
    controls, `cadenza.sample.steer`) then masks them to what the controls allow there; the
    grammar lets control and tag ids through everywhere (they do not change its state), so
    the two masks never leave a row without a token.

    Every step is tensor work only; every `SYNC_EVERY` steps (and at the last) the tokens are
    read to the host, `on_token` is called, and once at most half of the live rows are still
    running the finished ones are dropped from the batch (the cache keeps only the rest), so a
    batch whose rows end at EOS early stops paying for them. Dropping at half bounds the
    distinct batch sizes, hence compiles, to log2(batch).
    """
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

    # (B, W) recent context ids, -1 = nothing; a ring written at step % W (the penalty counts
    # tokens, so their order in the window does not matter)
    history: Tensor | None = None
    W = params.repetition_window
    if params.repetition_penalty != 1.0:
        recent = idx if pad is None else idx.masked_fill(pad, -1)
        history = F.pad(recent, (W, 0), value=-1)[:, -W:].contiguous()  # oldest first

    stop_id = params.eos_id if params.stop_at_eos else None
    state = _Rows(B, params.max_new_tokens, stop_id, dev)
    constraint = (
        Constraint(grammar, rows, model.vocab_size, dev)
        if grammar is not None and params.constrained
        else None
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            stepper = make_stepper(B, dev)
            logits = stepper.prefill(idx, pad)  # (B, V)
            slot = 0  # the ring's oldest entry, overwritten next
            for step in range(1, params.max_new_tokens + 1):
                if constraint is not None:
                    logits = constraint.mask(logits)
                if steer is not None:
                    logits = steer.mask(logits)
                token = sample_next(logits, params, history, gen)  # (B,)
                if constraint is not None:
                    constraint.advance(token)
                if steer is not None:
                    steer.advance(token)
                if history is not None:
                    history[:, slot] = token
                    slot = (slot + 1) % W
                state.record(step, token)
                last = step == params.max_new_tokens
                if step % SYNC_EVERY == 0 or last:
                    finished = state.flush(step)
                    cancel = on_token is not None and bool(on_token(step, state.out))
                    if cancel or last or all(finished):
                        break
                    live = [i for i, f in enumerate(finished) if not f]
                    if len(live) <= len(finished) // 2:
                        keep = torch.tensor(live, dtype=torch.long, device=dev)
                        stepper.select(keep)
                        state.select(keep, live)
                        token = token.index_select(0, keep)
                        if steer is not None:
                            steer.select(keep)
                        history = history.index_select(0, keep) if history is not None else None
                        if constraint is not None:
                            constraint.select(keep)
                logits = stepper.step(token.view(-1, 1))
    finally:
        model.train(was_training)
    return state.out


def generate(
    model: CadenzaModel,
    prompts: list[list[int]],
    params: SamplingParams | None = None,
    *,
    n: int = 1,
    on_token: OnToken | None = None,
    device: torch.device | str | None = None,
    grammar: Grammar | None = None,
    steer: Steer | None = None,
) -> list[list[int]]:
    """Sample n continuations of every prompt as one batch with the model's cache.

    Returns the new tokens of each variation, prompt-major (prompt 0's n variations first).
    Prompts may differ in length (left-padded and masked). A row that hits `eos_id` ends there
    (eos included). `device` is where the model lives (default: its parameters' device).
    `grammar` (the tokenizer's, `cadenza.tokenize.grammar.grammar_for`) masks forbidden ids
    while `params.constrained` is true.
    """
    params = params or SamplingParams()
    model = prepare_for_sampling(model, params.quantize)
    keep = _window_keep(model, params)

    def make(batch: int, dev: torch.device) -> _Stepper:
        return _CachedStepper(model, batch, dev, keep, params)

    return _run(model, make, prompts, params, n, on_token, device, grammar, steer)


def generate_uncached(
    model: CadenzaModel,
    prompts: list[list[int]],
    params: SamplingParams | None = None,
    *,
    n: int = 1,
    on_token: OnToken | None = None,
    device: torch.device | str | None = None,
    window: str = "slide",
    grammar: Grammar | None = None,
    steer: Steer | None = None,
) -> list[list[int]]:
    """Like `generate`, but recompute the whole context window every step.

    window="slide": the context is the last block_size tokens, moving one token per step (what
    nanoGPT's and minGPT's `generate` do). window="same": the window policy of `generate`, so
    both samplers see the same contexts and, with the same seed, produce the same tokens.
    """
    params = params or SamplingParams()
    if window not in ("slide", "same"):
        raise ValueError(f"window must be 'slide' or 'same', got {window!r}")
    model = prepare_for_sampling(model, params.quantize)
    keep: int | None = _window_keep(model, params) if window == "same" else None

    def make(batch: int, dev: torch.device) -> _Stepper:
        return _RecomputeStepper(model, keep)

    return _run(model, make, prompts, params, n, on_token, device, grammar, steer)
