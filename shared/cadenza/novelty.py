"""The copy check: how much of a sample repeats its model's training data note for note.

A generated piece that reproduces a training piece is not new music, and its user should be
told (and can ask for another take: ``max_copied_fraction`` on a sample request). Each sample
reports, against its corpus's **training split**:

- ``copied_fraction``: the share of its 8-note n-grams (:data:`NGRAM`) found in training;
- ``longest_copied_run``: the longest run of notes covered by consecutive copied n-grams
  (k consecutive hits cover k + 7 notes; 0 when nothing is copied).

**What a note is.** All non-drum notes of a piece, tracks merged, sorted by (onset, pitch)
(:func:`cadenza.tokenize.base.pitched_notes`), onsets and durations rounded to :data:`GRID`
positions per quarter note. An n-gram is the first note's duration followed by, for each next
note, (pitch interval from the previous note, onset step from it, duration). Intervals rather
than pitches make the check **transposition-invariant**: a melody copied a fifth higher is
still copied, which matters because corpora are usually augmented by transposition (a model
trained on a piece in twelve keys can reproduce it in any of them). Velocity, tempo and
instrument are left out: they do not make a passage new.

**Where the training notes come from.** The corpus's own training array, each BOS … EOS
sequence decoded by the corpus's tokenizer, the same decoder that turns a model's tokens into a
sample. Both sides are therefore on the tokenizer's grid, copying tokens means copying
n-grams, and the index depends only on the training array and the tokenizer: a sharded corpus
build, whose arrays equal a single-process build's byte for byte, gets the same index.

**The index.** Every training n-gram is hashed to 64 bits (splitmix64 per note, a polynomial
over the window, splitmix64 again) and the distinct hashes are kept as one sorted ``uint64``
array, an ``.npy`` object at :func:`index_key` beside the corpus's other objects. A lookup is a
binary search per n-gram (``np.searchsorted``), so checking a sample costs O(m log N) for m
n-grams against N training n-grams, never a scan of the training pieces. The tokenize job
builds it with the corpus; a corpus made before the check existed gets it on its first sample
job (:func:`load_or_build`), which writes it through the job's fenced store. It lives under the
corpus's prefix, so deleting the corpus deletes it (``cadenza.delete.delete_corpus`` schedules
the prefix); a sample job cannot outlive the corpus (a corpus with models is never deleted and
a model is not deleted while a sample job on it runs), so the lazy write leaves no orphan.

Hash collisions (two different n-grams, one hash) are possible but negligible: about m·N/2⁶⁴,
under 10⁻⁹ for a million-piece corpus.
"""

from __future__ import annotations

import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from symusic.core import ScoreTick

    from cadenza.storage import ObjectStore
    from cadenza.tokenize.base import Tokenizer

#: Notes per n-gram.
NGRAM: Final[int] = 8
#: Onset/duration grid, positions per quarter note: holds 32nds (3), eighth triplets (8) and
#: 16th triplets (4) exactly.
GRID: Final[int] = 24
#: Onset steps and durations longer than this many grid positions (16 quarters) count as this.
_CLIP: Final[int] = 16 * GRID
#: Re-samples of a variation over ``max_copied_fraction`` (after the first try): bounded, so a
#: model that can only copy still answers.
COPY_RESAMPLES: Final[int] = 3
#: Name of the index object under the corpus prefix; the version changes with the n-gram
#: definition, so an older index is never read as a newer one (it is rebuilt lazily).
INDEX_NAME: Final[str] = "novelty-v1.npy"

_U64 = np.uint64
_P = 0x9E3779B97F4A7C15  # odd multiplier of the window polynomial


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finalizer, elementwise (uint64 arithmetic wraps, as intended)."""
    x = x ^ (x >> _U64(30))
    x = x * _U64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> _U64(27))
    x = x * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


_POWERS: Final[tuple[np.uint64, ...]] = tuple(_U64(pow(_P, k, 1 << 64)) for k in range(NGRAM))


def note_grid(score: ScoreTick) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """(pitch, onset, duration) of the score's non-drum notes, sorted by (onset, pitch), with
    onset and duration in :data:`GRID` positions per quarter."""
    from cadenza.tokenize.base import pitched_notes

    notes = pitched_notes(score)
    tpq = max(int(score.ticks_per_quarter), 1)
    onset = (notes["time"] * (2 * GRID) + tpq) // (2 * tpq)  # rounded, never accumulated
    dur = (np.maximum(notes["duration"], 0) * (2 * GRID) + tpq) // (2 * tpq)
    return notes["pitch"], onset, dur


def ngram_hashes(
    pitch: NDArray[np.int64], onset: NDArray[np.int64], dur: NDArray[np.int64]
) -> NDArray[np.uint64]:
    """One 64-bit hash per window of :data:`NGRAM` consecutive notes, in order (empty when the
    piece has fewer notes). Same intervals, steps and durations → same hash, in any key."""
    m = pitch.size - NGRAM + 1
    if m <= 0:
        return np.zeros(0, dtype=np.uint64)
    interval = np.clip(np.diff(pitch), -127, 127) + 128  # 1..255
    step = np.clip(np.diff(onset), 0, _CLIP)
    d = np.clip(dur, 0, _CLIP).astype(np.uint64)
    # code of note i (i ≥ 1) as the continuation of note i-1; code of a window's first note
    nxt = np.zeros(pitch.size, dtype=np.uint64)
    nxt[1:] = _mix(
        interval.astype(np.uint64)
        | (step.astype(np.uint64) << _U64(8))
        | (d[1:] << _U64(20))
        | (_U64(1) << _U64(40))
    )
    first = _mix(d | (_U64(2) << _U64(40)))
    h = first[:m] * _POWERS[NGRAM - 1]
    for k in range(1, NGRAM):
        h = h + nxt[k : k + m] * _POWERS[NGRAM - 1 - k]
    return _mix(h)


def score_hashes(score: ScoreTick) -> NDArray[np.uint64]:
    """:func:`ngram_hashes` of a parsed score."""
    return ngram_hashes(*note_grid(score))


def _longest_run(hits: NDArray[np.bool_]) -> int:
    """Length of the longest run of True."""
    if not hits.any():
        return 0
    padded = np.concatenate(([0], hits.astype(np.int8), [0]))
    edges = np.flatnonzero(np.diff(padded))
    return int((edges[1::2] - edges[0::2]).max())


@dataclass(frozen=True)
class NoveltyIndex:
    """The distinct n-gram hashes of a training split, sorted (see the module docstring)."""

    hashes: NDArray[np.uint64]
    pieces: int = 0  # training sequences indexed (augmented copies included)

    @classmethod
    def from_hashes(cls, parts: list[NDArray[np.uint64]], pieces: int) -> NoveltyIndex:
        cat = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        return cls(np.unique(cat), pieces)

    def contains(self, hashes: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Which of ``hashes`` occur in training: a binary search each."""
        if self.hashes.size == 0 or hashes.size == 0:
            return np.zeros(hashes.size, dtype=np.bool_)
        at = np.searchsorted(self.hashes, hashes)
        found: NDArray[np.bool_] = self.hashes[np.minimum(at, self.hashes.size - 1)] == hashes
        return found

    def check_hashes(self, hashes: NDArray[np.uint64], *, skip_notes: int = 0) -> dict[str, Any]:
        """``meta.novelty`` of a piece's n-gram hashes (in note order).

        The first ``skip_notes`` notes are a primer the user gave: n-grams made only of them
        are not the model's doing and are left out (an n-gram reaching into new notes counts).
        """
        hashes = hashes[max(skip_notes - NGRAM + 1, 0) :]
        hits = self.contains(hashes)
        run = _longest_run(hits)
        return {
            "ngram": NGRAM,
            "ngrams": int(hashes.size),
            "copied_ngrams": int(hits.sum()),
            "copied_fraction": round(float(hits.mean()), 4) if hashes.size else 0.0,
            "longest_copied_run": run + NGRAM - 1 if run else 0,
        }

    def check_score(self, score: ScoreTick, *, skip_notes: int = 0) -> dict[str, Any]:
        """:meth:`check_hashes` of a parsed score."""
        return self.check_hashes(score_hashes(score), skip_notes=skip_notes)

    def check_midi(self, midi: bytes, *, skip_notes: int = 0) -> dict[str, Any]:
        """:meth:`check_hashes` of MIDI bytes Cadenza wrote (a decoded sample): parsed directly,
        not through the upload sandbox, since the bytes are our own."""
        from symusic.core import ScoreTick

        try:
            score = ScoreTick.from_midi(midi)
        except RuntimeError:  # symusic's parse error: no notes to check
            return self.check_hashes(np.zeros(0, dtype=np.uint64))
        return self.check_score(score, skip_notes=skip_notes)

    def to_bytes(self) -> bytes:
        """``.npy`` of the sorted hashes (no pickle)."""
        buf = io.BytesIO()
        np.save(buf, self.hashes, allow_pickle=False)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> NoveltyIndex:
        hashes = np.load(io.BytesIO(data), allow_pickle=False)
        if hashes.dtype != np.uint64 or hashes.ndim != 1:
            raise ValueError(f"not a novelty index: {hashes.dtype} {hashes.shape}")
        return cls(hashes)


def sequences(ids: NDArray[np.int32], bos_id: int, eos_id: int) -> list[NDArray[np.int32]]:
    """The BOS … EOS pieces of a flat corpus array, without their BOS and EOS."""
    starts = np.flatnonzero(ids == bos_id)
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate(([0], starts)).astype(np.int64)
    ends = np.concatenate((starts[1:], [ids.size]))
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        piece = ids[s:e]
        lo = 1 if piece.size and piece[0] == bos_id else 0
        hi = piece.size - 1 if piece.size and piece[-1] == eos_id else piece.size
        out.append(np.asarray(piece[lo:hi]))
    return out


def build_index(tokenizer: Tokenizer, train_ids: NDArray[np.int32]) -> NoveltyIndex:
    """The index of a training array: each piece's :func:`piece_hashes`, distinct and sorted.

    Memory: the array (a memmap works), one decoded piece, and 8 bytes per n-gram.
    """
    pieces = sequences(train_ids, tokenizer.bos_id, tokenizer.eos_id)
    parts = [piece_hashes(tokenizer, piece) for piece in pieces]
    return NoveltyIndex.from_hashes(parts, len(pieces))


def piece_hashes(tokenizer: Tokenizer, ids: NDArray[np.int32]) -> NDArray[np.uint64]:
    """The n-gram hashes of one training piece's ids, decoded as a sample is.

    The decoded score goes through MIDI bytes and back, as a sample does before it is checked:
    MIDI cannot hold two overlapping notes of one pitch on one channel, so the round trip is
    what makes a copied piece's notes equal the training piece's notes.
    """
    from symusic.core import ScoreTick

    midi = tokenizer.decode(ids.tolist()).dumps_midi()
    return score_hashes(ScoreTick.from_midi(midi))


def index_key(corpus_prefix: str) -> str:
    """Object key of a corpus's index: under the corpus's prefix, deleted with it."""
    return f"{corpus_prefix}/{INDEX_NAME}"


def build_and_store(
    store: ObjectStore, corpus_prefix: str, tokenizer: Tokenizer, train_ids: NDArray[np.int32]
) -> dict[str, Any]:
    """Build the index and write it (atomically) at :func:`index_key`; returns its figures for
    the corpus's stats."""
    t0 = time.perf_counter()
    index = build_index(tokenizer, train_ids)
    data = index.to_bytes()
    store.put(index_key(corpus_prefix), data)
    return {
        "ngram": NGRAM,
        "ngrams": int(index.hashes.size),
        "pieces": index.pieces,
        "bytes": len(data),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def load_or_build(store: ObjectStore, corpus_prefix: str, tokenizer: Tokenizer) -> NoveltyIndex:
    """The corpus's index, built from its stored training array (and stored) if missing.

    Pass a job's fenced store: the write then belongs to the job's claim.
    """
    from cadenza.storage import ObjectNotFound

    key = index_key(corpus_prefix)
    try:
        return NoveltyIndex.from_bytes(store.get(key))
    except ObjectNotFound:
        pass
    with tempfile.TemporaryDirectory(prefix="cadenza-novelty-") as tmp:
        path = Path(tmp) / "export.npz"
        with open(path, "wb") as f:
            for chunk in store.iter_chunks(f"{corpus_prefix}/export.npz"):
                f.write(chunk)
        with np.load(path) as z:
            train = np.asarray(z["train_data"])
    index = build_index(tokenizer, train)
    store.put(key, index.to_bytes())
    return index


__all__ = [
    "COPY_RESAMPLES",
    "GRID",
    "INDEX_NAME",
    "NGRAM",
    "NoveltyIndex",
    "build_and_store",
    "build_index",
    "index_key",
    "load_or_build",
    "ngram_hashes",
    "note_grid",
    "piece_hashes",
    "score_hashes",
    "sequences",
]
