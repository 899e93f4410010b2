"""Tokenizers (MidiTok's and the earlier systems' encodings), corpus building, primers.

The spec models (:mod:`cadenza.tokenize.spec`) import neither MidiTok nor symusic, so the API can
validate requests; everything else is imported on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cadenza.tokenize.spec import (
    AUGMENT_PRESETS,
    PRESETS,
    AugmentSpec,
    BPESpec,
    ChordDurationConfig,
    MidiCharConfig,
    TokenizerSpec,
    augment_preset,
    preset,
)

if TYPE_CHECKING:
    from cadenza.tokenize.base import Symbols, Tokenizer
    from cadenza.tokenize.corpus import (
        CorpusBuild,
        CorpusCancelled,
        CorpusEmpty,
        CorpusStats,
        assign_splits,
        build_corpus,
        load_npz,
    )
    from cadenza.tokenize.primer import crop_score, decode_to_midi, encode_primer
    from cadenza.tokenize.registry import (
        build_tokenizer,
        special_ids,
        tokenizer_from_bytes,
        tokenizer_hash,
        tokenizer_to_bytes,
        vocab_size,
    )

_LAZY = {
    "Symbols": "base",
    "Tokenizer": "base",
    "CorpusBuild": "corpus",
    "CorpusCancelled": "corpus",
    "CorpusEmpty": "corpus",
    "CorpusStats": "corpus",
    "assign_splits": "corpus",
    "build_corpus": "corpus",
    "load_npz": "corpus",
    "crop_score": "primer",
    "decode_to_midi": "primer",
    "encode_primer": "primer",
    "build_tokenizer": "registry",
    "special_ids": "registry",
    "tokenizer_from_bytes": "registry",
    "tokenizer_hash": "registry",
    "tokenizer_to_bytes": "registry",
    "vocab_size": "registry",
}


def __getattr__(name: str) -> Any:
    """Import heavy submodules (MidiTok, symusic) only when their names are used."""
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'cadenza.tokenize' has no attribute {name!r}")
    return getattr(importlib.import_module(f"cadenza.tokenize.{mod}"), name)


__all__ = [
    "AUGMENT_PRESETS",
    "PRESETS",
    "AugmentSpec",
    "BPESpec",
    "ChordDurationConfig",
    "MidiCharConfig",
    "TokenizerSpec",
    "augment_preset",
    "preset",
    "Symbols",
    "Tokenizer",
    "CorpusBuild",
    "CorpusCancelled",
    "CorpusEmpty",
    "CorpusStats",
    "assign_splits",
    "build_corpus",
    "load_npz",
    "crop_score",
    "decode_to_midi",
    "encode_primer",
    "build_tokenizer",
    "special_ids",
    "tokenizer_from_bytes",
    "tokenizer_hash",
    "tokenizer_to_bytes",
    "vocab_size",
]
