"""Editing multi-track MMM token sequences: bars and tracks cut out, filled in, put back.

A piece in MidiTok's MMM encoding (REMI underneath) is one stream of tracks, each
``Track_Start Program_p Bar … Bar … Track_End``, where every ``Bar`` token opens a bar whose
*body* (positions, pitches, velocities, durations, a time signature) runs to the next ``Bar``
or ``Track_End``. That structure is visible in the ids alone, so editing needs no MidiTok:

* **training** (:func:`layout_example`): a range of bars of every track of one piece, some
  bar bodies of one track (a run of bars, or all its bars in view: an accompaniment) taken
  out as holes and written by the model, in one of two layouts (:data:`InfillLayout`):
  ``spm`` (the default; suffix, then prefix, then middle, as fill-in-the-middle for code
  models does): the other tracks, the edited track's bars after the hole between
  ``FillBar_Start`` and ``FillBar_End``, then the edited track up to the hole
  (:func:`spm_layout`), and the hole's bars right there, where a continuation would write
  them; ``mmm`` (the Multi-Track Music Machine's bar fill): one ``Infill_Bar`` placeholder
  per hole in the piece and the bars appended after it, each between ``FillBar_Start`` and
  ``FillBar_End`` (:func:`layout`; :func:`infill_example` does it inside a window when a
  piece is too wide). ``spm`` measured lower infill NLL at the same size (BENCHMARKS.md):
  the bars are written next to their left context, which a small model attends to best;
* **sampling** (:mod:`cadenza.sample.edit`): the same layout is built for a region of a real
  piece, the model writes each bar until the token that ends it (``Bar`` or
  ``FillBar_End``), and :func:`fill_body` cleans each before it goes back in its bar.

Torch-free and MidiTok-free: the training data stream and the API's capability check use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: The special tokens a multi-track corpus adds to MidiTok's (PAD, BOS, EOS, MASK) for
#: editing: a bar's placeholder, and the markers around the bars written for the holes
#: (``mmm``) or shown after them (``spm``).
INFILL_SPECIALS = ("Infill_Bar", "FillBar_Start", "FillBar_End")
#: MidiTok's own special tokens, in its order (the ids 0..3 every MidiTok vocabulary starts with).
MIDITOK_SPECIALS = ("PAD", "BOS", "EOS", "MASK")
#: Chance that a training infill example cuts a whole track (accompaniment) rather than bars.
TRACK_CUT_CHANCE = 0.25
#: At most this many consecutive bars are cut from a track in one bar-infill example.
MAX_CUT_BARS = 4
#: Chance that a training example of the ``spm`` layout also leaves the same bars of some
#: other tracks as placeholders (what an infill of several tracks shows while it writes one).
OTHER_TRACKS_CUT_CHANCE = 0.25

#: How a fill-in-the-middle example (and an edit's prompt) is laid out.
#: ``spm`` (the default): the other tracks, then the edited track's bars after the hole
#: (the suffix) between ``FillBar_Start`` and ``FillBar_End``, then the edited track from its
#: ``Track_Start`` up to the hole (the prefix); the model writes the hole's bars right after
#: their left context, as in a continuation, each ended by the next ``Bar``, and then
#: ``FillBar_End``. ``mmm``: the bar-fill scheme of the Multi-Track Music Machine (the piece
#: with an ``Infill_Bar`` placeholder per hole, the fills appended at the end, each between
#: ``FillBar_Start`` and ``FillBar_End``); models trained before ``spm`` existed use it.
InfillLayout = Literal["spm", "mmm"]
INFILL_LAYOUTS: tuple[InfillLayout, ...] = ("spm", "mmm")


def vocab_key(name: str) -> str:
    """MidiTok's vocabulary key of a special token: ``"Infill_Bar"`` stays, ``"PAD"`` is
    ``"PAD_None"`` (a special token without a value gets ``_None``)."""
    return name if "_" in name else f"{name}_None"


def supports_editing(spec: Mapping[str, Any] | None) -> bool:
    """Whether a corpus's tokenizer spec (JSON form) can carry infill examples: MMM without
    subwords (a learned piece could swallow a bar line) and with the infill special tokens."""
    if not spec or spec.get("name") != "MMM" or spec.get("bpe"):
        return False
    specials = (spec.get("config") or {}).get("special_tokens") or []
    return all(t in specials for t in INFILL_SPECIALS)


@dataclass(frozen=True)
class MMMIds:
    """The ids of the structural tokens of one MMM vocabulary."""

    bos: int
    eos: int
    pad: int
    track_start: int
    track_end: int
    bar: int
    fill_bar: int
    fill_start: int
    fill_end: int
    programs: Mapping[int, int] = field(default_factory=dict)  # GM program (-1 drums) -> id

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int]) -> MMMIds:
        """From MidiTok's ``vocab`` (token name -> id); KeyError names a missing token."""
        missing = [
            t
            for t in ("Track_Start", "Track_End", "Bar_None", *map(vocab_key, INFILL_SPECIALS))
            if t not in vocab
        ]
        if missing:
            raise KeyError(
                f"the tokenizer has no {', '.join(missing)} token(s): build the corpus with the "
                "`multitrack` preset to train a model that edits"
            )
        programs = {
            int(name.split("_", 1)[1]): int(i)
            for name, i in vocab.items()
            if name.startswith("Program_")
        }
        return cls(
            bos=int(vocab["BOS_None"]),
            eos=int(vocab["EOS_None"]),
            pad=int(vocab["PAD_None"]),
            track_start=int(vocab["Track_Start"]),
            track_end=int(vocab["Track_End"]),
            bar=int(vocab["Bar_None"]),
            fill_bar=int(vocab["Infill_Bar"]),
            fill_start=int(vocab["FillBar_Start"]),
            fill_end=int(vocab["FillBar_End"]),
            programs=programs,
        )

    @property
    def structural(self) -> frozenset[int]:
        """Ids that never belong inside a bar's body."""
        return frozenset(
            {
                self.bos,
                self.eos,
                self.pad,
                self.track_start,
                self.track_end,
                self.bar,
                self.fill_bar,
                self.fill_start,
                self.fill_end,
                *self.programs.values(),
            }
        )


# ------------------------------------------------------------------------------ a whole piece


@dataclass
class Track:
    """One MMM track: the tokens after ``Track_Start`` before its first bar (its program), and
    each bar's body (without its ``Bar`` token)."""

    head: list[int]
    bars: list[list[int]]


def parse_tracks(ids: Sequence[int], t: MMMIds) -> list[Track]:
    """The tracks of a whole encoded piece (BOS/EOS and anything outside a track ignored)."""
    tracks: list[Track] = []
    cur: Track | None = None
    for raw in ids:
        i = int(raw)
        if i == t.track_start:
            cur = Track([], [])
            tracks.append(cur)
        elif cur is None:
            continue
        elif i == t.track_end:
            cur = None
        elif i == t.bar:
            cur.bars.append([])
        elif cur.bars:
            cur.bars[-1].append(i)
        else:
            cur.head.append(i)
    return tracks


def n_bars(tracks: Sequence[Track]) -> int:
    """The piece's bar count: its longest track's."""
    return max((len(tr.bars) for tr in tracks), default=0)


def render(
    tracks: Sequence[Track],
    t: MMMIds,
    *,
    bars: range | None = None,
    holes: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> list[int]:
    """The MMM ids of ``tracks`` over ``bars`` (default: each track's own bars, as MidiTok
    encoded them), with the body of each (track, bar) in ``holes`` replaced by the
    ``Infill_Bar`` placeholder. A track shorter than the range or a hole gets empty bars."""
    out: list[int] = []
    for k, tr in enumerate(tracks):
        span = bars
        if span is None:
            last = max((b + 1 for kk, b in holes if kk == k), default=0)
            span = range(max(len(tr.bars), last))
        out += [t.track_start, *tr.head]
        for b in span:
            out.append(t.bar)
            if (k, b) in holes:
                out.append(t.fill_bar)
            elif b < len(tr.bars):
                out += tr.bars[b]
        out.append(t.track_end)
    return out


def layout(
    tracks: Sequence[Track],
    t: MMMIds,
    holes: Sequence[tuple[int, int]],
    *,
    bars: range | None = None,
) -> list[int]:
    """The prompt an edit starts from: the piece (over ``bars``) with its holes, ready for the
    first ``FillBar_Start``. ``holes`` are (track index, bar index) in the order the fills are
    written: track by track, bar by bar, the order the placeholders appear in."""
    return render(tracks, t, bars=bars, holes=set(holes))


def fill_body(new: Sequence[int], t: MMMIds, stop: int | None = None) -> list[int]:
    """A generated fill as a bar body: up to ``stop`` (default ``FillBar_End``; the ``spm``
    layout ends a bar at the next ``Bar``), structural tokens dropped (a fill that opened a
    bar or a track would move every bar after it)."""
    body: list[int] = []
    skip = t.structural
    end = t.fill_end if stop is None else stop
    for raw in new:
        i = int(raw)
        if i == end:
            break
        if i not in skip:
            body.append(i)
    return body


def hole_order(tracks: Sequence[int], bars: Sequence[int]) -> list[tuple[int, int]]:
    """(track, bar) holes in the order their placeholders appear in a rendered piece."""
    return [(k, b) for k in sorted(set(tracks)) for b in sorted(set(bars))]


def spm_layout(
    tracks: Sequence[Track],
    t: MMMIds,
    track: int,
    run: range,
    *,
    bars: range,
    holes: set[tuple[int, int]] | frozenset[tuple[int, int]] = frozenset(),
) -> list[int]:
    """The ``spm`` prompt for writing bars ``run`` of ``tracks[track]``, over ``bars``: every
    other track (its ``holes`` as ``Infill_Bar``), the track's bars after ``run`` between
    ``FillBar_Start`` and ``FillBar_End`` (a hole there is an ``Infill_Bar`` too), then the
    track's ``Track_Start``, head and bars before ``run``. The first bar written follows as
    ``Bar`` and its body, exactly where a continuation of the prefix would put it."""
    others = [tr for k, tr in enumerate(tracks) if k != track]
    moved = {(k - (k > track), b) for k, b in holes if k != track}
    out = render(others, t, bars=bars, holes=moved)
    tr = tracks[track]

    def bar(b: int) -> list[int]:
        if (track, b) in holes:
            return [t.bar, t.fill_bar]
        return [t.bar, *(tr.bars[b] if b < len(tr.bars) else [])]

    out.append(t.fill_start)
    for b in range(run.stop, bars.stop):
        out += bar(b)
    out += [t.fill_end, t.track_start, *tr.head]
    for b in range(bars.start, run.start):
        out += bar(b)
    return out


# ------------------------------------------------------------------------ training examples


def _bar_spans(w: np.ndarray[Any, Any], t: MMMIds) -> list[tuple[int, int, int]]:
    """Complete bars of a window: (index of the Bar token, end of its body, track number),
    where the track number counts Track_Start tokens seen (bars of one track share it)."""
    spans: list[tuple[int, int, int]] = []
    track = 0
    open_bar = -1
    for pos, raw in enumerate(w.tolist()):
        if raw == t.track_start:
            track += 1
            open_bar = -1
        elif raw == t.bar or raw == t.track_end:
            if open_bar >= 0:
                spans.append((open_bar, pos, track))
            open_bar = pos if raw == t.bar else -1
    return spans


def _runs(spans: list[tuple[int, int, int]]) -> list[list[tuple[int, int, int]]]:
    """Maximal runs of consecutive complete bars of one track."""
    runs: list[list[tuple[int, int, int]]] = []
    for s in spans:
        if runs and runs[-1][-1][2] == s[2] and runs[-1][-1][1] == s[0]:
            runs[-1].append(s)
        else:
            runs.append([s])
    return runs


def infill_example(
    w: np.ndarray[Any, Any], t: MMMIds, rng: np.random.Generator
) -> np.ndarray[Any, Any]:
    """A training window turned into a fill-in-the-middle example of the same length.

    Chooses (with ``rng``) every complete bar of one track in the window (chance
    ``TRACK_CUT_CHANCE``: a track written to go with the others, which is what accompanying
    asks for) or a run of 1..``MAX_CUT_BARS`` of them; each cut bar's body becomes one
    ``Infill_Bar`` and is appended after the window, between ``FillBar_Start`` and
    ``FillBar_End``, in placeholder order. Each cut bar adds 3 ids, so as many are dropped
    from the window's start (cut bars are chosen beyond them). A window with no bar to cut
    comes back unchanged.
    """
    spans = _bar_spans(w, t)
    if not spans:
        return w
    chosen: list[tuple[int, int, int]] | None = None
    runs = _runs(spans)
    if rng.random() < TRACK_CUT_CHANCE:
        whole = [r for r in runs if len(r) > 1 and r[0][0] >= 3 * len(r)]
        if whole:
            chosen = whole[int(rng.integers(len(whole)))]
    if chosen is None:
        want = int(rng.integers(1, MAX_CUT_BARS + 1))
        candidates = [
            (r, i) for r in runs for i in range(len(r)) if r[i][0] >= 3 * min(want, len(r) - i)
        ]
        if not candidates:
            return w
        run, i = candidates[int(rng.integers(len(candidates)))]
        chosen = run[i : i + want]
    out: list[int] = []
    tail: list[int] = []
    pos = 0
    arr = w.tolist()
    for bar_at, end, _ in chosen:
        out += arr[pos : bar_at + 1]
        out.append(t.fill_bar)
        tail += [t.fill_start, *arr[bar_at + 1 : end], t.fill_end]
        pos = end
    out += arr[pos:]
    out += tail
    drop = len(out) - w.size
    return np.asarray(out[drop:], dtype=w.dtype)


def layout_example(
    tracks: Sequence[Track],
    t: MMMIds,
    rng: np.random.Generator,
    length: int,
    style: InfillLayout = "spm",
) -> list[int] | None:
    """A fill-in-the-middle example laid out as sampling lays out its prompts, in ``style``:
    a range of bars of every track of one piece with holes, and the holes' bars written
    (``mmm``: between fill markers after the piece; ``spm``: after the edited track's
    prefix, each opened by ``Bar``, then ``Bar FillBar_End``).

    The holes are (chance ``TRACK_CUT_CHANCE``) every bar of the range in one track, or a
    run of 1..``MAX_CUT_BARS`` bars of one track; the range grows from the holes' bars, one
    bar at a time on a random side, while the example fits ``length`` ids (a run that does
    not fit is shortened first). In ``spm``, with chance ``OTHER_TRACKS_CUT_CHANCE``, some
    other tracks show the same bars as placeholders. BOS leads when the range starts at the
    piece's first bar. None when not even one bar of every track fits.
    """
    count = n_bars(tracks)
    bodies = [tr for tr in tracks if tr.bars]
    if count == 0 or not bodies:
        return None
    k = int(rng.integers(len(tracks)))
    if not tracks[k].bars:
        return None
    own = len(tracks[k].bars)
    run = int(rng.integers(1, MAX_CUT_BARS + 1))
    first = int(rng.integers(0, max(1, own - run + 1)))
    bars = list(range(first, min(own, first + run)))
    whole = rng.random() < TRACK_CUT_CHANCE
    others: list[int] = []
    if style == "spm" and not whole and rng.random() < OTHER_TRACKS_CUT_CHANCE:
        others = [j for j in range(len(tracks)) if j != k and rng.random() < 0.5]

    def build(lo: int, hi: int) -> list[int]:
        cut = range(lo, hi) if whole else range(bars[0], bars[-1] + 1)
        head = [t.bos] if lo == 0 else []
        if style == "spm":
            blank = {(j, b) for j in others for b in cut}
            out = head + spm_layout(tracks, t, k, cut, bars=range(lo, hi), holes=blank)
            for b in cut:
                out += [t.bar, *(tracks[k].bars[b] if b < own else [])]
            return [*out, t.bar, t.fill_end]
        holes = [(k, b) for b in cut]
        out = head + layout(tracks, t, holes, bars=range(lo, hi))
        for _, b in holes:
            body = tracks[k].bars[b] if b < own else []
            out += [t.fill_start, *body, t.fill_end]
        return out

    lo, hi = bars[0], bars[-1] + 1
    best = build(lo, hi)
    while len(best) > length and hi - lo > 1:  # fewer bars, down to one, until it fits
        hi -= 1
        bars = bars[: hi - lo]
        best = build(lo, hi)
    if len(best) > length:
        return None
    while lo > 0 or hi < count:
        left = lo > 0 and (hi >= count or rng.random() < 0.5)
        trial = build(lo - 1, hi) if left else build(lo, hi + 1)
        if len(trial) > length:
            break
        best = trial
        lo, hi = (lo - 1, hi) if left else (lo, hi + 1)
    return best


__all__ = [
    "INFILL_LAYOUTS",
    "INFILL_SPECIALS",
    "MAX_CUT_BARS",
    "MIDITOK_SPECIALS",
    "MMMIds",
    "OTHER_TRACKS_CUT_CHANCE",
    "InfillLayout",
    "TRACK_CUT_CHANCE",
    "Track",
    "fill_body",
    "hole_order",
    "infill_example",
    "layout",
    "layout_example",
    "n_bars",
    "parse_tracks",
    "render",
    "spm_layout",
    "supports_editing",
    "vocab_key",
]
