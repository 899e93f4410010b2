"""Tokenizers (MidiTok's and the earlier systems' encodings), corpus building, primers.

The spec models (:mod:`cadenza.tokenize.spec`) import neither MidiTok nor symusic, so the API can
validate requests; everything else is imported on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.tokenize.spec import (
    AUGMENT_PRESETS,
    PRESETS,
    AugmentSpec,
    BPESpec,
    ChordDurationConfig,
    MidiCharConfig,
    QuarterVQConfig,
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
    "Symbols": "cadenza.tokenize.base",
    "Tokenizer": "cadenza.tokenize.base",
    "CorpusBuild": "cadenza.tokenize.corpus",
    "CorpusCancelled": "cadenza.tokenize.corpus",
    "CorpusEmpty": "cadenza.tokenize.corpus",
    "CorpusStats": "cadenza.tokenize.corpus",
    "assign_splits": "cadenza.tokenize.corpus",
    "build_corpus": "cadenza.tokenize.corpus",
    "load_npz": "cadenza.tokenize.corpus",
    "crop_score": "cadenza.tokenize.primer",
    "decode_to_midi": "cadenza.tokenize.primer",
    "encode_primer": "cadenza.tokenize.primer",
    "build_tokenizer": "cadenza.tokenize.registry",
    "special_ids": "cadenza.tokenize.registry",
    "tokenizer_from_bytes": "cadenza.tokenize.registry",
    "tokenizer_hash": "cadenza.tokenize.registry",
    "tokenizer_to_bytes": "cadenza.tokenize.registry",
    "vocab_size": "cadenza.tokenize.registry",
}

# Heavy submodules (MidiTok, symusic) load only when one of their names is used.
__getattr__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "AUGMENT_PRESETS",
    "PRESETS",
    "AugmentSpec",
    "BPESpec",
    "ChordDurationConfig",
    "MidiCharConfig",
    "QuarterVQConfig",
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
