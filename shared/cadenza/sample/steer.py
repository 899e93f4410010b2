"""Steer sampling with attribute controls and style tags: force conditioning tokens in place.

A model trained on a corpus with ``controls`` (``cadenza.tokenize.controls``) saw, after BOS,
one token per per-piece control then the file's tags, and after every ``Bar`` token one token
per per-bar control slot. :class:`Steer` replays that grammar while sampling:

* the first steps of an unprimed piece are the per-piece slots: a requested value is forced,
  an unrequested slot may take any value of its control (the model picks), then the requested
  tags are forced;
* whenever a row samples ``Bar``, its next steps are that bar's slots, forced to the request's
  value for that bar (bar 0 is the piece's first, primer bars included) or free within the
  control's ids when the request leaves the bar free.

Forcing is a mask on the logits (every id but the allowed ones at -inf), so it costs one
comparison per step and needs no host read: the sampler's loop stays tensor-only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from cadenza.tokenize.controls import ControlVocab


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
        # table[b, k] = (lo, hi) of slot k in bar b; the last row serves every later bar
        n_bars = max([len(vals) for vals, every in bars.values() if not every] + [0]) + 1
        table = torch.zeros(n_bars, max(self.n_slots, 1), 2, dtype=torch.long)
        for k, s in enumerate(slots):
            table[:, k, 0], table[:, k, 1] = s.lo, s.hi
            req = bars.get(s.control)
            if req is None:
                continue
            vals, every = req
            for b in range(n_bars):
                v = vals[0] if every else (vals[b] if b < len(vals) else None)
                if v is None:
                    continue
                value = v[0 if s.part == "low" else 1] if s.part else v
                i = vocab.slot_id(s, value)
                table[b, k, 0], table[b, k, 1] = i, i + 1
        self.table = table.to(dev)
        self.bar = torch.full((rows,), bars_in_prompt, dtype=torch.long, device=dev)
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
        b = (self.bar - 1).clamp(min=0, max=self.table.size(0) - 1)
        k = (self.phase - 1).clamp(min=0)
        rng = self.table[b, k]  # (B, 2)
        keep = (ids >= rng[:, :1]) & (ids < rng[:, 1:])
        active = (self.phase > 0).unsqueeze(1)
        return logits.masked_fill(active & ~keep, float("-inf"))

    def advance(self, token: Tensor) -> None:
        """Record the sampled tokens (B,): a Bar opens a bar's slots."""
        self.step += 1
        if self.step <= self.prefix_len or self.n_slots == 0:
            return
        nxt = torch.where(
            (self.phase > 0) & (self.phase < self.n_slots),
            self.phase + 1,
            torch.zeros_like(self.phase),
        )
        is_bar = (token == self.bar_id) & (self.phase == 0)
        self.phase = torch.where(is_bar, torch.ones_like(nxt), nxt)
        self.bar = self.bar + is_bar.long()

    def select(self, rows: Tensor) -> None:
        """Keep the state of the live rows only (the sampler dropped finished ones)."""
        self.bar = self.bar.index_select(0, rows)
        self.phase = self.phase.index_select(0, rows)


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
    piece, bars, wanted = resolve_controls(controls, tags, vocab.capabilities())
    miditok_vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", {})
    bar_id = miditok_vocab.get("Bar_None") if vocab.bar_slots else None
    bos = tokenizer.bos_id
    prompt = list(prompt)
    unprimed = len(prompt) <= 1
    if not unprimed:
        prompt = _rewrite_prefix(vocab, prompt, bos, piece, wanted)
    n_bars = sum(1 for t in prompt if t == bar_id) if bar_id is not None else 0
    steer = Steer(
        vocab,
        bar_id,
        piece=piece,
        bars=bars,
        tags=wanted,
        prefix=unprimed,
        bars_in_prompt=n_bars,
        rows=rows,
        device=device,
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


__all__ = ["Steer", "build_steer"]
