"""Sampling from Cadenza models: KV-cached generation, N variations, long-form, filters.

`SampleParams` and friends (`cadenza.sample.params`) import without torch, so the API validates
a sample request with them; everything else loads torch on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.sample.params import SampleParams, SampleRequest, SamplingOptions

if TYPE_CHECKING:
    from cadenza.sample.sampler import (
        OnToken,
        SamplingParams,
        apply_min_p,
        apply_repetition_penalty,
        apply_top_k,
        apply_top_p,
        filter_logits,
        generate,
        generate_uncached,
        sample_next,
    )

_GENERATE = (
    "OnToken",
    "SamplingParams",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "filter_logits",
    "generate",
    "generate_uncached",
    "sample_next",
)
__getattr__ = lazy_exports(__name__, dict.fromkeys(_GENERATE, "cadenza.sample.sampler"), globals())

__all__ = [
    "OnToken",
    "SampleParams",
    "SampleRequest",
    "SamplingOptions",
    "SamplingParams",
    "apply_min_p",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "filter_logits",
    "generate",
    "generate_uncached",
    "sample_next",
]
