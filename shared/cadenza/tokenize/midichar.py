"""The "midichar" encoding as a Cadenza tokenizer: one Unicode character per note.

Each note becomes one Unicode character packing, in mixed radix, (pitch, velocity level, onset
step since the previous character, duration bin). The format comes from a minGPT "idea
generator"; its flaws there are fixed here:

* an OR mask forced a duration bit on, so every note decoded to ≥ 1.29 s — here durations are
  exact up to 16 steps (~0.25 s) and within ±4 % above, up to ``max_duration_s``;
* the decoder advanced a fixed 0.651 s per note — here time advances by the encoded step;
* each gap was rounded separately (error accumulates) and clamped gaps at 1 s — here onsets are
  rounded on an absolute grid and longer gaps are written as extra "rest" characters.

Time is in seconds (the format was made for transcribed performances). The base vocabulary is
the set of characters seen in the training files (``fit``), the way SentencePiece builds its
alphabet; an unseen character is encoded as the nearest known one (same pitch first). Text form:
:meth:`MidiCharTokenizer.to_text` / :meth:`from_text`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
from numpy.typing import NDArray
from symusic.core import ScoreSecond, TempoTick, TimeSignatureTick, TrackTick
from symusic.core import ScoreTick as Score

from cadenza.midi.clean import notes_from_arrays
from cadenza.tokenize.base import (
    OwnSpecials,
    SubwordModel,
    Symbols,
    Tokenizer,
    count_bars,
    empty_symbols,
    sym_char,
)
from cadenza.tokenize.grammar import Rules, free_rules
from cadenza.tokenize.options import MidiCharConfig
from cadenza.tokenize.spec import TokenizerSpec

_N_SPECIALS = 3
_TPQ = 480  # decoded scores: 480 ticks per quarter at 120 qpm = 960 ticks per second
_TICKS_PER_SECOND = 2 * _TPQ
_EXACT_DURATION_BINS = 16


def _char_of(value: int) -> str:
    return sym_char(value)


class MidiCharTokenizer(OwnSpecials, Tokenizer):
    """One character per note, alphabet learned from the training files."""

    names = ("midichar",)

    def __init__(
        self,
        spec: TokenizerSpec,
        alphabet: Sequence[int] | None = None,
        subword: SubwordModel | None = None,
    ) -> None:
        super().__init__(spec)
        c = self.cfg = MidiCharConfig.model_validate(spec.config)
        self.lo, self.hi = c.pitch_range
        self.n_pitch = self.hi - self.lo + 1  # index n_pitch = rest character
        self.r_step = c.max_step + 1
        max_units = c.max_duration_s * c.steps_per_second
        exact = min(_EXACT_DURATION_BINS, c.duration_bins - 1)
        rest = c.duration_bins - exact
        self.dur_units = np.concatenate(
            [
                np.arange(1, exact + 1, dtype=np.float64),
                np.geomspace(exact, max_units, rest + 1)[1:],
            ]
        )
        self._log_units = np.log(self.dur_units)
        self.alphabet = np.asarray(sorted(set(alphabet or ())), dtype=np.int64)
        self.subword = subword
        self._unpacked = self.unpack(self.alphabet)
        self._rest_values = np.asarray(
            [self.pack(self.n_pitch, 0, s, 0) for s in range(1, self.r_step)], dtype=np.int64
        )

    # ---- packing ----------------------------------------------------------------------------
    def pack(self, pitch_idx: int, vel_idx: int, step: int, dur_bin: int) -> int:
        """Mixed-radix value of one character (pitch_idx == n_pitch means "rest")."""
        c = self.cfg
        return (
            (pitch_idx * c.velocity_levels + vel_idx) * self.r_step + step
        ) * c.duration_bins + dur_bin

    def unpack(self, values: NDArray[np.int64]) -> tuple[NDArray[np.int64], ...]:
        """(pitch_idx, vel_idx, step, dur_bin) arrays of packed values."""
        c = self.cfg
        dur = values % c.duration_bins
        rest = values // c.duration_bins
        step = rest % self.r_step
        rest //= self.r_step
        vel = rest % c.velocity_levels
        return rest // c.velocity_levels, vel, step, dur

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.subword.vocab_size if self.subword else self.base_vocab_size

    @property
    def base_vocab_size(self) -> int:
        return _N_SPECIALS + int(self.alphabet.size)

    @property
    def is_trained(self) -> bool:
        return self.alphabet.size > 0 and (self.spec.bpe is None or self.subword is not None)

    # ---- encoding ---------------------------------------------------------------------------
    def values(self, score: Score) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Packed values of a score's characters, and each character's onset in seconds."""
        c = self.cfg
        sec = cast(ScoreSecond, score.to("second"))
        keys = ("time", "duration", "pitch", "velocity")
        soas = [t.notes.numpy() for t in sec.tracks if not t.is_drum and len(t.notes) > 0]
        if not soas:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        cat = {k: np.concatenate([np.asarray(s[k], dtype=np.float64) for s in soas]) for k in keys}
        keep = (cat["pitch"] >= self.lo) & (cat["pitch"] <= self.hi)
        if not keep.any():
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        cat = {k: v[keep] for k, v in cat.items()}
        onset = np.round(cat["time"] * c.steps_per_second).astype(np.int64)
        pitch = cat["pitch"].astype(np.int64)
        order = np.lexsort((pitch, onset))
        onset, pitch = onset[order], pitch[order]
        units = np.maximum(cat["duration"][order] * c.steps_per_second, 1e-9)
        dur_bin = np.abs(np.log(units)[:, None] - self._log_units[None, :]).argmin(axis=1)
        vel_level = np.clip(
            np.round(c.velocity_levels * cat["velocity"][order] / 127.0), 1, c.velocity_levels
        ).astype(np.int64)
        onset = np.maximum(onset, 0)
        gaps = np.diff(onset, prepend=0)
        out: list[int] = []
        times: list[float] = []
        t = 0
        for i in range(onset.size):
            g = int(gaps[i])
            while g > c.max_step:
                out.append(self.pack(self.n_pitch, 0, c.max_step, 0))
                t += c.max_step
                times.append(t / c.steps_per_second)
                g -= c.max_step
            t += g
            out.append(
                self.pack(int(pitch[i]) - self.lo, int(vel_level[i]) - 1, g, int(dur_bin[i]))
            )
            times.append(t / c.steps_per_second)
        return np.asarray(out, np.int64), np.asarray(times, np.float64)

    def to_text(self, score: Score) -> str:
        """The midichar text of a score (one character per note or rest)."""
        vals, _ = self.values(score)
        return "".join(_char_of(int(v)) for v in vals)

    def from_text(self, text: str) -> Score:
        """A score from midichar text; characters that are not valid values are skipped."""
        from cadenza.tokenize.base import _char_sym

        vals = [_char_sym(ch) for ch in text]
        return self._score_from_values(np.asarray([v for v in vals if v >= 0], np.int64))

    def symbols(self, score: Score) -> Symbols:
        vals, times = self.values(score)
        if vals.size == 0:
            return empty_symbols()
        word = np.floor(times / self.cfg.word_seconds).astype(np.int64)
        starts = np.flatnonzero(np.r_[True, word[1:] != word[:-1]]).astype(np.int32)
        return Symbols(vals.astype(np.int32), starts, count_bars(score))

    def fit(self, train: Sequence[Symbols]) -> None:
        seen = [np.unique(s.symbols.astype(np.int64)) for s in train if s.symbols.size]
        every = np.unique(np.concatenate([*seen, self._guaranteed()]))
        self.alphabet = every
        self._unpacked = self.unpack(every)
        if self.spec.bpe is not None:
            words = [
                ["".join(sym_char(int(b)) for b in w) for w in self._base(s).words()] for s in train
            ]
            self.subword = SubwordModel.train(
                words,
                base_size=self.base_vocab_size,
                alphabet=range(_N_SPECIALS, self.base_vocab_size),
                bpe=self.spec.bpe,
                n_specials=_N_SPECIALS,
            )

    def _guaranteed(self) -> NDArray[np.int64]:
        """Characters always in the alphabet so that any note keeps its pitch and onset: a rest
        for every step, and for every pitch a step-0 note (middle velocity, 1/4 s)."""
        c = self.cfg
        quarter_s = int(np.abs(self._log_units - np.log(0.25 * c.steps_per_second)).argmin())
        mid = (c.velocity_levels - 1) // 2
        notes = [self.pack(p, mid, 0, quarter_s) for p in range(self.n_pitch)]
        return np.concatenate([self._rest_values, np.asarray(notes, dtype=np.int64)])

    def _substitute(self, value: int) -> list[int]:
        """Alphabet indexes standing in for a character the training files never had.

        Pitch and onset are kept exactly: among known characters of the same pitch whose step is
        at most the wanted one, take the largest step (then the nearest duration, velocity) and
        put a rest character for the difference in front. Only duration and velocity may move.
        """
        p, v, step, d = (int(x[0]) for x in self.unpack(np.asarray([value], dtype=np.int64)))
        rests: list[int] = []

        def rest(k: int) -> None:
            if k > 0:
                rests.append(int(np.searchsorted(self.alphabet, self.pack(self.n_pitch, 0, k, 0))))

        if p >= self.n_pitch:
            rest(step)
            return rests
        ap, av, ast, ad = self._unpacked
        cand = np.flatnonzero((ap == p) & (ast <= step))
        cost = -1e6 * ast[cand] + 1e3 * np.abs(ad[cand] - d) + np.abs(av[cand] - v)
        best = int(cand[int(np.argmin(cost))])  # a step-0 character of each pitch always exists
        rest(step - int(ast[best]))
        return [*rests, best]

    def _base(self, item: Symbols) -> Symbols:
        """Symbols (packed values) → base ids; unseen characters are substituted (see
        :meth:`_substitute`), which can add ids, so word starts are moved along."""
        if self.alphabet.size == 0:
            raise RuntimeError("the midichar alphabet is not learned yet; call fit() first")
        values = item.symbols.astype(np.int64)
        idx = np.clip(np.searchsorted(self.alphabet, values), 0, self.alphabet.size - 1)
        known = self.alphabet[idx] == values
        if known.all():
            return Symbols((idx + _N_SPECIALS).astype(np.int32), item.word_starts, item.bars)
        pieces: list[list[int]] = [
            [int(idx[j])] if known[j] else self._substitute(int(values[j]))
            for j in range(values.size)
        ]
        offsets = np.cumsum([0] + [len(x) for x in pieces])
        flat = np.asarray([i for x in pieces for i in x], dtype=np.int64) + _N_SPECIALS
        starts = np.unique(offsets[np.clip(item.word_starts, 0, values.size)]).astype(np.int32)
        return Symbols(flat.astype(np.int32), starts, item.bars)

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        if self.spec.bpe is not None and self.subword is None:
            raise RuntimeError("this tokenizer's subwords are not learned yet; call fit() first")
        bases = [self._base(it) if it.symbols.size else it for it in items]
        if self.subword is None:
            return [np.asarray(b.symbols, dtype=np.int32) for b in bases]
        return self.subword.encode_batch(bases)

    def _score_from_values(self, vals: NDArray[np.int64]) -> Score:
        c = self.cfg
        score = Score(_TPQ)
        score.tempos.append(TempoTick(0, 120.0))
        score.time_signatures.append(TimeSignatureTick(0, 4, 4))
        track = TrackTick("midichar", 0, False)
        if vals.size:
            p, v, s, d = self.unpack(vals)
            t = np.cumsum(s)
            note = p < self.n_pitch
            if note.any():
                start = np.round(t[note] * _TICKS_PER_SECOND / c.steps_per_second)
                dur = np.round(self.dur_units[d[note]] * _TICKS_PER_SECOND / c.steps_per_second)
                vel = np.round(127.0 * (v[note] + 1) / c.velocity_levels)
                track.notes = notes_from_arrays(
                    start, np.maximum(dur, 1), p[note] + self.lo, np.clip(vel, 1, 127)
                )
        score.tracks.append(track)
        return score

    def decode(self, ids: Sequence[int]) -> Score:
        base = self.subword.decode(ids) if self.subword else [int(i) for i in ids]
        n = self.base_vocab_size
        keep = np.asarray([i - _N_SPECIALS for i in base if _N_SPECIALS <= i < n], dtype=np.int64)
        return self._score_from_values(self.alphabet[keep] if keep.size else keep)

    # ---- grammar ----------------------------------------------------------------------------
    def grammar_rules(self) -> Rules:
        """Every character is a whole note (or rest), so any one may follow any other: the
        rule set is only where PAD/BOS/EOS may stand (the builder's part)."""
        return free_rules(lambda b: b >= _N_SPECIALS, "midichar: any character; specials placed")

    # ---- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "alphabet": [int(x) for x in self.alphabet],
            "subword": self.subword.state() if self.subword else None,
        }

    @classmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> MidiCharTokenizer:
        tok = cls(spec, alphabet=state.get("alphabet") or ())
        sub = state.get("subword")
        if sub:
            tok.subword = SubwordModel.from_state(sub, tok.base_vocab_size)
        return tok


__all__ = ["MidiCharTokenizer"]
