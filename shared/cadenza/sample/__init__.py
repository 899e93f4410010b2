"""Sampling from Cadenza models: KV-cached generation, N variations, long-form, filters."""

from cadenza.sample.generate import (
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

__all__ = [
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
]
