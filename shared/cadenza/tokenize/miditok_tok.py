"""MidiTok's tokenizers behind Cadenza's :class:`Tokenizer` interface.

Single-stream ones (REMI, TSD, MIDILike, Structured, PerTok, MMM, BEAT) map directly; compound
ones (CPWord, Octuple, MuMIDI) are flattened, one id per tuple field (see
:class:`MidiTokCompoundTokenizer`). MidiTok produces the base ids; subword merges use our
:class:`SubwordModel` instead of MidiTok's ``train``, so that for every tokenizer (MidiTok's and
ours) base ids — PAD/BOS/EOS included — keep their values after BPE, Unigram or WordPiece, and
decoding a learned id never needs the Hugging Face model. Merges never cross a bar (or beat),
like MidiTok's ``encode_ids_split``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from symusic.core import ScoreTick as Score
from symusic.core import TempoTick, TimeSignatureTick, TrackTick, TrackTickList

from cadenza.midi.clean import notes_from_arrays
from cadenza.tokenize.base import (
    SubwordModel,
    Symbols,
    Tokenizer,
    count_bars,
    empty_symbols,
    sym_char,
)
from cadenza.tokenize.controls import BarFacts, ControlVocab
from cadenza.tokenize.grammar import (
    TIME_TYPES,
    Rules,
    TypeGraph,
    graph_from_miditok,
    note_group_graph,
    token_type,
    type_graph_rules,
)
from cadenza.tokenize.miditok_options import import_miditok, make_miditok, miditok_class
from cadenza.tokenize.spec import MIDITOK_MULTI_VOCAB, MIDITOK_SINGLE_STREAM, TokenizerSpec

_VERSION_KEYS = ("miditok_version", "symusic_version", "hf_tokenizers_version")


def _merge_to_one_track(score: Score) -> Score:
    """All non-empty tracks as one track (program of the first), for per-track tokenizers."""
    tracks = [t for t in score.tracks if len(t.notes) > 0]
    if len(tracks) <= 1:
        return score
    out = score.copy()
    merged = TrackTick(tracks[0].name, int(tracks[0].program), bool(tracks[0].is_drum))
    soas = [t.notes.numpy() for t in tracks]
    cat = {
        k: np.concatenate([s[k] for s in soas]) for k in ("time", "duration", "pitch", "velocity")
    }
    order = np.lexsort((cat["pitch"], cat["time"]))
    merged.notes = notes_from_arrays(
        *(cat[k][order] for k in ("time", "duration", "pitch", "velocity"))
    )
    out.tracks = TrackTickList([merged])
    return out


class MidiTokTokenizer(Tokenizer):
    """REMI, TSD, MIDILike, Structured, PerTok, MMM or BEAT, with optional subwords."""

    names = MIDITOK_SINGLE_STREAM

    def __init__(
        self, spec: TokenizerSpec, subword: SubwordModel | None = None, miditok_obj: Any = None
    ) -> None:
        super().__init__(spec)
        self.miditok: Any = (
            miditok_obj if miditok_obj is not None else make_miditok(spec.name, spec.config)
        )
        self.subword = subword
        vocab: dict[str, int] = self.miditok.vocab
        self._specials = frozenset(int(i) for i in self.miditok.special_tokens_ids)
        # What decoding drops: the specials, except MMM's track delimiters, without which
        # MidiTok would decode every track of a piece as one.
        keep = {int(vocab[t]) for t in ("Track_Start", "Track_End") if t in vocab}
        self._dropped = self._specials - keep
        self._pad = int(self.miditok.pad_token_id)
        self._bos = int(vocab["BOS_None"])
        self._eos = int(vocab["EOS_None"])
        self._split: str = self.miditok.config.encode_ids_split
        # MMM reads a single stream even though its config keeps tracks apart.
        self._single = bool(self.miditok.one_token_stream)
        self.controls: ControlVocab | None = None
        if spec.controls or spec.learn_tags:
            self.controls = ControlVocab(
                spec.controls, [], len(self.miditok.vocab), per_track=self._per_track
            )

    # ---- vocabulary -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.subword.vocab_size if self.subword else self.base_vocab_size

    @property
    def base_vocab_size(self) -> int:
        return len(self.miditok.vocab) + (self.controls.size if self.controls else 0)

    @property
    def own_vocab_size(self) -> int:
        """MidiTok's own base ids (0..n-1), without the control and tag ids after them. Not
        `len(self.miditok.vocab)`: a multi-vocabulary tokenizer's vocab is a list per field."""
        return self.base_vocab_size - (self.controls.size if self.controls else 0)

    def set_tags(self, tags: Sequence[str]) -> None:
        """Give the style tags of the corpus their ids (after the control ids); the merge calls
        this with every used file's tags before encoding, so the vocabulary does not depend on
        how files were divided between shards."""
        if self.controls is None or not self.spec.learn_tags:
            return
        self.controls = ControlVocab(
            self.spec.controls, tags, len(self.miditok.vocab), per_track=self._per_track
        )

    @property
    def _per_track(self) -> bool:
        """Whether per-bar controls are per track: MMM restarts its bars in every track."""
        from cadenza.tokenize.controls import PER_TRACK_TOKENIZERS

        return self.name in PER_TRACK_TOKENIZERS

    def with_tags(self, ids: NDArray[np.int32], tags: Sequence[str]) -> NDArray[np.int32]:
        """A file's final ids with its tags' tokens after the per-piece control tokens."""
        ctl = self.controls
        if ctl is None or not self.spec.learn_tags or ids.size == 0:
            return ids
        tag_ids = [i for t in sorted(set(tags)) if (i := ctl.tag_id(t)) is not None]
        if not tag_ids:
            return ids
        k = len(ctl.piece_slots)
        return np.concatenate([ids[:k], np.asarray(tag_ids, np.int32), ids[k:]]).astype(np.int32)

    def capabilities(self) -> dict[str, Any]:
        from cadenza.tokenize.controls import default_capabilities

        return self.controls.capabilities() if self.controls else default_capabilities()

    @property
    def pad_id(self) -> int:
        return self._pad

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def is_trained(self) -> bool:
        return self.spec.bpe is None or self.subword is not None

    def token_str(self, base_id: int) -> str:
        """MidiTok's name of a base id, e.g. ``"Pitch_60"`` (for debugging and tests)."""
        n = self.own_vocab_size
        if self.controls is not None and base_id >= n:
            return self.controls.names[int(base_id) - n]
        return str(self.miditok[int(base_id)])

    # ---- encoding ---------------------------------------------------------------------------
    def prepare(self, score: Score) -> Score:
        """Per-track tokenizers (no Program tokens) see one merged track: our models are
        single-stream, and concatenating tracks one after the other would not be music."""
        return score if self._single else _merge_to_one_track(score)

    def _encode(self, score: Score) -> Any:
        """MidiTok's TokSequence of a prepared score (no ids yet), or None if it has none."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seq = self.miditok.encode(score, encode_ids=False)
        if isinstance(seq, list):
            return seq[0] if seq else None
        return seq

    def symbols(self, score: Score) -> Symbols:
        score = self.prepare(score)
        seq = self._encode(score)
        if seq is None:
            return empty_symbols()
        ids = np.asarray(seq.ids, dtype=np.int32)
        bars = count_bars(score)
        starts = np.zeros(1, dtype=np.int32)
        if self._split in ("bar", "beat") and len(seq.events) == ids.size and ids.size > 0:
            ticks = seq._ticks_bars if self._split == "bar" else seq._ticks_beats
            times = np.fromiter((e.time for e in seq.events), dtype=np.int64, count=ids.size)
            # first event at or after each bar line; same rule as TokSequence._split_per_ticks
            cut = np.searchsorted(times, np.asarray(ticks[1:], dtype=np.int64), side="left")
            starts = np.unique(np.concatenate([[0], cut[cut < ids.size]])).astype(np.int32)
        if self.controls is not None:
            return self._with_controls(score, seq, ids, bars, starts)
        return Symbols(ids, starts, bars)

    @property
    def _bar_id(self) -> int:
        return int(self.miditok.vocab.get("Bar_None", -1))

    def bar_facts(self, score: Score) -> list[BarFacts]:
        """What each bar of ``score`` is like (notes, polyphony, pitch range, mean length), in
        the order of its Bar tokens: what the per-bar control tokens state, and what a steered
        sample realised."""
        score = self.prepare(score)
        seq = self._encode(score)
        return [] if seq is None else self._bar_facts(score, seq)

    def _bar_facts(self, score: Score, seq: Any) -> list[BarFacts]:
        from cadenza.tokenize.controls import bar_facts

        events = seq.events
        bar_at = [i for i, e in enumerate(events) if e.type_ == "Bar"]
        # MidiTok resamples the score before making events: this is its ticks per quarter
        cfg = self.miditok.config
        tpb = int(cfg.max_num_pos_per_beat)
        if cfg.use_time_signatures:
            dens = [int(ts.denominator) for ts in score.time_signatures]
            tpb = int(cfg.max_num_pos_per_beat * max([4, *dens]) / 4)
        out: list[BarFacts] = []
        for j, start in enumerate(bar_at):
            end = bar_at[j + 1] if j + 1 < len(bar_at) else len(events)
            ev = [events[k] for k in range(start, end) if events[k].type_ == "Pitch"]
            out.append(
                bar_facts(
                    [int(e.time) for e in ev],
                    [
                        int(e.desc) if isinstance(e.desc, int | np.integer) else int(e.time)
                        for e in ev
                    ],
                    [int(e.value) for e in ev],
                    tpb,
                )
            )
        return out

    def _with_controls(
        self,
        score: Score,
        seq: Any,
        ids: NDArray[np.int32],
        bars: int,
        starts: NDArray[np.int32],
    ) -> Symbols:
        """The piece's control tokens first, each Bar token followed by its bar's ones.

        Every control id, and with per-bar controls every ``Bar`` id (and MMM's track marks
        and programs), is a word of its own, so no subword piece ever contains one: a
        controlled corpus may use BPE, and the sampler still sees a bar (and a track) open
        from the plain ids and forces single control ids after it. The music's own word
        starts (bar or beat lines) are kept in between. In MMM, a bar's controls are measured
        on its own track's notes (the events from its Bar to the next Bar or Track_End).
        """
        from cadenza.tokenize.controls import bar_values

        ctl = self.controls
        assert ctl is not None
        piece = _piece_values(score)
        out: list[int] = []
        cuts: list[int] = []

        def alone(i: int) -> None:
            cuts.append(len(out))
            out.append(i)
            cuts.append(len(out))

        for s in ctl.piece_slots:
            alone(ctl.slot_id(s, piece[s.control]))
        music_starts = {int(c) for c in starts}
        facts = iter(self._bar_facts(score, seq)) if ctl.bar_slots else None
        bar_id = self._bar_id
        marks = self._track_ids() if facts is not None else frozenset()
        for j, raw in enumerate(ids):
            tok = int(raw)
            if j in music_starts:
                cuts.append(len(out))
            if tok in marks:
                alone(tok)
                continue
            if facts is None or tok != bar_id:
                out.append(tok)
                continue
            alone(tok)
            vals = bar_values(next(facts))
            for s in ctl.bar_slots:
                v = vals[s.control]
                value = v[0 if s.part == "low" else 1] if isinstance(v, tuple) else v
                alone(ctl.slot_id(s, value))
        word_starts = np.unique(np.asarray([0, *(c for c in cuts if c < len(out))], np.int32))
        return Symbols(np.asarray(out, np.int32), word_starts.astype(np.int32), bars)

    def _track_ids(self) -> frozenset[int]:
        """MMM's Track_Start, Track_End and Program ids (none for other tokenizers)."""
        if self.name != "MMM":
            return frozenset()
        return frozenset(
            int(i)
            for name, i in self.miditok.vocab.items()
            if name in ("Track_Start", "Track_End") or name.startswith("Program_")
        )

    def fit(self, train: Sequence[Symbols]) -> None:
        if self.spec.bpe is None:
            return
        words = [["".join(sym_char(int(b)) for b in w) for w in s.words()] for s in train]
        alphabet = [i for i in range(self.base_vocab_size) if i not in self._specials]
        self.subword = SubwordModel.train(
            words,
            base_size=self.base_vocab_size,
            alphabet=alphabet,
            bpe=self.spec.bpe,
            n_specials=len(self._specials),
        )

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        if self.spec.bpe is not None and self.subword is None:
            raise RuntimeError("this tokenizer's subwords are not learned yet; call fit() first")
        if self.subword is None:
            return [np.asarray(it.symbols, dtype=np.int32) for it in items]
        return self.subword.encode_batch(items)

    def base_ids(self, ids: Sequence[int]) -> list[int]:
        """Final ids → base ids without specials (MMM's track delimiters kept) or
        out-of-range ids."""
        base = self.subword.decode(ids) if self.subword else [int(i) for i in ids]
        n = self.own_vocab_size  # control and tag ids are not MidiTok's: never decoded
        return [i for i in base if 0 <= i < n and i not in self._dropped]

    def _decode_base(self, base: list[int]) -> Score:
        TokSequence = import_miditok().TokSequence  # noqa: N806 - a class

        tokens = [str(self.miditok[i]) for i in base]
        seq = TokSequence(tokens=tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.miditok.complete_sequence(seq)
            score: Score = self.miditok.decode(seq if self._single else [seq])
        return score

    def decode(self, ids: Sequence[int]) -> Score:
        base = self.base_ids(ids)
        try:
            return self._decode_base(base)
        except Exception:  # noqa: BLE001 - sampled ids can be anything; keep the longest valid prefix
            lo, hi = 0, len(base)  # invariant: base[:lo] decodes, base[:hi] does not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                try:
                    self._decode_base(base[:mid])
                    lo = mid
                except Exception:  # noqa: BLE001
                    hi = mid
            return self._decode_base(base[:lo]) if lo else self.empty_score()

    def empty_score(self) -> Score:
        """A score without notes at the tokenizer's time division (what nothing decodes to)."""
        score = Score(int(self.miditok.time_division))
        score.tempos.append(TempoTick(0, float(self.miditok.default_tempo)))
        score.time_signatures.append(TimeSignatureTick(0, 4, 4))
        return score

    # ---- grammar ----------------------------------------------------------------------------
    def grammar_excluded(self) -> frozenset[int]:
        """MidiTok's special tokens, except MMM's track marks (its encoder writes them)."""
        return frozenset(i for i in self._specials if not self._track_mark(i))

    def _track_mark(self, base_id: int) -> bool:
        return self.name == "MMM" and str(self.miditok[base_id]) in ("Track_Start", "Track_End")

    def type_graph(self) -> TypeGraph:
        """Which token type may follow which: MidiTok's own graph (the one its
        ``tokens_errors`` checks), completed where its encoder writes more than the graph
        says, or for PerTok (no graph in MidiTok) one from the shape of its notes."""
        names = [str(self.miditok[i]) for i in range(self.own_vocab_size)]
        excluded = self.grammar_excluded()
        types = {token_type(n) for i, n in enumerate(names) if i not in excluded}
        if self.name == "PerTok":
            cfg = self.miditok.config
            prefix = "Program" if cfg.use_programs and not cfg.program_changes else None
            succ = note_group_graph(
                types, ("Pitch", "PitchDrum"), ("MicroTiming", "Velocity", "Duration"), prefix
            )
        else:
            extra: dict[str, set[str]] = {}
            if self.name == "MMM":
                # MMM wraps each track of its base tokenizer in Track_Start, Program … Track_End;
                # MidiTok's graph lumps both marks into "Track" and misses Program -> Bar.
                base = set(graph_from_miditok(self.miditok.tokens_types_graph, types))
                # (Track_End is left out of the "may end a track" entries: listed after its
                # own entry, it replaced Track_End -> Track_Start and a second track could
                # never start)
                marks = ("Track_Start", "Program", "Track_End")
                extra = {
                    **{t: {"Track_End"} for t in base if t not in marks},
                    "Track_Start": {"Program"},
                    "Program": {"Bar", "TimeSig", "Position", "TimeShift", "Pitch", "Tempo"},
                    "Track_End": {"Track_Start"},
                }
            succ = graph_from_miditok(self.miditok.tokens_types_graph, types, extra=extra)
        if self.name == "MMM":
            start = frozenset({"Track_Start"})
        else:
            timing = TIME_TYPES & types
            start = frozenset(timing.union(*(succ.get(t, frozenset()) for t in timing)))
            if not timing:
                start = frozenset(types)
        return TypeGraph(succ, start)

    def grammar_transparent(self) -> list[int]:
        """Control and tag ids: the steer (`cadenza.sample.steer`) places them, so the grammar
        lets them through anywhere in a piece, leaving its state as it was."""
        return list(range(self.own_vocab_size, self.base_vocab_size))

    def grammar_rules(self) -> Rules:
        """MidiTok's token-type successions (a pitch is followed by its velocity and duration,
        a Bar by its TimeSig, …) and, where the vocabulary has Bar and Position tokens,
        positions strictly rising within a bar. Not checked: values (e.g. a position past the
        bar's time signature, a NoteOff without its NoteOn)."""
        excluded = self.grammar_excluded()
        names: list[str | None] = [
            None if i in excluded else str(self.miditok[i]) for i in range(self.own_vocab_size)
        ]
        graph = self.type_graph()
        types = set(graph.succ)
        return type_graph_rules(
            names,
            graph,
            track_positions={"Bar", "Position"} <= types,
            summary=f"{self.name}: token-type successions"
            + (", positions rising within a bar" if {"Bar", "Position"} <= types else ""),
        )

    # ---- persistence ------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        d = self.miditok.to_dict()
        for k in _VERSION_KEYS:
            d.pop(k, None)
        # Kept as a string: MidiTok numbers tokens in the order of its config dicts (e.g.
        # time_signature_range), which a key-sorting JSON dump would silently change.
        return {
            "miditok": json.dumps(d, default=list),
            "base_vocab": self.miditok.vocab,
            "subword": self.subword.state() if self.subword else None,
            **({"tags": self.controls.tags} if self.controls and self.spec.learn_tags else {}),
        }

    @classmethod
    def from_state(cls, spec: TokenizerSpec, state: dict[str, Any]) -> MidiTokTokenizer:
        obj = _miditok_from_dict(spec.name, json.loads(state["miditok"]))
        if obj.vocab != state["base_vocab"]:
            raise ValueError(
                f"the stored {spec.name} vocabulary differs from what this MidiTok version "
                "builds from the same options; retokenize the corpus with this version"
            )
        sub = state.get("subword")
        tok = cls(spec, miditok_obj=obj)
        tok.set_tags(state.get("tags") or [])
        # the pieces were learned over every base id, control and tag ids included
        tok.subword = SubwordModel.from_state(sub, tok.base_vocab_size) if sub else None
        return tok


class MidiTokCompoundTokenizer(MidiTokTokenizer):
    """CPWord, Octuple or MuMIDI, whose tokens are tuples, flattened for single-stream models.

    Each tuple (one id per sub-vocabulary) becomes K consecutive ids, sub-vocabulary k shifted
    by the sizes of the ones before it, so the id says which field it is. A model sees the
    K-periodic structure in the stream; decoding regroups ids into tuples (a field-0 id starts
    a tuple, fields must come in order) and fills a missing field with ``Ignore_None`` where the
    tokenizer has it, else with the previous tuple's value. No subwords (spec refuses them).
    """

    names = MIDITOK_MULTI_VOCAB

    def __init__(
        self, spec: TokenizerSpec, subword: SubwordModel | None = None, miditok_obj: Any = None
    ) -> None:
        miditok_obj = (
            miditok_obj if miditok_obj is not None else make_miditok(spec.name, spec.config)
        )
        vocabs: list[dict[str, int]] = miditok_obj.vocab
        self._sizes = [len(v) for v in vocabs]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)[:-1]]).astype(np.int64)
        specials = set(miditok_obj.config.special_tokens)
        self._special_field_ids = [
            frozenset(i for t, i in v.items() if t in specials) for v in vocabs
        ]
        self._fallback = [
            v.get("Ignore_None", min((i for t, i in v.items() if t not in specials), default=0))
            for v in vocabs
        ]
        self._has_ignore = ["Ignore_None" in v for v in vocabs]
        # the base class reads vocab["BOS_None"]; for tuples, field 0 carries the specials
        self.miditok = miditok_obj
        Tokenizer.__init__(self, spec)
        self.subword = None
        self.controls = None  # the spec refuses controls for tuple tokens
        self._specials = frozenset(int(i) for i in self._special_field_ids[0])
        self._pad = int(vocabs[0]["PAD_None"])
        self._bos = int(vocabs[0]["BOS_None"])
        self._eos = int(vocabs[0]["EOS_None"])
        self._split = "no"
        self._single = bool(miditok_obj.one_token_stream)

    @property
    def base_vocab_size(self) -> int:
        return int(sum(self._sizes))

    @property
    def vocab_size(self) -> int:
        return self.base_vocab_size

    def token_str(self, base_id: int) -> str:
        k = int(np.searchsorted(self._offsets, base_id, side="right")) - 1
        return str(self.miditok[k, int(base_id - self._offsets[k])])

    def symbols(self, score: Score) -> Symbols:
        score = self.prepare(score)
        seq = self._encode(score)
        if seq is None:
            return empty_symbols()
        off = self._offsets
        # MuMIDI tuples vary in length (3 fields, 5 for notes); CPWord/Octuple are fixed
        flat = np.fromiter(
            (off[k] + v for step in seq.ids for k, v in enumerate(step)), dtype=np.int64
        ).astype(np.int32)
        return Symbols(flat, np.zeros(1, dtype=np.int32), count_bars(score))

    def _fields(self, first: int) -> int:
        """How many fields the tuple that starts with field-0 id ``first`` has."""
        if self.name != "MuMIDI":
            return len(self._sizes)
        kind = str(self.miditok[0, first]).split("_")[0]
        return len(self._sizes) if kind in ("Pitch", "PitchDrum") else 3

    def fit(self, train: Sequence[Symbols]) -> None:
        return None  # nothing is learned: no subwords for tuples

    def ids_batch(self, items: Sequence[Symbols]) -> list[NDArray[np.int32]]:
        return [np.asarray(it.symbols, dtype=np.int32) for it in items]

    def steps(self, ids: Sequence[int]) -> list[list[int]]:
        """Regroup flat ids into complete tuples of per-field ids (see the class docstring)."""
        k_count = len(self._sizes)
        ends = self._offsets + np.asarray(self._sizes)
        out: list[list[int]] = []
        cur: list[int | None] = [None] * k_count
        last_k = -1
        prev: list[int] = list(self._fallback)

        def flush() -> None:
            nonlocal cur, last_k
            if cur[0] is not None:
                step = []
                for k in range(self._fields(cur[0])):
                    v = cur[k]
                    if v is None:
                        v = self._fallback[k] if self._has_ignore[k] else prev[k]
                    step.append(int(v))
                out.append(step)
                prev[: len(step)] = step
            cur = [None] * k_count
            last_k = -1

        for raw in ids:
            i = int(raw)
            if not 0 <= i < int(ends[-1]):
                continue
            k = int(np.searchsorted(self._offsets, i, side="right")) - 1
            v = i - int(self._offsets[k])
            if v in self._special_field_ids[k]:
                continue
            if k == 0:
                flush()
            elif k <= last_k or cur[0] is None or k >= self._fields(cur[0]):
                continue  # out of order, or no tuple started: not part of any token
            cur[k] = v
            last_k = k
        flush()
        return out

    def grammar_rules(self) -> Rules:
        """Tuples whole and in field order: a field-0 id opens a tuple, which then takes one
        id of each next field in turn (MuMIDI: 5 fields for a note, 3 otherwise), and a
        piece ends only between tuples. CPWord also: a Note tuple has Ignore for Bar/Position
        and real pitch, velocity and duration; a Metric tuple has Ignore for those; positions
        rise strictly within a bar (a Bar or a Rest resets), as MidiTok's ``tokens_errors``
        checks. MuMIDI also: MidiTok's type graph over the tuples' first fields (Bar →
        Position → Program → Pitch …) and rising positions. Not checked: other values that
        go together (e.g. Octuple's bar numbers, MuMIDI's bar and position encodings)."""
        bounds = [*(int(o) for o in self._offsets), self.base_vocab_size]
        field_of = np.zeros(self.base_vocab_size, dtype=np.int64)
        for k in range(len(self._sizes)):
            field_of[bounds[k] : bounds[k + 1]] = k
        fields0 = {v: self._fields(v) for v in range(self._sizes[0])}
        specials = self._special_field_ids
        cp = self.name == "CPWord"
        # per base id: (MidiTok type, value) for CPWord's value rules
        kinds = [str(self.token_str(b)).split("_", 1) for b in range(self.base_vocab_size)]
        idx: dict[str, int] = dict(getattr(self.miditok, "vocab_types_idx", {}) or {})
        note_fields = {idx[t] for t in ("Pitch", "PitchDrum", "Velocity", "Duration") if t in idx}
        where = idx.get("Position", idx.get("Bar", -1))
        mumidi = self.name == "MuMIDI"
        # MuMIDI: MidiTok's graph over the field-0 types (Bar, Position, Program, Pitch …)
        types0 = {kinds[b][0] for b in range(self._sizes[0]) if b not in specials[0]}
        graph0 = graph_from_miditok(self.miditok.tokens_types_graph, types0) if mumidi else {}
        timing0 = TIME_TYPES & types0
        start0 = frozenset(timing0.union(*(graph0.get(t, frozenset()) for t in timing0)))
        open0 = TypeGraph(graph0, start0).open_types()

        def mumidi_step(key: tuple[int, int, str, int], b: int) -> tuple[str, int] | None:
            """MuMIDI's rules for a field-0 id: the type graph and rising positions."""
            _, _, last, pos = key
            typ = kinds[b][0]
            if typ not in (start0 if last == "" else graph0.get(last, frozenset())):
                return None
            if typ == "Bar":
                return (typ, -1)
            if typ == "Position":
                value = int(kinds[b][1])
                return (typ, value) if value > pos else None
            return (typ, pos)

        def cp_step(key: tuple[int, int, str, int], k: int, b: int) -> tuple[str, int] | None:
            """CPWord's value rules for id ``b`` in field ``k``: the new (family, position)."""
            _, _, fam, pos = key
            typ = kinds[b][0]
            if k == 0:
                return (kinds[b][1] if len(kinds[b]) > 1 else "", pos)
            if fam == "Note" and k == where and typ != "Ignore":
                return None
            if k in note_fields and (typ == "Ignore") == (fam == "Note"):
                return None
            if typ == "Bar" or typ == "Rest":
                return (fam, -1)
            if typ == "Position":
                try:
                    value = int(kinds[b][1])
                except (IndexError, ValueError):
                    return (fam, pos)
                return (fam, value) if value > pos else None
            return (fam, pos)

        def step(key: object, b: int) -> object | None:
            assert isinstance(key, tuple)
            nxt, n, fam, pos = key
            k = int(field_of[b])
            v = b - bounds[k]
            if v in specials[k] or k != nxt:
                return None
            if k == 0:
                n = fields0[v]
            if cp or (mumidi and k == 0):
                moved = cp_step(key, k, b) if cp else mumidi_step(key, b)
                if moved is None:
                    return None
                fam, pos = moved
            if k + 1 >= n:  # the tuple is whole; MuMIDI remembers its type for the next
                return (0, 0, fam if mumidi else "", pos)
            return (k + 1, n, fam, pos)

        def can_end(key: object) -> bool:
            return isinstance(key, tuple) and key[0] == 0 and key[2] not in open0

        rules = {
            "CPWord": "; Note/Metric fields, positions rising within a bar",
            "MuMIDI": "; MidiTok's type graph over tuples, positions rising within a bar",
        }
        return Rules(
            (0, 0, "", -1),
            step,
            can_end,
            f"{self.name}: whole tuples, fields in order" + rules.get(self.name, ""),
        )

    def _decode_base(self, base: list[int]) -> Score:
        raise NotImplementedError  # compound tokens decode through _decode_steps

    def _decode_steps(self, steps: list[list[int]]) -> Score:
        TokSequence = import_miditok().TokSequence  # noqa: N806 - a class
        seq = TokSequence(ids=steps)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.miditok.complete_sequence(seq)
            score: Score = self.miditok.decode(seq if self._single else [seq])
        return score

    def decode(self, ids: Sequence[int]) -> Score:
        steps = self.steps(ids)
        if not steps:
            return self.empty_score()
        try:
            return self._decode_steps(steps)
        except Exception:  # noqa: BLE001 - sampled ids can be anything; keep the longest valid prefix
            lo, hi = 0, len(steps)
            while hi - lo > 1:
                mid = (lo + hi) // 2
                try:
                    self._decode_steps(steps[:mid])
                    lo = mid
                except Exception:  # noqa: BLE001
                    hi = mid
            return self._decode_steps(steps[:lo]) if lo else self.empty_score()


def _piece_values(score: Score) -> dict[str, str]:
    """Token values of a (prepared) score's per-piece controls: its first tempo, time
    signature and key signature (estimated from the notes when it has none) and the program
    of its first pitched track."""
    from cadenza.tokenize.base import pitched_notes
    from cadenza.tokenize.controls import (
        estimate_key,
        key_value,
        tempo_value,
        time_signature_value,
    )

    qpm = float(score.tempos[0].qpm) if len(score.tempos) else 120.0
    ts = score.time_signatures[0] if len(score.time_signatures) else None
    if len(score.key_signatures):
        ks = score.key_signatures[0]
        key = key_value(int(ks.key), bool(ks.tonality))
    else:
        notes = pitched_notes(score)
        hist = np.bincount(notes["pitch"] % 12, weights=notes["duration"] + 1, minlength=12)
        key = estimate_key([float(x) for x in hist])
    pitched = [t for t in score.tracks if not t.is_drum and len(t.notes)]
    return {
        "tempo": tempo_value(qpm),
        "time_signature": time_signature_value(ts.numerator, ts.denominator) if ts else "4/4",
        "key": key,
        "program": str(int(pitched[0].program)) if pitched else "0",
    }


def _miditok_from_dict(name: str, params: dict[str, Any]) -> Any:
    """A MidiTok tokenizer from its ``to_dict()`` (MidiTok only loads from a file path)."""
    fd, path = tempfile.mkstemp(suffix=".json", prefix="cadenza-tok-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(params, f)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return miditok_class(name)(params=path)
    finally:
        os.unlink(path)


__all__ = ["MidiTokCompoundTokenizer", "MidiTokTokenizer"]
