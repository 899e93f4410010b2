"""The one-token decode step of a KV-cached model: eager, compiled once, or a CUDA graph.

A step of a small model costs far more in per-operator overhead than in arithmetic (a 4-layer,
256-wide `gpt` does ~7 MFLOP per token: microseconds of maths, but ~100 eager operators).
`CadenzaModel.decode_static` has fixed shapes (the cache is pre-allocated and written in place,
the position is a tensor), so:

* on CPU, `torch.compile(dynamic=False)` fuses it into a few C++ kernels plus the GEMMs, and
  compiles once per (model shapes, batch size);
* on CUDA, the step is captured once as a `torch.cuda.CUDAGraph` and replayed: one launch per
  token instead of one per operator.

When to compile (CPU; `compile_pays`): a first compile of a shape costs COMPILE_COST_TOKENS
eager tokens' worth of time, once per process (a later job with the same shapes, even another
model object, reuses it for free: `has_compiled`); a compiled step then saves COMPILE_SAVING of
an eager step. A job compiles when max_new_tokens x SAVING >= COST, or when its shapes are
compiled already; `compile: true/false` in the request overrides the rule. Measured on the
2-core AMD EPYC (BENCHMARKS.md, "Sampling"): the first compiled 1023-token run took 25 s wall at
batch 1 (41 s at batch 8, one compile per attention span) against 3.2-3.4 s of steady
decoding, and a compiled step was 5-9 % faster than the eager fixed-shape step, because there
a step waits on memory (weights and KV cache), not on operator overhead. So the rule pays only
past ~85,000 tokens, above the request limit (65,536): on such CPUs jobs decode eagerly unless
asked to compile. Re-measure the two constants on other hardware (`bench/sample.py`).

If compiling is unavailable or fails (no C++ compiler, an unsupported operator, a torch
without dynamo), the step falls back to eager for the rest of the process and says so once
in the log: a job never fails because it tried to compile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from cadenza.models.base import CadenzaModel

log = logging.getLogger("cadenza.sample")

COMPILE_COST_TOKENS = 6000
"""A first compile in eager tokens: ~20 s wall (25 s first run minus 3.2 s of decoding) over
3.3 ms per eager token at batch 1, measured under load on the 2-core EPYC."""
COMPILE_SAVING = 0.07
"""Fraction of an eager fixed-shape step a compiled step saves (measured 5 % at batch 1 and
9 % at batch 8, 1023 tokens, same run)."""
RECOMPILE_LIMIT = 32
"""Compiled variants per process (model shapes x batch sizes) before dynamo stops compiling
new ones and runs them eagerly (torch's default is 8)."""

_compiled: Callable[..., Tensor] | None = None
_failed: str | None = None
_compiled_shapes: set[tuple[Any, ...]] = set()


SPAN_STEP = 256
"""Attention reads the cache in spans of this many slots (the length rounded up), so a step at
length L reads at most L + 255 slots instead of all block_size, for 4 variants (compiles, CUDA
graphs) per batch size at block 1024."""


def span_for(length: int, block: int) -> int:
    """The attention span of a step that writes slot `length`: the next multiple of SPAN_STEP."""
    return min(block, -(-(length + 1) // SPAN_STEP) * SPAN_STEP)


def _step(model: CadenzaModel, token: Tensor, pos: Tensor, span: int, *state: Tensor) -> Tensor:
    return model.decode_static(token, pos, *state, span=span)


def compile_pays(max_new_tokens: int) -> bool:
    """The rule: compile when the job's tokens repay a first compile (module docstring)."""
    return max_new_tokens * COMPILE_SAVING >= COMPILE_COST_TOKENS


def compile_available() -> bool:
    """False once a compile has failed in this process (the step then stays eager)."""
    return _failed is None


def _shape_key(model: CadenzaModel, token: Tensor, state: tuple[Tensor, ...]) -> tuple[Any, ...]:
    return (type(model), token.shape, tuple((t.shape, t.dtype) for t in state), token.device)


def has_compiled(model: CadenzaModel, token: Tensor, state: tuple[Tensor, ...]) -> bool:
    """Whether this process already compiled a step of these shapes (a new job reuses it)."""
    return _shape_key(model, token, state) in _compiled_shapes


class Decoder:
    """Calls `model.decode_static` eagerly, compiled, or through a CUDA graph.

    mode "compile" uses one `torch.compile(dynamic=False, fullgraph=True)` function per process
    (`backend` is for tests, e.g. a counting backend); "cudagraph" captures the step for the
    cache it is given on first call and replays it after; "eager" calls it directly.
    """

    def __init__(self, model: CadenzaModel, mode: str = "eager", backend: Any = None) -> None:
        if mode not in ("eager", "compile", "cudagraph"):
            raise ValueError(f"decode mode must be eager, compile or cudagraph, got {mode!r}")
        self.model, self.mode, self.backend = model, mode, backend
        self._graphs: dict[int, _CudaGraphStep] = {}
        self._fn: Callable[..., Tensor] | None = None

    def __call__(
        self, token: Tensor, pos: Tensor, state: tuple[Tensor, ...], span: int | None = None
    ) -> Tensor:
        span = span if span is not None else self.model.block_size
        assert span is not None
        if self.mode == "compile" and _failed is None:
            return self._compiled(token, pos, state, span)
        if self.mode == "cudagraph":
            graph = self._graphs.get(span)
            if graph is None or not graph.matches(state):
                try:
                    graph = _CudaGraphStep(self.model, token, pos, state, span)
                except Exception as exc:  # noqa: BLE001 - a step that cannot be captured
                    log.warning("CUDA graph capture of the decode step failed; eager (%s)", exc)
                    self.mode = "eager"
                    return self.model.decode_static(token, pos, *state, span=span)
                self._graphs[span] = graph
            return graph(token, pos)
        return self.model.decode_static(token, pos, *state, span=span)

    def _compiled(self, token: Tensor, pos: Tensor, state: tuple[Tensor, ...], span: int) -> Tensor:
        global _failed
        try:
            fn = self._fn or _compiled_fn(self.backend)
            self._fn = fn
            out = fn(self.model, token, pos, span, *state)
            _compiled_shapes.add(_shape_key(self.model, token, state))
            return out
        except Exception as exc:  # noqa: BLE001 - any compile failure means: run eagerly
            _failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log.warning("torch.compile of the decode step failed; sampling eagerly (%s)", _failed)
            # The step writes the cache at `pos` only, so running it again eagerly is exact.
            return self.model.decode_static(token, pos, *state, span=span)


def _compiled_fn(backend: Any) -> Callable[..., Tensor]:
    global _compiled
    if backend is not None:  # a test's own backend: a fresh function, counted separately
        return torch.compile(_step, dynamic=False, fullgraph=True, backend=backend)
    if _compiled is None:
        from torch._dynamo import config as cfg

        limit = getattr(cfg, "recompile_limit", getattr(cfg, "cache_size_limit", 8))
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name):
                setattr(cfg, name, max(limit, RECOMPILE_LIMIT))
        _compiled = torch.compile(_step, dynamic=False, fullgraph=True)
    return _compiled


class _CudaGraphStep:
    """One decode step captured as a CUDA graph over a fixed cache (static addresses).

    The token and position are copied into the graph's own input tensors before each replay;
    the cache tensors are the captured ones, written in place by the replay. The output is the
    graph's logits buffer, valid until the next replay (the sampler reads it at once).
    """

    def __init__(
        self, model: CadenzaModel, token: Tensor, pos: Tensor, state: tuple[Tensor, ...], span: int
    ) -> None:
        self.state_ptrs = [t.data_ptr() for t in state]
        self.token = token.clone()
        self.pos = pos.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm up (kernels, workspaces) off the capture
            for _ in range(2):
                model.decode_static(self.token, self.pos, *state, span=span)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = model.decode_static(self.token, self.pos, *state, span=span)

    def matches(self, state: tuple[Tensor, ...]) -> bool:
        return [t.data_ptr() for t in state] == self.state_ptrs

    def __call__(self, token: Tensor, pos: Tensor) -> Tensor:
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.out


__all__ = [
    "COMPILE_COST_TOKENS",
    "COMPILE_SAVING",
    "Decoder",
    "compile_available",
    "compile_pays",
    "has_compiled",
    "span_for",
]
