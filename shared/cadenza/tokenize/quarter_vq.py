"""The "quarter-vq" tokenizer: a VQ-VAE over quarter-note piano rolls, learned from the corpus.

A VQ-VAE over quarter-note piano-roll slices is the tokenizer; a GPT over its codes is the
prior, trained by the ordinary corpus → train → sample machinery (the bachsformer project's
design).

* ``symbols(score)``: all non-drum tracks merged; time on a grid of 32 columns per quarter at
  the score's own ticks per quarter (assuming 480 and dropping non-note delta times makes the
  timing drift); pitches 21-108. Each quarter is packed losslessly into 176 int32 symbols:
  88 "held" bitmasks (bit c set while a note sounds in column c) then 88 "onset" bitmasks (bit
  c set where a note starts). Notes crossing quarter boundaries are split: they are held in
  both quarters, with an onset only in the first, so the split is reversible.
* ``fit(train)``: trains the VQ-VAE (:mod:`cadenza.models.vqvae`) on the training
  quarters, seeded; a seeded share of them is held out to measure reconstruction
  (:meth:`QuarterVQTokenizer.fit_stats`).
* ``ids(symbols)``: 16 code ids per quarter (an 8 × 2 grid of codes, row-major), after the
  specials PAD, BOS, EOS; the vocabulary is specials + codebook.
* ``decode(ids)``: codes → decoder → sigmoid > threshold → notes, quarter after quarter;
  an incomplete trailing quarter is ignored.

Onsets vs. held notes: in one plain binary roll, two repeated notes of one pitch melt into one.
Here the roll the network sees clears the last column of a note that is immediately re-struck
(unless that note is only one column long), so repeated notes stay two runs of cells and decode
as two notes (each 1/32 quarter shorter). The symbols themselves keep the onset plane, so
``symbols → notes`` is exact on the grid.

torch is imported only inside the methods that train or run the network.
"""

from __future__ import annotations

import time as _time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from symusic.core import ScoreTick as Score
from symusic.core import TempoTick, TimeSignatureTick, TrackTick

from cadenza.midi.clean import notes_from_arrays
from cadenza.tokenize.base import (
    OwnSpecials,
    Symbols,
    Tokenizer,
    count_bars,
    empty_symbols,
    pitched_notes,
)
from cadenza.tokenize.grammar import Rules, cycle_rules
from cadenza.tokenize.options import CODES_PER_QUARTER, QuarterVQConfig
from cadenza.tokenize.spec import TokenizerSpec

if TYPE_CHECKING:
    from cadenza.models.vqvae import QuarterVQVAE

N_SPECIALS = 3
LOW_PITCH = 21
ROWS = 88  # pitches 21..108
COLS = 32  # columns per quarter note
PER_QUARTER = 2 * ROWS  # held masks, then onset masks
OUT_TPQ = 480  # decoded scores: 480 ticks per quarter, 15 ticks per column
_MAX_EVAL = 1024  # quarters used for each reconstruction figure (inference is not free on CPU)
#: Longest file encoded (about 68 minutes at 240 qpm); bounds the planes' memory (~230 MB).
MAX_QUARTERS = 16384


# ---- packing ----------------------------------------------------------------------------------


def notes_to_planes(
    notes: dict[str, NDArray[np.int64]], tpq: int
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Held and onset planes (88, quarters·32) of notes, on 32 columns per quarter at ``tpq``.

    Onset and end are rounded to the nearest column; a note keeps at least one column.
    """
    keep = (notes["pitch"] >= LOW_PITCH) & (notes["pitch"] < LOW_PITCH + ROWS)
    t, d, p = notes["time"][keep], notes["duration"][keep], notes["pitch"][keep] - LOW_PITCH
    if t.size == 0:
        return np.zeros((ROWS, 0), bool), np.zeros((ROWS, 0), bool)
    on = (t * COLS * 2 + tpq) // (2 * tpq)  # round half up, in integers (no float drift)
    off = ((t + d) * COLS * 2 + tpq) // (2 * tpq)
    on = np.maximum(on, 0)
    off = np.maximum(off, on + 1)
    quarters = -(-int(off.max()) // COLS)
    if quarters > MAX_QUARTERS:
        raise ValueError(
            f"{quarters} quarter notes long; quarter-vq encodes at most {MAX_QUARTERS}"
        )
    width = quarters * COLS
    delta = np.zeros((ROWS, width + 1), np.int32)
    np.add.at(delta, (p, on), 1)
    np.add.at(delta, (p, off), -1)
    held = np.cumsum(delta, axis=1)[:, :width] > 0
    onset = np.zeros((ROWS, width), bool)
    onset[p, on] = True
    return held, onset


def pack_planes(held: NDArray[np.bool_], onset: NDArray[np.bool_]) -> NDArray[np.int32]:
    """(88, Q·32) planes → (Q·176,) int32: per quarter 88 held masks, then 88 onset masks."""
    q = held.shape[1] // COLS
    both = np.concatenate([held, onset], axis=0).reshape(PER_QUARTER, q, COLS).transpose(1, 0, 2)
    packed = np.packbits(both.astype(np.uint8), axis=-1, bitorder="little")  # (Q, 176, 4)
    return np.ascontiguousarray(packed).view("<u4")[..., 0].astype("<u4").view("<i4").reshape(-1)


def unpack_planes(symbols: NDArray[np.int32]) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Inverse of :func:`pack_planes` (a trailing incomplete quarter is ignored)."""
    q = symbols.size // PER_QUARTER
    words = np.ascontiguousarray(symbols[: q * PER_QUARTER].astype("<i4")).view("<u4")
    bits = np.unpackbits(words.view(np.uint8).reshape(q, PER_QUARTER, 4), axis=-1, count=COLS,
                         bitorder="little").astype(bool)  # fmt: skip
    flat = bits.transpose(1, 0, 2).reshape(PER_QUARTER, q * COLS)
    return flat[:ROWS], flat[ROWS:]


def vq_roll(held: NDArray[np.bool_], onset: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The single binary roll the VQ-VAE sees: held cells, except the last column of a note
    that is re-struck right after it (kept when that note is one column long)."""
    roll = held.copy()
    if roll.shape[1] > 1:
        restruck = onset[:, 1:] & held[:, :-1] & ~onset[:, :-1]
        roll[:, :-1] &= ~restruck
    return roll


def planes_to_notes(
    held: NDArray[np.bool_], onset: NDArray[np.bool_] | None = None
) -> NDArray[np.int64]:
    """(n, 3) array of (onset column, length in columns, pitch) from planes; without ``onset``
    every run of held cells is one note. Sorted by onset, then pitch."""
    if onset is None:
        onset = np.zeros_like(held)
    out = []
    prev = np.zeros_like(held)
    prev[:, 1:] = held[:, :-1]
    starts_mask = held & (onset | ~prev)
    stops_mask = ~held | starts_mask
    for r in np.flatnonzero(starts_mask.any(axis=1)):
        starts = np.flatnonzero(starts_mask[r])
        stops = np.append(np.flatnonzero(stops_mask[r]), held.shape[1])
        ends = stops[np.searchsorted(stops, starts, side="right")]
        out.append(np.stack([starts, ends - starts, np.full(starts.size, r + LOW_PITCH)], 1))
    if not out:
        return np.zeros((0, 3), np.int64)
    notes = np.concatenate(out).astype(np.int64)
    return notes[np.lexsort((notes[:, 2], notes[:, 0]))]


def quarter_rolls(symbols: NDArray[np.int32]) -> NDArray[np.uint8]:
    """(Q, 88, 32) VQ input rolls of one file's symbols."""
    held, onset = unpack_planes(symbols)
    roll = vq_roll(held, onset)
    q = roll.shape[1] // COLS
    return np.ascontiguousarray(roll.reshape(ROWS, q, COLS).transpose(1, 0, 2)).astype(np.uint8)


def reconstruction(truth: NDArray[np.uint8], pred: NDArray[np.uint8]) -> dict[str, float]:
    """Cell accuracy, cell F1, note F1 (pitch + onset column, per quarter) and exact quarters."""
    t, p = truth.astype(bool), pred.astype(bool)
    tp = float((t & p).sum())
    cell_f1 = 2 * tp / max(float(t.sum() + p.sum()), 1.0)

    def onsets(x: NDArray[np.bool_]) -> NDArray[np.bool_]:
        prev = np.zeros_like(x)
        prev[..., 1:] = x[..., :-1]
        return x & ~prev

    ot, op = onsets(t), onsets(p)
    note_f1 = 2 * float((ot & op).sum()) / max(float(ot.sum() + op.sum()), 1.0)
    return {
        "bit_accuracy": round(float((t == p).mean()) if t.size else 1.0, 6),
        "cell_f1": round(cell_f1, 6),
        "note_f1": round(note_f1, 6),
        "exact_quarters": round(float((t == p).all(axis=(1, 2)).mean()) if len(t) else 1.0, 6),
    }


# ---- tokenizer --------------------------------------------------------------------------------


class QuarterVQTokenizer(OwnSpecials, Tokenizer):
    """Quarter-note rolls ⇄ VQ-VAE codes, learned by :meth:`fit`."""

    names = ("quarter-vq",)

    def __init__(self, spec: TokenizerSpec) -> None:
        super().__init__(spec)
        self.cfg = QuarterVQConfig.model_validate(spec.config)
        self._model: QuarterVQVAE | None = None
        self._weights: dict[str, Any] | None = None  # weights_state of the model
        self._report: dict[str, Any] = {}  # deterministic fit figures, part of the state
        self._fit_seconds: float | None = None

    # ---- vocabulary ---------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return N_SPECIALS + self.cfg.codebook_size

    @property
    def base_vocab_size(self) -> int:
        return self.vocab_size

    @property
    def is_trained(self) -> bool:
        return self._weights is not None

    def _net(self) -> QuarterVQVAE:
        if self._weights is None:
            raise RuntimeError("the quarter-vq VQ-VAE is not trained yet; call fit() first")
        if self._model is None:
            from cadenza.models.vqvae import model_from_state

            self._model = model_from_state(self.cfg, self._weights)
        return self._model

    # ---- encoding -----------------------------------------------------------------------------
    def symbols(self, score: Score) -> Symbols:
        held, onset = notes_to_planes(pitched_notes(score), int(score.ticks_per_quarter))
        if held.shape[1] == 0:
            return empty_symbols()
        return Symbols(pack_planes(held, onset), np.zeros(1, np.int32), count_bars(score))

    def symbols_to_score(self, item: Symbols | NDArray[np.int32]) -> Score:
        """The notes the symbols hold, exactly (on the grid): the packing's inverse."""
        syms = item.symbols if isinstance(item, Symbols) else item
        held, onset = unpack_planes(np.asarray(syms, np.int32))
        return self._score(planes_to_notes(held, onset))

    def fit(self, train: Sequence[Symbols]) -> None:
        from cadenza.models.vqvae import (
            decode_codes,
            encode_rolls,
            train_vqvae,
            weights_state,
        )

        t0 = _time.perf_counter()
        parts = [quarter_rolls(s.symbols) for s in train if s.symbols.size >= PER_QUARTER]
        if not parts:
            raise ValueError("quarter-vq: the training files have no quarter notes to learn from")
        rolls = np.concatenate(parts)
        rng = np.random.default_rng(self.cfg.seed)
        order = rng.permutation(len(rolls))
        n_hold = int(len(rolls) * self.cfg.holdout_fraction) if len(rolls) >= 10 else 0
        held_out, fit_on = rolls[order[:n_hold]], rolls[np.sort(order[n_hold:])]
        model = train_vqvae(fit_on, self.cfg)
        self._weights = weights_state(model)
        self._model = None  # re-read from the saved weights: the same numbers after a reload
        net = self._net()
        report: dict[str, Any] = {
            "quarters_fit": int(len(fit_on)),
            "quarters_held_out": int(n_hold),
            "steps": self.cfg.steps,
        }
        sample = fit_on[: _MAX_EVAL] if len(fit_on) <= _MAX_EVAL else fit_on[
            np.sort(rng.choice(len(fit_on), _MAX_EVAL, replace=False))
        ]  # fmt: skip
        for name, part in (("train", sample), ("held_out", held_out[:_MAX_EVAL])):
            if len(part):
                codes = encode_rolls(net, part)
                report[name] = reconstruction(part, decode_codes(net, codes, self.cfg.threshold))
                if name == "train":
                    report["codes_used"] = int(np.unique(codes).size)
        self._report = report
        self._fit_seconds = _time.perf_counter() - t0

    def fit_stats(self) -> dict[str, Any]:
        report = dict(self._report)
        if self._fit_seconds is not None:
            report["fit_seconds"] = round(self._fit_seconds, 3)
        return report

    def codes(self, item: Symbols) -> NDArray[np.int64]:
        """(quarters, 16) code indexes (0 … codebook_size-1) of one encoded file."""
        from cadenza.models.vqvae import encode_rolls

        if item.symbols.size < PER_QUARTER:
            return np.zeros((0, CODES_PER_QUARTER), np.int64)
        return encode_rolls(self._net(), quarter_rolls(item.symbols))

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        return [(self.codes(it).reshape(-1) + N_SPECIALS).astype(np.int32) for it in items]

    def _score(self, notes: NDArray[np.int64]) -> Score:
        ticks = OUT_TPQ // COLS
        score = Score(OUT_TPQ)
        score.tempos.append(TempoTick(0, self.cfg.qpm))
        score.time_signatures.append(TimeSignatureTick(0, 4, 4))
        track = TrackTick("quarter-vq", 0, False)
        if len(notes):
            track.notes = notes_from_arrays(
                notes[:, 0] * ticks,
                notes[:, 1] * ticks,
                notes[:, 2],
                np.full(len(notes), self.cfg.velocity),
            )
        score.tracks.append(track)
        return score

    def decode(self, ids: Sequence[int]) -> Score:
        from cadenza.models.vqvae import decode_codes

        k = self.cfg.codebook_size
        codes = np.asarray(
            [int(i) - N_SPECIALS for i in ids if N_SPECIALS <= int(i) < N_SPECIALS + k], np.int64
        )
        q = codes.size // CODES_PER_QUARTER
        if q == 0:
            return self._score(np.zeros((0, 3), np.int64))
        rolls = decode_codes(
            self._net(), codes[: q * CODES_PER_QUARTER].reshape(q, -1), self.cfg.threshold
        )
        flat = rolls.astype(bool).transpose(1, 0, 2).reshape(ROWS, q * COLS)
        return self._score(planes_to_notes(flat))

    # ---- grammar ------------------------------------------------------------------------------
    def grammar_rules(self) -> Rules:
        """Codes come 16 to a quarter note (the decoder drops an unfinished quarter), so a
        piece ends only after a whole quarter; any code may stand at any place of it."""
        k = self.cfg.codebook_size
        return cycle_rules(
            CODES_PER_QUARTER,
            lambda b: N_SPECIALS <= b < N_SPECIALS + k,
            f"quarter-vq: whole quarters of {CODES_PER_QUARTER} codes",
        )

    # ---- persistence --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"weights": self._weights, "report": self._report}

    @classmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> QuarterVQTokenizer:
        tok = cls(spec)
        tok._weights = state.get("weights")
        tok._report = dict(state.get("report") or {})
        return tok


__all__ = [
    "CODES_PER_QUARTER",
    "COLS",
    "PER_QUARTER",
    "QuarterVQTokenizer",
    "notes_to_planes",
    "pack_planes",
    "planes_to_notes",
    "quarter_rolls",
    "reconstruction",
    "unpack_planes",
    "vq_roll",
]
