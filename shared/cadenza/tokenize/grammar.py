"""Token grammars: which ids may come next, as a finite automaton with one table per tokenizer.

A sampled model can write a pitch without its velocity, a position behind the previous one in
the same bar or half a compound tuple; decoders drop such tokens, so the music silently loses
notes. Constrained sampling (`cadenza.sample.constrain`) masks them instead. Each tokenizer
states its rules once, over its *base* ids, as :class:`Rules`: a start key, a step function
``(key, base id) -> next key | None`` (None = forbidden) and which keys may end a piece.
:func:`build_grammar` explores the keys reachable from the start (breadth first), and turns them
into a table ``next[state, id]`` (-1 = forbidden) over the *final* vocabulary:

* specials: PAD never; BOS at a piece's start or after EOS (training windows run over
  concatenated files); EOS where the rules allow a piece to end, leading to a state where only
  BOS may follow;
* a subword piece (BPE, Unigram, WordPiece) goes where the base ids it stands for go, one after
  the other, so a piece is allowed exactly when its expansion is: the table is exact for
  subword vocabularies too, and composing it is vectorized over all pieces.

The rules must accept every sequence the tokenizer itself encodes (no false masks):
``tests/unit/test_grammar.py`` checks that on real chorales for every tokenizer. They may accept
more than the encoder writes (each tokenizer's docstring says which rule set it enforces).
Torch-free: the sampler turns the table into device tensors.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from cadenza.tokenize.base import Tokenizer

Key = Hashable


@dataclass(frozen=True)
class Rules:
    """A tokenizer's grammar over its base ids (specials excluded; the builder adds them)."""

    start: Key
    step: Callable[[Key, int], Key | None]
    can_end: Callable[[Key], bool]
    #: what the rules enforce, in a sentence (shown by `describe`, kept in docs)
    summary: str


@dataclass
class Grammar:
    """The automaton: ``table[state, id]`` is the next state, or -1 where ``id`` is forbidden."""

    table: NDArray[np.int32]  # (states, vocab)
    start: int
    ended: int  # after EOS: only BOS may follow
    summary: str
    _allowed: NDArray[np.bool_] | None = field(default=None, repr=False)

    @property
    def num_states(self) -> int:
        return int(self.table.shape[0])

    @property
    def vocab_size(self) -> int:
        return int(self.table.shape[1])

    def allowed(self) -> NDArray[np.bool_]:
        """(states, vocab) booleans: which ids each state allows."""
        if self._allowed is None:
            self._allowed = self.table >= 0
        return self._allowed

    def walk(self, ids: Iterable[int], state: int | None = None) -> tuple[int, int]:
        """Follow ``ids`` from ``state`` (default: a piece's start): (final state, violations).

        A forbidden id (or one outside the vocabulary) counts as a violation and leaves the
        state where it was, so one bad token is counted once and the rest is still checked.
        """
        s = self.start if state is None else state
        bad = 0
        table, v = self.table, self.vocab_size
        for raw in ids:
            i = int(raw)
            nxt = int(table[s, i]) if 0 <= i < v else -1
            if nxt < 0:
                bad += 1
            else:
                s = nxt
        return s, bad

    def first_violation(self, ids: Sequence[int], state: int | None = None) -> int | None:
        """Index of the first forbidden id of ``ids``, or None when the grammar accepts them."""
        s = self.start if state is None else state
        for k, raw in enumerate(ids):
            i = int(raw)
            nxt = int(self.table[s, i]) if 0 <= i < self.vocab_size else -1
            if nxt < 0:
                return k
            s = nxt
        return None


def build_grammar(
    rules: Rules,
    *,
    base_size: int,
    vocab_size: int,
    pad: int,
    bos: int,
    eos: int,
    excluded: Iterable[int] = (),
    pieces: Sequence[Sequence[int]] = (),
    transparent: Iterable[int] = (),
) -> Grammar:
    """Explore ``rules`` from its start over the base ids and add specials and subword pieces.

    ``excluded``: base ids never allowed (other specials, e.g. MidiTok's MASK). ``pieces``:
    the base ids each final id ``base_size + n`` stands for. ``transparent``: base ids the
    rules do not know (attribute-control and tag tokens, which the sampler's steer places),
    allowed in every state of a piece and leaving it unchanged.
    """
    through = sorted(set(transparent))
    skip = {pad, bos, eos, *excluded, *through}
    base = [b for b in range(base_size) if b not in skip]
    keys: dict[Key, int] = {rules.start: 0}
    order: list[Key] = [rules.start]
    rows: list[dict[int, int]] = []
    k = 0
    while k < len(order):
        key = order[k]
        row: dict[int, int] = {}
        for b in base:
            nk = rules.step(key, b)
            if nk is None:
                continue
            idx = keys.get(nk)
            if idx is None:
                idx = keys[nk] = len(order)
                order.append(nk)
            row[b] = idx
        rows.append(row)
        k += 1
    n = len(order)
    ended = n
    table = np.full((n + 1, vocab_size), -1, dtype=np.int32)
    for s, row in enumerate(rows):
        if row:
            cols = np.fromiter(row.keys(), dtype=np.int64, count=len(row))
            table[s, cols] = np.fromiter(row.values(), dtype=np.int32, count=len(row))
        if rules.can_end(order[s]):
            table[s, eos] = ended
    if through:
        table[:n, through] = np.arange(n, dtype=np.int32)[:, None]
    table[0, bos] = 0
    table[ended, bos] = 0
    if pieces:
        _add_pieces(table, base_size, pieces)
    empty = np.flatnonzero((table >= 0).sum(axis=1) == 0)
    if empty.size:  # a state with no way on would leave the sampler nothing to draw
        raise ValueError(f"grammar has dead states: {[order[i] for i in empty[:3]]}")
    return Grammar(table, 0, ended, rules.summary)


def _add_pieces(table: NDArray[np.int32], base_size: int, pieces: Sequence[Sequence[int]]) -> None:
    """Fill the columns of subword pieces by composing their base ids' transitions."""
    n_states = table.shape[0]
    dead = n_states  # an extra row: forbidden stays forbidden
    ext = np.full((n_states + 1, base_size), dead, dtype=np.int64)
    base_part = table[:, :base_size].astype(np.int64)
    ext[:n_states] = np.where(base_part >= 0, base_part, dead)
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    if lengths.size == 0:
        return
    longest = int(lengths.max())
    mat = np.zeros((len(pieces), longest), dtype=np.int64)
    for j, p in enumerate(pieces):
        mat[j, : len(p)] = [min(max(int(b), 0), base_size - 1) for b in p]
    out_of_range = np.fromiter(
        (any(not 0 <= int(b) < base_size for b in p) for p in pieces), dtype=bool, count=len(pieces)
    )
    cur = np.broadcast_to(np.arange(n_states, dtype=np.int64)[:, None], (n_states, len(pieces)))
    cur = cur.copy()
    for pos in range(longest):
        live = lengths > pos
        cur[:, live] = ext[cur[:, live], mat[live, pos][None, :]]
    cur[:, out_of_range | (lengths == 0)] = dead
    table[:, base_size : base_size + len(pieces)] = np.where(cur == dead, -1, cur).astype(np.int32)


def grammar_for(tokenizer: Tokenizer) -> Grammar:
    """The tokenizer's grammar, built once per tokenizer object (sampling jobs reuse it)."""
    cached: Grammar | None = getattr(tokenizer, "_cadenza_grammar", None)
    if cached is None:
        cached = tokenizer.grammar()
        object.__setattr__(tokenizer, "_cadenza_grammar", cached)
    return cached


# ---------------------------------------------------------------------------------------------
# rule sets shared by several tokenizers


def free_rules(allowed: Callable[[int], bool], summary: str) -> Rules:
    """One state: every id ``allowed`` says yes to may follow any other (midichar)."""

    def step(key: Key, b: int) -> Key | None:
        return 0 if allowed(b) else None

    return Rules(0, step, lambda key: True, summary)


def cycle_rules(period: int, allowed: Callable[[int], bool], summary: str) -> Rules:
    """Ids come in groups of ``period`` (quarter-vq: 16 codes per quarter note); a piece ends
    only on a group boundary."""

    def step(key: Key, b: int) -> Key | None:
        assert isinstance(key, int)
        return (key + 1) % period if allowed(b) else None

    return Rules(0, step, lambda key: key == 0, summary)


#: Token types that only exist as part of a note (MidiTok names); a type whose successors are
#: all of these leaves a note open, so a piece may not end after it.
NOTE_PART_TYPES = frozenset(
    {
        "Pitch",
        "PitchDrum",
        "NoteOn",
        "DrumOn",
        "Velocity",
        "Duration",
        "MicroTiming",
        "Pattern",
        "PitchIntervalTime",
        "PitchIntervalChord",
    }
)
#: Types that move or mark time; a piece starts with one of them or with what may follow one.
TIME_TYPES = frozenset({"Bar", "Position", "TimeShift", "TimeSig", "Tempo", "Rest", "Beat"})


def token_type(name: str) -> str:
    """MidiTok's token type of a token name ("Pitch_60" → "Pitch"); MMM's track marks stay
    whole ("Track_Start", "Track_End"), since they play different roles."""
    if name in ("Track_Start", "Track_End"):
        return name
    return name.split("_", 1)[0]


@dataclass(frozen=True)
class TypeGraph:
    """Which token type may follow which, and which types may start a piece."""

    succ: dict[str, frozenset[str]]
    start: frozenset[str]

    def open_types(self) -> frozenset[str]:
        """Types after which a note is unfinished (every successor is a note part)."""
        return frozenset(t for t, s in self.succ.items() if s and s <= NOTE_PART_TYPES)


def type_graph_rules(
    names: Sequence[str | None], graph: TypeGraph, *, track_positions: bool, summary: str
) -> Rules:
    """Rules over MidiTok token types: the type graph, and with ``track_positions`` (a Bar /
    Position vocabulary) positions strictly rising within a bar (a Bar or Track_Start resets;
    so does a Rest, which MidiTok lets cross a bar line without a Bar token).

    ``names[b]`` is base id b's name, None for specials. Key: (last type, position in bar).
    """
    types = [token_type(n) if n is not None else None for n in names]
    pos_value: list[int | None] = [None] * len(names)
    for b, n in enumerate(names):
        if n is not None and types[b] == "Position":
            try:
                pos_value[b] = int(n.split("_", 1)[1])
            except ValueError:
                pos_value[b] = None
    open_types = graph.open_types()
    start_key: Key = ("^", -1)

    def step(key: Key, b: int) -> Key | None:
        assert isinstance(key, tuple)
        last, pos = key
        t = types[b]
        if t is None:
            return None
        allowed = graph.start if last == "^" else graph.succ.get(last, frozenset())
        if t not in allowed:
            return None
        if not track_positions:
            return (t, -1)
        if t in ("Bar", "Track_Start", "Rest"):  # a rest may run past the bar line
            return (t, -1)
        if t == "Position":
            v = pos_value[b]
            if v is None:
                return (t, pos)
            if v <= pos:
                return None
            return (t, v)
        return (t, pos)

    def can_end(key: Key) -> bool:
        assert isinstance(key, tuple)
        return key[0] not in open_types

    return Rules(start_key, step, can_end, summary)


def graph_from_miditok(
    raw: dict[str, Iterable[str]], types: Iterable[str], *, extra: dict[str, set[str]] | None = None
) -> dict[str, frozenset[str]]:
    """MidiTok's ``tokens_types_graph`` restricted to the vocabulary's types (specials out),
    plus ``extra`` edges where MidiTok's graph misses successions its own encoder writes."""
    present = set(types)
    out: dict[str, set[str]] = {t: set() for t in present}
    for t, succ in raw.items():
        if t in present:
            out[t] |= {s for s in succ if s in present}
    for t, succ in (extra or {}).items():
        if t in present:
            out[t] |= {s for s in succ if s in present}
    return {t: frozenset(s) for t, s in out.items()}


def note_group_graph(
    types: Iterable[str], heads: Sequence[str], tail: Sequence[str], prefix: str | None
) -> dict[str, frozenset[str]]:
    """A type graph from the shape of a note: ``[prefix] head tail…``, all other types free.

    For tokenizers MidiTok gives no graph (PerTok): a head is followed by its tail in order,
    the last part of a note (or a free type) by a free type, a head or the prefix.
    """
    present = set(types)
    heads = [h for h in heads if h in present]
    tail = [t for t in tail if t in present]
    prefix = prefix if prefix in present else None
    free = present - set(heads) - set(tail) - ({prefix} if prefix else set())
    openers = set(heads) if prefix is None else {prefix}
    after_note = frozenset(free | openers)
    succ: dict[str, frozenset[str]] = {t: after_note for t in free}
    if prefix:
        succ[prefix] = frozenset(heads)
    chain = [*tail]
    for h in heads:
        succ[h] = frozenset({chain[0]}) if chain else after_note
    for a, b in zip(chain, chain[1:], strict=False):
        succ[a] = frozenset({b})
    if chain:
        succ[chain[-1]] = after_note
    return succ


__all__ = [
    "NOTE_PART_TYPES",
    "TIME_TYPES",
    "Grammar",
    "Rules",
    "TypeGraph",
    "build_grammar",
    "cycle_rules",
    "free_rules",
    "grammar_for",
    "graph_from_miditok",
    "note_group_graph",
    "token_type",
    "type_graph_rules",
]
