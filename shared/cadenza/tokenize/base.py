"""The tokenizer interface every encoding implements, and a subword (BPE) layer for our own ones.

One interface for MidiTok's tokenizers and for Cadenza's own encodings means the
corpus builder, the primer encoder and the sampler never ask which kind they hold. Work is
split so that the expensive part runs in worker processes without any learned state:

* ``symbols(score)``: the base encoding (no BPE, no learned alphabet) — parallel, per file;
* ``fit(train symbols)``: learn what depends on the data (midichar's alphabet, BPE merges);
* ``ids(symbols)``: map base symbols to final ids (apply BPE) — batched, in the parent.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from cadenza.midi.load import time_signature_map
from cadenza.tokenize.spec import BPESpec, TokenizerSpec

if TYPE_CHECKING:
    from symusic.core import ScoreTick as Score

    from cadenza.tokenize.grammar import Grammar, Rules

FORMAT = "cadenza.tokenizer"
FORMAT_VERSION = 1


@dataclass
class Symbols:
    """Base encoding of one score: symbols, where subword "words" start, and bar count.

    ``symbols`` are tokenizer-specific integers (MidiTok base ids, chord-duration base ids,
    midichar code points). Subword merges never cross a word start, so a learned token never
    spans a bar line (MidiTok's ``encode_ids_split="bar"`` behaviour).
    """

    symbols: NDArray[np.int32]
    word_starts: NDArray[np.int32] = field(default_factory=lambda: np.zeros(1, dtype=np.int32))
    bars: int = 0

    def words(self) -> list[NDArray[np.int32]]:
        """The symbols cut at the word starts (empty words dropped)."""
        if self.symbols.size == 0:
            return []
        cuts = [int(c) for c in self.word_starts if 0 < c < self.symbols.size]
        return [w for w in np.split(self.symbols, cuts) if w.size > 0]


def pitched_notes(score: Score) -> dict[str, NDArray[np.int64]]:
    """All non-drum notes of a tick-time score as int64 arrays, sorted by (time, pitch)."""
    keys = ("time", "duration", "pitch", "velocity")
    soas = [t.notes.numpy() for t in score.tracks if not t.is_drum and len(t.notes) > 0]
    if not soas:
        return {k: np.zeros(0, dtype=np.int64) for k in keys}
    cat = {k: np.concatenate([np.asarray(s[k], dtype=np.int64) for s in soas]) for k in keys}
    order = np.lexsort((cat["pitch"], cat["time"]))
    return {k: v[order] for k, v in cat.items()}


def empty_symbols() -> Symbols:
    """The encoding of a score without notes."""
    return Symbols(np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int32), 0)


def count_bars(score: Score) -> int:
    """Bars from tick 0 to the score's end, following its time signatures (4/4 if none).

    Used for "tokens per bar" so that all tokenizers are measured against the same bars.
    """
    end = int(score.end())
    if end <= 0:
        return 0
    tpq = int(score.ticks_per_quarter)
    sigs = time_signature_map(score)
    bars = 0
    for i, (t, num, den) in enumerate(sigs):
        seg_end = sigs[i + 1][0] if i + 1 < len(sigs) else end
        if t >= end:
            break
        bar = max(1, num * tpq * 4 // max(den, 1))
        bars += -(-(min(seg_end, end) - t) // bar)  # ceil division
    return bars


#: Special ids of Cadenza's own encodings (midichar, chord-duration, quarter-vq); MidiTok's
#: tokenizers take theirs from MidiTok's vocabulary.
PAD, BOS, EOS = 0, 1, 2


class Tokenizer(ABC):
    """A music tokenizer: score ⇄ ids, with PAD/BOS/EOS, optional subwords, bytes and a hash."""

    #: the ``TokenizerSpec.name`` values this class implements
    names: ClassVar[tuple[str, ...]] = ()
    #: what a corpus of this tokenizer reads: "midi" files (``symbols(score)``) or "audio"
    #: files (``audio_symbols(bytes)``, audio-vq)
    input_kind: ClassVar[str] = "midi"

    def __init__(self, spec: TokenizerSpec) -> None:
        self.spec = spec

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The spec name, e.g. "REMI" or "midichar"."""
        return self.spec.name

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids a model must embed (base + learned subwords)."""

    @property
    @abstractmethod
    def base_vocab_size(self) -> int:
        """Number of base ids, before subword merges."""

    @property
    @abstractmethod
    def pad_id(self) -> int:
        """Id used to pad batches; never produced by encoding."""

    @property
    @abstractmethod
    def bos_id(self) -> int:
        """Id that starts every file's sequence in a corpus and every primer."""

    @property
    @abstractmethod
    def eos_id(self) -> int:
        """Id that ends every file's sequence in a corpus; sampling may stop at it."""

    @property
    def special_ids(self) -> dict[str, int]:
        """``{"pad": …, "bos": …, "eos": …}`` for a model config."""
        return {"pad": self.pad_id, "bos": self.bos_id, "eos": self.eos_id}

    @property
    @abstractmethod
    def is_trained(self) -> bool:
        """True once :meth:`fit` has learned what the spec asks for (alphabet, subwords)."""

    # ---- encoding ---------------------------------------------------------------------------
    def prepare(self, score: Score) -> Score:
        """Tokenizer-specific normalisation before :meth:`symbols` (default: none)."""
        return score

    @abstractmethod
    def symbols(self, score: Score) -> Symbols:
        """Base encoding of a (cleaned) score; needs no learned state, so workers can run it."""

    def audio_symbols(self, data: bytes) -> Symbols:
        """Base encoding of an audio recording's bytes (tokenizers with ``input_kind`` audio)."""
        raise ValueError(f"the {self.name} tokenizer reads MIDI, not audio")

    @abstractmethod
    def fit(self, train: Sequence[Symbols]) -> None:
        """Learn data-dependent state from training files (alphabet, subword merges)."""

    def set_tags(self, tags: Sequence[str]) -> None:
        """Learn the corpus's style tags as tokens (only tokenizers with ``learn_tags``)."""
        return None

    def with_tags(self, ids: NDArray[np.int32], tags: Sequence[str]) -> NDArray[np.int32]:
        """A file's final ids with its style tags' tokens (unchanged without ``learn_tags``)."""
        return ids

    def capabilities(self) -> dict[str, Any]:
        """The controls and tags a model trained on this tokenizer's corpus can be steered by
        (``cadenza.tokenize.controls.capabilities``); none by default."""
        from cadenza.tokenize.controls import default_capabilities

        return default_capabilities()

    def fit_stats(self) -> dict[str, Any]:
        """Figures about what :meth:`fit` learned, for the corpus stats (default: none)."""
        return {}

    @abstractmethod
    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        """Final ids (subwords applied) for many encoded files at once."""

    def ids(self, item: Symbols) -> NDArray[np.int32]:
        """Final ids for one encoded file."""
        return self.ids_batch([item])[0]

    def encode(self, score: Score) -> list[int]:
        """Score → final ids, without BOS/EOS."""
        return [int(i) for i in self.ids(self.symbols(score))]

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> Score:
        """Ids → score. Never raises on any id sequence: specials, out-of-range ids and
        ungrammatical orders are dropped or repaired, because sampled output can be anything."""

    # ---- grammar ----------------------------------------------------------------------------
    @abstractmethod
    def grammar_rules(self) -> Rules:
        """Which base ids may follow which (`cadenza.tokenize.grammar`): what constrained
        sampling enforces. It must accept every sequence :meth:`symbols` writes."""

    def grammar_excluded(self) -> frozenset[int]:
        """Base ids never sampled besides PAD/BOS/EOS (e.g. MidiTok's MASK); default none."""
        return frozenset()

    def grammar(self) -> Grammar:
        """The automaton over the final vocabulary (subword pieces included); build it through
        `cadenza.tokenize.grammar.grammar_for`, which keeps one per tokenizer object."""
        from cadenza.tokenize.grammar import build_grammar

        sub: SubwordModel | None = getattr(self, "subword", None)
        return build_grammar(
            self.grammar_rules(),
            base_size=self.base_vocab_size,
            vocab_size=self.vocab_size,
            pad=self.pad_id,
            bos=self.bos_id,
            eos=self.eos_id,
            excluded=self.grammar_excluded(),
            pieces=sub.pieces if sub is not None else (),
            transparent=self.grammar_transparent(),
        )

    def grammar_transparent(self) -> list[int]:
        """Base ids allowed anywhere in a piece that leave the grammar's state unchanged
        (conditioning tokens placed by something else: attribute controls, tags)."""
        return []

    # ---- persistence ------------------------------------------------------------------------
    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-ready learned state (what :meth:`fit` produced), without library versions."""

    @classmethod
    @abstractmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> Tokenizer:
        """Rebuild from a spec and :meth:`state`."""

    def to_bytes(self) -> bytes:
        """gzip'd JSON: format tag, spec and learned state (deterministic: same tokenizer, same
        bytes)."""
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "spec": self.spec.model_dump(mode="json"),
            "state": self.state(),
        }
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return gzip.compress(raw, compresslevel=6, mtime=0)

    def hash(self) -> str:
        """sha256 of the spec and learned state: equal hashes mean identical id meanings."""
        doc = {"spec": self.spec.model_dump(mode="json"), "state": self.state()}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()

    def __repr__(self) -> str:
        bpe = f", {self.spec.bpe.model} {self.vocab_size}" if self.spec.bpe else ""
        return f"<{type(self).__name__} {self.name}: {self.base_vocab_size} base ids{bpe}>"


# ---------------------------------------------------------------------------------------------
# subword layer for our own encodings (MidiTok has its own, we use that one for its tokenizers)

_CHAR_BASE = 0x100  # below this lie whitespace and control chars that tokenizers may treat


def sym_char(b: int) -> str:
    """The character standing for base id ``b`` inside the subword model."""
    cp = _CHAR_BASE + b
    if cp >= 0xD800:  # skip the surrogate block, which is not valid in strings
        cp += 0x800
    return chr(cp)


def _char_sym(c: str) -> int:
    cp = ord(c)
    if cp >= 0xE000:
        cp -= 0x800
    return cp - _CHAR_BASE


class OwnSpecials:
    """PAD/BOS/EOS at ids 0/1/2: the special ids every one of Cadenza's own encodings uses."""

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def bos_id(self) -> int:
        return BOS

    @property
    def eos_id(self) -> int:
        return EOS


class SubwordModel:
    """BPE / Unigram / WordPiece over base ids, with final ids that keep base ids unchanged.

    Final ids ``0 … base_size-1`` are the base ids (so PAD/BOS/EOS never move); learned pieces
    follow, ordered as the Hugging Face model numbers them. Each piece decodes to its base ids
    by table lookup, so decoding never depends on the Hugging Face model.
    """

    def __init__(self, hf_json: str, base_size: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self.hf_json = hf_json
        self.base_size = base_size
        self._hf = HFTokenizer.from_str(hf_json)
        vocab = self._hf.get_vocab()
        pieces = sorted(((i, t) for t, i in vocab.items() if len(t) > 1), key=lambda x: x[0])
        self._hf_to_final = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
        self.pieces: list[tuple[int, ...]] = []
        for t, i in vocab.items():
            if len(t) == 1:
                self._hf_to_final[i] = _char_sym(t)
        for n, (i, t) in enumerate(pieces):
            self._hf_to_final[i] = base_size + n
            self.pieces.append(tuple(_char_sym(c) for c in t))

    @property
    def vocab_size(self) -> int:
        """Base ids plus learned pieces."""
        return self.base_size + len(self.pieces)

    @classmethod
    def train(
        cls,
        words: Sequence[Sequence[str]],
        *,
        base_size: int,
        alphabet: Sequence[int],
        bpe: BPESpec,
        n_specials: int,
    ) -> SubwordModel:
        """Learn pieces from ``words`` (per file, strings of symbol chars)."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import models, trainers

        chars = [sym_char(b) for b in alphabet]
        unk = sym_char(0)  # PAD: an unknown piece decodes to nothing
        target = max(bpe.vocab_size - n_specials, len(chars) + 1)
        if bpe.model == "BPE":
            model: Any = models.BPE(vocab={c: i for i, c in enumerate(chars)}, merges=[])
            trainer: Any = trainers.BpeTrainer(
                vocab_size=target, initial_alphabet=chars, show_progress=False
            )
        elif bpe.model == "Unigram":
            model = models.Unigram()
            trainer = trainers.UnigramTrainer(
                vocab_size=target,
                initial_alphabet=chars,
                special_tokens=[unk],
                unk_token=unk,
                max_piece_length=16,
                show_progress=False,
            )
        else:
            model = models.WordPiece(
                vocab={c: i for i, c in enumerate(chars)},
                unk_token=unk,
                continuing_subword_prefix="",
                max_input_chars_per_word=1 << 20,
            )
            trainer = trainers.WordPieceTrainer(
                vocab_size=target,
                initial_alphabet=chars,
                special_tokens=[unk],
                continuing_subword_prefix="",
                show_progress=False,
            )
        hf = HFTokenizer(model)
        flat = [list(w) for w in words if len(w) > 0]
        hf.train_from_iterator(flat, trainer=trainer, length=len(flat))
        return cls(hf.to_str(), base_size)

    def encode_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        """Apply the pieces within each word; returns final ids per item."""
        batch = [["".join(sym_char(int(b)) for b in w) for w in it.words()] for it in items]
        out: list[NDArray[np.int32]] = []
        nonempty = [i for i, words in enumerate(batch) if words]
        encs = self._hf.encode_batch([batch[i] for i in nonempty], is_pretokenized=True)
        by_index = dict(zip(nonempty, encs, strict=True))
        for i in range(len(items)):
            enc = by_index.get(i)
            if enc is None:
                out.append(np.zeros(0, dtype=np.int32))
            else:
                out.append(self._hf_to_final[np.asarray(enc.ids, dtype=np.int64)].astype(np.int32))
        return out

    def decode(self, ids: Sequence[int]) -> list[int]:
        """Final ids → base ids; ids outside the vocabulary are dropped."""
        out: list[int] = []
        for i in ids:
            i = int(i)
            if 0 <= i < self.base_size:
                out.append(i)
            elif self.base_size <= i < self.vocab_size:
                out.extend(self.pieces[i - self.base_size])
        return out

    def state(self) -> dict[str, Any]:
        """Canonical JSON of the Hugging Face model (sorted keys, for stable hashes)."""
        state: dict[str, Any] = json.loads(self.hf_json)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any], base_size: int) -> SubwordModel:
        """Rebuild from :meth:`state`."""
        return cls(json.dumps(state), base_size)


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "SubwordModel",
    "Symbols",
    "Tokenizer",
    "count_bars",
    "empty_symbols",
    "pitched_notes",
    "sym_char",
]
