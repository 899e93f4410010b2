"""The "chord-duration" encoding (from a Keras GRU/LSTM model) as a Cadenza tokenizer.

All parts merged on a 16th-note grid. For each onset: a separator, the steps since the previous
onset, an optional tempo token when the tempo bin changes, then (pitch, duration) pairs from the
highest pitch down. Durations are capped (128 steps by default); gaps longer than ``max_shift``
are written as several separator groups, so no silence is lost. The encoding has no velocity.

Base vocabulary, in id order: PAD BOS EOS SEP, Shift_0..Shift_max, Note_lo..Note_hi,
Dur_1..Dur_max, Tempo_0..Tempo_n-1 (361 ids with the defaults; the Keras original had 312 with
4 spare).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from symusic.core import ScoreTick as Score
from symusic.core import TempoTick, TimeSignatureTick, TrackTick

from cadenza.midi.clean import notes_from_arrays
from cadenza.tokenize.base import (
    OwnSpecials,
    SubwordModel,
    Symbols,
    Tokenizer,
    count_bars,
    empty_symbols,
    pitched_notes,
    sym_char,
)
from cadenza.tokenize.grammar import Rules
from cadenza.tokenize.options import ChordDurationConfig
from cadenza.tokenize.spec import TokenizerSpec

SEP = 3
_N_SPECIALS = 4
_TICKS_PER_STEP = 120  # decoded scores use tpq = 120 × steps_per_quarter: exact grid ticks


class ChordDurationTokenizer(OwnSpecials, Tokenizer):
    """The chord-duration token format with the same interface as MidiTok's tokenizers."""

    names = ("chord-duration",)

    def __init__(self, spec: TokenizerSpec, subword: SubwordModel | None = None) -> None:
        super().__init__(spec)
        self.cfg = ChordDurationConfig.model_validate(spec.config)
        c = self.cfg
        self.lo, self.hi = c.pitch_range
        self.shift0 = _N_SPECIALS
        self.note0 = self.shift0 + c.max_shift + 1
        self.dur0 = self.note0 + (self.hi - self.lo + 1)
        self.tempo0 = self.dur0 + c.max_duration
        self._size = self.tempo0 + c.num_tempos
        self.tempos = (
            np.geomspace(c.tempo_range[0], c.tempo_range[1], c.num_tempos)
            if c.num_tempos
            else np.zeros(0)
        )
        self.subword = subword

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.subword.vocab_size if self.subword else self._size

    @property
    def base_vocab_size(self) -> int:
        return self._size

    @property
    def is_trained(self) -> bool:
        return self.spec.bpe is None or self.subword is not None

    def token_str(self, i: int) -> str:
        """Human-readable name of a base id (``"Note_60"``, ``"Dur_4"``, …)."""
        if i < _N_SPECIALS:
            return ("PAD", "BOS", "EOS", "SEP")[i]
        if i < self.note0:
            return f"Shift_{i - self.shift0}"
        if i < self.dur0:
            return f"Note_{i - self.note0 + self.lo}"
        if i < self.tempo0:
            return f"Dur_{i - self.dur0 + 1}"
        if i < self._size:
            return f"Tempo_{self.tempos[i - self.tempo0]:.1f}"
        raise IndexError(i)

    def _tempo_bin(self, qpm: float) -> int:
        return int(np.argmin(np.abs(np.log(self.tempos) - np.log(max(qpm, 1e-3)))))

    # ---- encoding ---------------------------------------------------------------------------
    def symbols(self, score: Score) -> Symbols:
        c = self.cfg
        notes = pitched_notes(score)
        keep = (notes["pitch"] >= self.lo) & (notes["pitch"] <= self.hi)
        if not keep.any():
            return empty_symbols()
        step = int(score.ticks_per_quarter) / c.steps_per_quarter
        onset = np.round(notes["time"][keep] / step).astype(np.int64)
        dur = np.clip(np.round(notes["duration"][keep] / step), 1, c.max_duration).astype(np.int64)
        pitch = notes["pitch"][keep]
        # one note per (onset, pitch), the longest; order: onset up, pitch down
        order = np.lexsort((-dur, -pitch, onset))
        onset, dur, pitch = onset[order], dur[order], pitch[order]
        first = np.ones(onset.size, dtype=bool)
        first[1:] = (onset[1:] != onset[:-1]) | (pitch[1:] != pitch[:-1])
        onset, dur, pitch = onset[first], dur[first], pitch[first]

        tempo_steps: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        tempo_bins: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        if c.num_tempos and len(score.tempos):
            tempo_steps = np.array([round(int(t.time) / step) for t in score.tempos], np.int64)
            tempo_bins = np.array([self._tempo_bin(float(t.qpm)) for t in score.tempos], np.int64)

        out: list[int] = []
        starts: list[int] = [0]
        prev = 0
        cur_tempo = -1
        word = 0
        group_starts = np.flatnonzero(np.r_[True, onset[1:] != onset[:-1]])
        group_ends = np.r_[group_starts[1:], onset.size]
        for gs, ge in zip(group_starts, group_ends, strict=True):
            t = int(onset[gs])
            if t // c.word_steps != word and out:
                starts.append(len(out))
            word = t // c.word_steps
            shift = t - prev
            while shift > c.max_shift:
                out += [SEP, self.shift0 + c.max_shift]
                shift -= c.max_shift
            out += [SEP, self.shift0 + shift]
            prev = t
            if tempo_bins.size:
                k = int(np.searchsorted(tempo_steps, t, side="right")) - 1
                b = int(tempo_bins[max(k, 0)])
                if b != cur_tempo:
                    out.append(self.tempo0 + b)
                    cur_tempo = b
            for j in range(gs, ge):
                out += [self.note0 + int(pitch[j]) - self.lo, self.dur0 + int(dur[j]) - 1]
        return Symbols(
            np.asarray(out, dtype=np.int32), np.asarray(starts, dtype=np.int32), count_bars(score)
        )

    def fit(self, train: Sequence[Symbols]) -> None:
        if self.spec.bpe is None:
            return
        words = [["".join(sym_char(int(b)) for b in w) for w in s.words()] for s in train]
        self.subword = SubwordModel.train(
            words,
            base_size=self._size,
            alphabet=range(_N_SPECIALS, self._size),
            bpe=self.spec.bpe,
            n_specials=_N_SPECIALS,
        )

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        if self.spec.bpe is not None and self.subword is None:
            raise RuntimeError("this tokenizer's subwords are not learned yet; call fit() first")
        if self.subword is None:
            return [np.asarray(it.symbols, dtype=np.int32) for it in items]
        return self.subword.encode_batch(items)

    def decode(self, ids: Sequence[int]) -> Score:
        """A forgiving state machine: a Note without Dur lasts one step, a Dur without Note and
        anything unknown are ignored, a Shift without SEP still moves time."""
        c = self.cfg
        base = self.subword.decode(ids) if self.subword else [int(i) for i in ids]
        tpq = _TICKS_PER_STEP * c.steps_per_quarter
        score = Score(tpq)
        score.time_signatures.append(TimeSignatureTick(0, 4, 4))
        time = 0
        pending: int | None = None
        times: list[int] = []
        durs: list[int] = []
        pitches: list[int] = []
        tempo_events: list[tuple[int, float]] = []

        def flush(d: int) -> None:
            nonlocal pending
            if pending is not None:
                times.append(time)
                durs.append(d)
                pitches.append(pending)
                pending = None

        for i in base:
            if self.shift0 <= i < self.note0:
                flush(1)
                time += i - self.shift0
            elif self.note0 <= i < self.dur0:
                flush(1)
                pending = i - self.note0 + self.lo
            elif self.dur0 <= i < self.tempo0:
                flush(i - self.dur0 + 1)
            elif self.tempo0 <= i < self._size:
                flush(1)
                qpm = float(self.tempos[i - self.tempo0])
                if not tempo_events or tempo_events[-1][1] != qpm:
                    tempo_events.append((time, qpm))
            else:  # PAD/BOS/EOS/SEP or out of range
                flush(1)
        flush(1)
        if not tempo_events or tempo_events[0][0] != 0:
            tempo_events.insert(0, (0, 120.0))
        for t, qpm in tempo_events:
            score.tempos.append(TempoTick(t * _TICKS_PER_STEP, qpm))
        track = TrackTick("chord-duration", 0, False)
        if times:
            n = len(times)
            track.notes = notes_from_arrays(
                np.asarray(times, np.int64) * _TICKS_PER_STEP,
                np.asarray(durs, np.int64) * _TICKS_PER_STEP,
                np.asarray(pitches, np.int64),
                np.full(n, c.velocity, np.int64),
            )
        score.tracks.append(track)
        return score

    # ---- grammar ----------------------------------------------------------------------------
    def grammar_rules(self) -> Rules:
        """The encoder's order exactly: SEP, a shift (0 only for the first group; a full
        ``max_shift`` may be followed by another SEP, the longer-gap case), an optional tempo,
        then (pitch, duration) pairs with pitches strictly falling; a piece ends after a
        duration. Not checked: that a tempo token changes the tempo."""
        c = self.cfg
        shift0, note0, dur0, tempo0, size = (
            self.shift0,
            self.note0,
            self.dur0,
            self.tempo0,
            self._size,
        )

        def step(key: object, b: int) -> object | None:
            assert isinstance(key, tuple)
            phase, arg = key
            is_note = note0 <= b < dur0
            if b == SEP:
                ok = phase in ("start", "shift_max", "dur")
                return ("sep", phase == "start") if ok else None
            if shift0 <= b < note0:
                s = b - shift0
                if phase != "sep" or (s == 0 and not arg):
                    return None
                return ("shift_max", 0) if s == c.max_shift else ("shift", 0)
            if tempo0 <= b < size:
                return ("tempo", 0) if phase in ("shift", "shift_max") else None
            if is_note:
                p = b - note0
                if phase in ("shift", "shift_max", "tempo") or (phase == "dur" and p < arg):
                    return ("note", p)
                return None
            if dur0 <= b < tempo0:
                return ("dur", arg) if phase == "note" else None
            return None

        return Rules(
            ("start", 0),
            step,
            lambda key: isinstance(key, tuple) and key[0] in ("start", "dur"),
            "chord-duration: the encoder's token order, pitches falling within an onset",
        )

    # ---- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"subword": self.subword.state() if self.subword else None}

    @classmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> ChordDurationTokenizer:
        tok = cls(spec)
        sub = state.get("subword")
        if sub:
            tok.subword = SubwordModel.from_state(sub, tok._size)
        return tok


__all__ = ["ChordDurationTokenizer"]
