"""The interface every Cadenza language model implements.

Training only needs `forward(idx, targets)` and `optim_groups`. Sampling needs incremental
decoding: `init_cache` + `forward_step` read new tokens into a cache (a KV cache for
transformers, the hidden state for RNNs) so each new token costs one position of compute
instead of a forward pass over the whole context.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel
from torch import Tensor, nn

IGNORE_INDEX = -100
"""Targets equal to this contribute no loss (padding, the prompt part of a pair, ...)."""


class CadenzaModel(nn.Module):
    """Base class of all autoregressive token models.

    Subclasses set `architecture` (registry name), `config` (the validated pydantic config),
    `vocab_size` and `block_size` (longest context; None when unbounded, as for RNNs).
    """

    architecture: str = ""
    config: BaseModel
    vocab_size: int
    block_size: int | None

    # -- training ---------------------------------------------------------------------------

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """idx (B, T) int64 -> logits (B, T, V) and the mean cross-entropy if targets given."""
        raise NotImplementedError

    @staticmethod
    def loss(logits: Tensor, targets: Tensor) -> Tensor:
        """Token-mean cross-entropy over targets != IGNORE_INDEX, in at least float32 (a
        float16 log-softmax over a large vocabulary loses the small probabilities)."""
        V = logits.size(-1)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        return F.cross_entropy(
            logits.reshape(-1, V), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )

    # -- incremental decoding ---------------------------------------------------------------

    def init_cache(self, batch_size: int, device: torch.device | str | None = None) -> Any:
        """An empty decoding cache for `batch_size` rows (default: the parameters' device)."""
        raise NotImplementedError

    def forward_step(self, idx: Tensor, cache: Any, pad_mask: Tensor | None = None) -> Tensor:
        """Read idx (B, T_new) after the tokens already in `cache`; return logits (B, T_new, V).

        Logits equal those of `forward` over the whole cached context (up to float rounding).
        `pad_mask` (B, T_new), True at left padding, is accepted only while the cache is empty
        (the prompt prefill), so rows with prompts of different lengths can share a batch.
        Runs without autograd: the cache is inference state, never part of a training graph.
        """
        raise NotImplementedError

    def decode_state(self, cache: Any) -> tuple[Tensor, ...] | None:
        """The cache's tensors that `decode_static` reads and writes in place, or None when
        this model decodes through `forward_step` only (RNNs: their state is small and a
        step is one fused cell call)."""
        return None

    def decode_static(
        self, token: Tensor, pos: Tensor, *state: Tensor, span: int | None = None
    ) -> Tensor:
        """One token per row (B, 1) at cache position `pos` (0-d int64) -> logits (B, V),
        with shapes fixed by (batch, span) (see `GPT.decode_static`)."""
        raise NotImplementedError(f"{self.architecture} has no fixed-shape decode step")

    def select_cache_rows(self, cache: Any, rows: Tensor) -> Any:
        """A cache holding only the given batch rows (int64 indices), in that order: how the
        sampler drops rows that have finished."""
        raise NotImplementedError

    def cache_len(self, cache: Any) -> int:
        """Number of token positions (padding included) the cache holds."""
        raise NotImplementedError

    def crop_cache(self, cache: Any, keep_last: int) -> None:
        """Keep only the last `keep_last` positions, as if a fresh model had read just those.

        This is the sliding window for generation beyond `block_size`. Models with an unbounded
        context (RNNs) keep their state: it already summarises every past token.
        """
        raise NotImplementedError

    # -- bookkeeping ------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Count unique parameters (tied weights once); optionally without embedding tables."""
        seen: set[int] = set()
        total = 0
        for module in self.modules():
            for p in module.parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if non_embedding and isinstance(module, nn.Embedding):
                    continue
                total += p.numel()
        return total

    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW parameter groups: decay matrix weights only.

        Biases, norm gains, token/position embeddings and relative-position tables get no decay
        (decaying them pulls rarely-seen tokens and long distances towards zero). A weight tied
        to an embedding counts as the embedding, as in the original nanoGPT.
        """
        no_decay_ids: set[int] = set()
        for module in self.modules():
            no_decay_module = isinstance(module, nn.Embedding | nn.LayerNorm) or getattr(
                module, "no_weight_decay", False
            )
            for name, p in module.named_parameters(recurse=False):
                if no_decay_module or p.dim() < 2 or name.endswith("bias"):
                    no_decay_ids.add(id(p))
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        seen: set[int] = set()
        for p in self.parameters():  # unique parameters, tied ones once
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if id(p) in no_decay_ids else decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def spec(self) -> dict[str, Any]:
        """What rebuilds this model from a checkpoint: architecture, config and vocab_size."""
        return {
            "architecture": self.architecture,
            "config": self.config.model_dump(mode="json"),
            "vocab_size": self.vocab_size,
        }
