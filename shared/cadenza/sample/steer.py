"""Steer sampling with attribute controls and style tags: force conditioning tokens in place.

A model trained on a corpus with ``controls`` (``cadenza.tokenize.controls``) saw, after BOS,
one token per per-piece control then the file's tags, and after every ``Bar`` token one token
per per-bar control slot. :class:`Steer` replays that grammar while sampling:

* the first steps of an unprimed piece are the per-piece slots: a requested value is forced,
  an unrequested slot may take any value of its control (the model picks), then the requested
  tags are forced;
* whenever a row samples ``Bar``, its next steps are that bar's slots, forced to the request's
  value for that bar (bar 0 is the piece's first, primer bars included) or free within the
  control's ids when the request leaves the bar free;
* in a multi-track stream (MMM), each ``Track_Start`` opens a track: bars count from its
  first again, and the track follows its own entry of ``controls.tracks`` (the k-th track
  the k-th entry, or the entry whose program the track's ``Program`` id names), falling back
  to the piece-wide per-bar values for a control the entry leaves out.

Forcing is a mask on the logits (every id but the allowed ones at -inf), so it costs one
comparison per step and needs no host read: the sampler's loop stays tensor-only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cadenza.tokenize.controls import ControlVocab, TrackRequest


@dataclass(frozen=True)
class TrackMarks:
    """How the steer tells tracks apart in an MMM stream: the ``Track_Start`` id, and which
    entry of ``controls.tracks`` each ``Program`` id selects (when chosen by program)."""

    track_start: int
    program_entry: Mapping[int, int]  # Program id -> entry index (by program only)


@dataclass
class Position:
    """Where a stream stands for the steer: tracks opened, bars opened in the current track
    (in the piece for a single stream), the ``controls.tracks`` entry it follows (``-1`` =
    the piece-wide values), and whether the last id opened a track."""

    tracks: int = 0
    bars: int = 0
    entry: int = -1
    after_track_start: bool = False


def replay(
    ids: Sequence[int], bar_id: int | None, marks: TrackMarks | None, by_program: bool, n: int
) -> Position:
    """The steer's position after ``ids`` (a primer), by the rules of :meth:`Steer.advance`;
    ``n`` entries in ``controls.tracks``."""
    p = Position()
    for raw in ids:
        t = int(raw)
        if marks is not None and p.after_track_start and by_program:
            p.entry = marks.program_entry.get(t, -1)
        p.after_track_start = False
        if marks is not None and t == marks.track_start:
            p.entry = -1 if by_program or p.tracks >= n else p.tracks
            p.tracks += 1
            p.bars = 0
            p.after_track_start = True
        elif bar_id is not None and t == bar_id:
            p.bars += 1
    return p


class Steer:
    """Per-row state of the control grammar; see the module docstring."""

    def __init__(
        self,
        vocab: ControlVocab,
        bar_id: int | None,
        *,
        piece: Mapping[str, str],
        bars: Mapping[str, tuple[list[Any], bool]],
        tags: Sequence[str],
        prefix: bool,
        bars_in_prompt: int,
        rows: int,
        device: torch.device | str,
        tracks: TrackRequest | None = None,
        marks: TrackMarks | None = None,
        start: Position | None = None,
    ) -> None:
        dev = torch.device(device)
        ranges: list[tuple[int, int]] = []
        if prefix:
            for s in vocab.piece_slots:
                v = piece.get(s.control)
                i = vocab.slot_id(s, v) if v is not None else None
                ranges.append((i, i + 1) if i is not None else (s.lo, s.hi))
            for t in tags:
                i = vocab.tag_id(t)
                if i is not None:
                    ranges.append((i, i + 1))
        self.prefix = torch.tensor(ranges or [(0, 0)], dtype=torch.long, device=dev)
        self.prefix_len = len(ranges)
        slots = vocab.bar_slots if bar_id is not None else []
        self.n_slots = len(slots)
        self.bar_id = -1 if bar_id is None else bar_id
        # One request per table row: the entries of controls.tracks, each over the piece-wide
        # per-bar values, then (last row) the piece-wide values alone.
        entries = tracks.entries if tracks is not None else []
        requests = [{**bars, **e} for e in entries] + [dict(bars)]
        self.default_entry = len(entries)
        # table[e, b, k] = (lo, hi) of slot k in bar b of a track following request e; the
        # last bar row serves every later bar
        n_bars = (
            max([len(vals) for r in requests for vals, every in r.values() if not every] + [0]) + 1
        )
        table = torch.zeros(len(requests), n_bars, max(self.n_slots, 1), 2, dtype=torch.long)
        for e, req_e in enumerate(requests):
            for k, s in enumerate(slots):
                table[e, :, k, 0], table[e, :, k, 1] = s.lo, s.hi
                req = req_e.get(s.control)
                if req is None:
                    continue
                vals, every = req
                for b in range(n_bars):
                    v = vals[0] if every else (vals[b] if b < len(vals) else None)
                    if v is None:
                        continue
                    value = v[0 if s.part == "low" else 1] if s.part else v
                    i = vocab.slot_id(s, value)
                    table[e, b, k, 0], table[e, b, k, 1] = i, i + 1
        self.table = table.to(dev)
        # Tracks (MMM): a Track_Start restarts the bar count and picks the row's request.
        self.track_start = marks.track_start if marks is not None and self.n_slots else -1
        self.by_program = bool(tracks is not None and tracks.programs is not None)
        size = max([*(marks.program_entry if marks else {}), 0]) + 1
        lookup = torch.full((size,), self.default_entry, dtype=torch.long)
        for pid, e in (marks.program_entry if marks and self.by_program else {}).items():
            lookup[pid] = e
        self.program_entry = lookup.to(dev)
        p = start or Position(bars=bars_in_prompt)
        entry = self.default_entry if p.entry < 0 else p.entry
        self.bar = torch.full((rows,), p.bars, dtype=torch.long, device=dev)
        self.tracks = torch.full((rows,), p.tracks, dtype=torch.long, device=dev)
        self.entry = torch.full((rows,), entry, dtype=torch.long, device=dev)
        self.after_track_start = torch.full(
            (rows,), p.after_track_start, dtype=torch.bool, device=dev
        )
        self.phase = torch.zeros(rows, dtype=torch.long, device=dev)  # 0 = no slot pending
        self.step = 0

    def mask(self, logits: Tensor) -> Tensor:
        """Logits (B, V) of the next token with every id the grammar forbids at -inf."""
        B, V = logits.shape
        ids = torch.arange(V, device=logits.device)
        if self.step < self.prefix_len:
            lo, hi = self.prefix[self.step]
            keep = (ids >= lo) & (ids < hi)
            return logits.masked_fill(~keep, float("-inf"))
        if self.n_slots == 0:
            return logits
        b = (self.bar - 1).clamp(min=0, max=self.table.size(1) - 1)
        k = (self.phase - 1).clamp(min=0)
        rng = self.table[self.entry, b, k]  # (B, 2)
        keep = (ids >= rng[:, :1]) & (ids < rng[:, 1:])
        active = (self.phase > 0).unsqueeze(1)
        return logits.masked_fill(active & ~keep, float("-inf"))

    def advance(self, token: Tensor) -> None:
        """Record the sampled tokens (B,): a Bar opens a bar's slots; a Track_Start opens a
        track (bars count from 0 again, and the track's entry of ``controls.tracks`` applies:
        the next by order, or the one of the Program id that follows)."""
        self.step += 1
        if self.step <= self.prefix_len or self.n_slots == 0:
            return
        nxt = torch.where(
            (self.phase > 0) & (self.phase < self.n_slots),
            self.phase + 1,
            torch.zeros_like(self.phase),
        )
        free = self.phase == 0
        is_bar = (token == self.bar_id) & free
        self.phase = torch.where(is_bar, torch.ones_like(nxt), nxt)
        self.bar = self.bar + is_bar.long()
        if self.track_start < 0:
            return
        if self.by_program:
            size = self.program_entry.size(0)
            chosen = self.program_entry[token.clamp(min=0, max=size - 1)]
            chosen = torch.where(token < size, chosen, torch.full_like(chosen, self.default_entry))
            self.entry = torch.where(self.after_track_start, chosen, self.entry)
        is_track = (token == self.track_start) & free
        by_order = torch.where(
            self.tracks < self.default_entry,
            self.tracks,
            torch.full_like(self.tracks, self.default_entry),
        )
        opened = torch.full_like(self.entry, self.default_entry) if self.by_program else by_order
        self.entry = torch.where(is_track, opened, self.entry)
        self.tracks = self.tracks + is_track.long()
        self.bar = torch.where(is_track, torch.zeros_like(self.bar), self.bar)
        self.after_track_start = is_track

    def select(self, rows: Tensor) -> None:
        """Keep the state of the live rows only (the sampler dropped finished ones)."""
        self.bar = self.bar.index_select(0, rows)
        self.phase = self.phase.index_select(0, rows)
        self.tracks = self.tracks.index_select(0, rows)
        self.entry = self.entry.index_select(0, rows)
        self.after_track_start = self.after_track_start.index_select(0, rows)


def build_steer(
    tokenizer: Any,
    prompt: Sequence[int],
    *,
    controls: Mapping[str, Any] | None,
    tags: Sequence[str] | None,
    rows: int,
    device: torch.device | str,
) -> tuple[Steer | None, list[int]]:
    """A :class:`Steer` for a request (None when the tokenizer has no controls) and the prompt
    to start from: an unprimed prompt stays [BOS] (the steer writes the piece's slots); a
    primed one gets the requested per-piece values and tags written into its own prefix."""
    from cadenza.tokenize.controls import resolve_controls

    vocab: ControlVocab | None = getattr(tokenizer, "controls", None)
    if vocab is None:
        return None, list(prompt)
    piece, bars, wanted, tracks = resolve_controls(controls, tags, vocab.capabilities())
    miditok_vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", {})
    bar_id = miditok_vocab.get("Bar_None") if vocab.bar_slots else None
    marks: TrackMarks | None = None
    if vocab.per_track and bar_id is not None and "Track_Start" in miditok_vocab:
        want = {p: e for e, p in enumerate(tracks.programs or [])} if tracks else {}
        marks = TrackMarks(
            int(miditok_vocab["Track_Start"]),
            {
                int(i): want[p]
                for name, i in miditok_vocab.items()
                if name.startswith("Program_") and (p := int(name.split("_", 1)[1])) in want
            },
        )
    bos = tokenizer.bos_id
    prompt = list(prompt)
    unprimed = len(prompt) <= 1
    if not unprimed:
        prompt = _rewrite_prefix(vocab, prompt, bos, piece, wanted)
    n = len(tracks.entries) if tracks else 0
    start = replay(prompt, bar_id, marks, bool(tracks and tracks.programs), n)
    steer = Steer(
        vocab,
        bar_id,
        piece=piece,
        bars=bars,
        tags=wanted,
        prefix=unprimed,
        bars_in_prompt=start.bars,
        rows=rows,
        device=device,
        tracks=tracks,
        marks=marks,
        start=start,
    )
    return steer, prompt


def _rewrite_prefix(
    vocab: ControlVocab, prompt: list[int], bos: int, piece: Mapping[str, str], tags: Sequence[str]
) -> list[int]:
    """A primer's own per-piece tokens replaced by the requested ones, its tags by the
    requested tags (when any are requested)."""
    start = 1 if prompt and prompt[0] == bos else 0
    k = len(vocab.piece_slots)
    head = prompt[start : start + k]
    if len(head) < k or any(
        not s.lo <= t < s.hi for s, t in zip(vocab.piece_slots, head, strict=True)
    ):
        return prompt  # not a controlled primer (primer_tokens from elsewhere): leave it as is
    new_head = [
        vocab.slot_id(s, piece[s.control]) if s.control in piece else t
        for s, t in zip(vocab.piece_slots, head, strict=True)
    ]
    rest = prompt[start + k :]
    if tags:
        n = vocab.tag_lo
        while rest and n <= rest[0] < n + len(vocab.tags):
            rest = rest[1:]
        rest = [i for t in tags if (i := vocab.tag_id(t)) is not None] + rest
    return [*prompt[:start], *new_head, *rest]


__all__ = ["Position", "Steer", "TrackMarks", "build_steer", "replay"]
