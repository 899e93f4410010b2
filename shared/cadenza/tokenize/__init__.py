"""Tokenizers (MidiTok's and Cadenza's own encodings), corpus building, primers.

The spec models (:mod:`cadenza.tokenize.spec`) and presets (:mod:`cadenza.tokenize.presets`)
import neither MidiTok nor symusic, so the API can validate requests; everything else is
imported on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.tokenize.presets import AUGMENT_PRESETS, PRESETS, resolve_spec
from cadenza.tokenize.spec import (
    CODES_PER_QUARTER,
    AugmentSpec,
    BPESpec,
    ChordDurationConfig,
    MidiCharConfig,
    QuarterVQConfig,
    TokenizerSpec,
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

#: Names loaded on first use, by the module that defines them.
_LAZY_BY_MODULE: dict[str, tuple[str, ...]] = {
    "cadenza.tokenize.base": ("Symbols", "Tokenizer"),
    "cadenza.tokenize.corpus": (
        "CorpusBuild",
        "CorpusCancelled",
        "CorpusEmpty",
        "CorpusStats",
        "assign_splits",
        "build_corpus",
        "load_npz",
    ),
    "cadenza.tokenize.primer": ("crop_score", "decode_to_midi", "encode_primer"),
    "cadenza.tokenize.registry": (
        "build_tokenizer",
        "special_ids",
        "tokenizer_from_bytes",
        "tokenizer_hash",
        "tokenizer_to_bytes",
        "vocab_size",
    ),
}
_LAZY = {name: module for module, names in _LAZY_BY_MODULE.items() for name in names}

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
    "CODES_PER_QUARTER",
    "resolve_spec",
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
