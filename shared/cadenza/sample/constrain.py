"""Constrained sampling: mask the ids a tokenizer's grammar forbids, on the device, per row.

The grammar (`cadenza.tokenize.grammar`) is a table ``next[state, id]``; here it becomes two
device tensors made once per generation: ``blocked`` (states, V) booleans and ``next`` (states,
V) int32. A step then costs one row gather plus one ``masked_fill`` for the logits and one
element gather for the new states: tensor ops only, no host sync, and outside the model's
fixed-shape decode step, so the eager, compiled and CUDA-graph paths are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cadenza.tokenize.grammar import Grammar


class Constraint:
    """The grammar states of a batch of rows, and the mask they put on the next logits."""

    def __init__(
        self, grammar: Grammar, prompts: Sequence[Sequence[int]], vocab: int, device: torch.device
    ) -> None:
        table = torch.from_numpy(grammar.table)
        width = table.size(1)
        if width < vocab:  # ids the tokenizer does not have (a wider model head): forbidden
            table = torch.nn.functional.pad(table, (0, vocab - width), value=-1)
        elif width > vocab:
            table = table[:, :vocab]
        self.next = table.to(device)
        self.blocked = (self.next < 0).contiguous()
        # each row starts where its prompt leaves the grammar (forbidden prompt ids are skipped)
        walked: dict[tuple[int, ...], int] = {}  # the n rows of a prompt share its walk
        starts = []
        for p in prompts:
            key = tuple(p)
            if key not in walked:
                walked[key] = grammar.walk(key)[0]
            starts.append(walked[key])
        self.states = torch.tensor(starts, dtype=torch.long, device=device)

    def mask(self, logits: Tensor) -> Tensor:
        """logits (B, V) with every id the rows' states forbid at -inf."""
        return logits.masked_fill(self.blocked.index_select(0, self.states), float("-inf"))

    def advance(self, token: Tensor) -> None:
        """Move each row's state by its sampled token (B,); a forbidden one (only possible
        unconstrained) leaves the state unchanged."""
        nxt = self.next[self.states, token].long()
        self.states = torch.where(nxt >= 0, nxt, self.states)

    def select(self, rows: Tensor) -> None:
        """Keep only ``rows`` (the sampler dropped finished ones)."""
        self.states = self.states.index_select(0, rows)


__all__ = ["Constraint"]
