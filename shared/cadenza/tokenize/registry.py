"""Build, save, load and identify tokenizers by spec name (a plain dict maps names to classes)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from cadenza.tokenize.base import FORMAT, FORMAT_VERSION, Tokenizer
from cadenza.tokenize.spec import TokenizerSpec


def _classes() -> dict[str, type[Tokenizer]]:
    """Spec name → class; imported lazily so that the API can use specs without MidiTok."""
    from cadenza.tokenize.audio_vq import AudioVQTokenizer
    from cadenza.tokenize.chord_duration import ChordDurationTokenizer
    from cadenza.tokenize.midichar import MidiCharTokenizer
    from cadenza.tokenize.miditok_tok import MidiTokCompoundTokenizer, MidiTokTokenizer
    from cadenza.tokenize.quarter_vq import QuarterVQTokenizer

    out: dict[str, type[Tokenizer]] = {}
    classes: tuple[type[Tokenizer], ...] = (
        MidiTokTokenizer,
        MidiTokCompoundTokenizer,
        MidiCharTokenizer,
        ChordDurationTokenizer,
        QuarterVQTokenizer,
        AudioVQTokenizer,
    )
    for cls in classes:
        for name in cls.names:
            out[name] = cls
    return out


def build_tokenizer(spec: TokenizerSpec | dict[str, Any]) -> Tokenizer:
    """A fresh tokenizer for ``spec``; with ``spec.bpe`` (or midichar) it still needs ``fit``.

    Raises ValueError (message starts with ``config``) when MidiTok refuses the option mix.
    """
    if not isinstance(spec, TokenizerSpec):
        spec = TokenizerSpec.model_validate(spec)
    return _classes()[spec.name](spec)


def tokenizer_to_bytes(tok: Tokenizer) -> bytes:
    """Serialize spec + learned state (BPE included) as deterministic gzip'd JSON."""
    return tok.to_bytes()


def tokenizer_from_bytes(data: bytes) -> Tokenizer:
    """Inverse of :func:`tokenizer_to_bytes` (also accepts the uncompressed JSON)."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    doc = json.loads(raw)
    if doc.get("format") != FORMAT:
        raise ValueError("these bytes are not a Cadenza tokenizer")
    if doc.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"tokenizer format version {doc.get('version')} is not supported "
            f"(this Cadenza reads {FORMAT_VERSION})"
        )
    spec = TokenizerSpec.model_validate(doc["spec"])
    return _classes()[spec.name].from_state(spec, doc["state"])


def tokenizer_hash(tok: Tokenizer) -> str:
    """Stable sha256 hex of the spec and learned vocabulary (not of library versions)."""
    return tok.hash()


def vocab_size(tok: Tokenizer) -> int:
    """Number of ids a model must embed."""
    return tok.vocab_size


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """``{"pad", "bos", "eos"}`` ids."""
    return tok.special_ids


__all__ = [
    "build_tokenizer",
    "special_ids",
    "tokenizer_from_bytes",
    "tokenizer_hash",
    "tokenizer_to_bytes",
    "vocab_size",
]
