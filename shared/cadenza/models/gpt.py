"""GPT (nanoGPT-style) and Music Transformer (relative attention), leaf to root.

Both are pre-LayerNorm decoders with a GELU MLP and the LM head tied to the token embedding.
`gpt` adds learned absolute position embeddings; `music-transformer` has none and instead adds a
learned relative-position term to every attention logit (Huang et al. 2018, "Music Transformer"),
computed by the chunked kernel in `relative_attention.py` on every path (training, evaluation,
prefill and cached decoding).

Incremental decoding uses a preallocated KV cache of `block_size` positions. Relative logits are
computed for each new query row against all cached keys, so cached decoding reproduces a full
forward pass. Sliding past `block_size` (`crop_cache`) re-encodes the kept tokens, because in a
multi-layer model the cached keys of upper layers depend on the tokens being dropped, and gpt's
absolute positions must restart at 0 as in training; the result is exactly the cache a fresh
model would build from the kept window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cadenza.models.base import CadenzaModel
from cadenza.models.configs import MusicTransformerConfig, TransformerConfig
from cadenza.models.relative_attention import relative_attention, relative_logits

# ----------------------------------------------------------------------------- blocks


class RelativeEmbedding(nn.Module):
    """Learned Er for distances 0..max_len-1; one table per layer, optionally per head."""

    no_weight_decay = True  # an embedding table: see CadenzaModel.optim_groups

    def __init__(self, max_len: int, head_size: int, n_head: int | None) -> None:
        super().__init__()
        shape = (max_len, head_size) if n_head is None else (n_head, max_len, head_size)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)
        self.max_len = max_len

    def table(self, S: int) -> Tensor:
        """Er for a context of S positions: (S, hs) or (nh, S, hs), distances S-1..0."""
        if self.max_len < S:
            raise ValueError(f"context of {S} positions exceeds block_size {self.max_len}")
        return self.weight[..., self.max_len - S :, :]

    def forward(self, q: Tensor, S: int) -> Tensor:
        """q (B, nh, T, hs) for the last T of S positions -> Srel (B, nh, T, S)."""
        return relative_logits(q, self.table(S))


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, optionally relative, optionally over a KV cache."""

    def __init__(self, config: TransformerConfig, relative: bool, rel_shared_heads: bool) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.dropout = config.dropout
        self.rel: RelativeEmbedding | None = None
        if relative:
            heads = None if rel_shared_heads else config.n_head
            self.rel = RelativeEmbedding(config.block_size, self.head_size, heads)

    def forward(
        self,
        x: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        key_pad: Tensor | None = None,
    ) -> Tensor:
        """x (B, T, C) at positions start..start+T-1. With `kv` (B, nh, capacity, hs) buffers,
        the new keys/values are written at those positions and queries see all of 0..start+T-1.
        key_pad (B, start+T) marks left-padding keys that no real query may attend to."""
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        if kv is not None:
            k_cache, v_cache = kv
            k_cache[:, :, start : start + T] = k
            v_cache[:, :, start : start + T] = v
            k = k_cache[:, :, : start + T]  # (B, nh, S, hs)
            v = v_cache[:, :, : start + T]  # (B, nh, S, hs)
        dropout_p = self.dropout if self.training else 0.0
        if self.rel is not None:
            S = k.size(2)
            er = self.rel.table(S)
            y = relative_attention(
                q * (1.0 / math.sqrt(self.head_size)), k, v, er, key_pad, dropout_p
            )
        else:
            mask, is_causal = self._attn_mask(q, k.size(2), key_pad)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
            )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))

    def decode(
        self, x: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor, visible: Tensor
    ) -> Tensor:
        """One new position per row with fixed shapes: x (B, 1, C) at position `pos` (0-d
        int64) is written into the caches (B, nh, capacity, hs) in place; the query attends to
        the first `span` slots (span = visible.size(1) >= pos + 1) with `visible` (B, span) as
        the mask. Same maths as `forward` with a cache: masked slots get probability 0, only
        float rounding differs."""
        B, _, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, 1, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, 1, hs)
        k = k.view(B, 1, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, 1, self.n_head, self.head_size).transpose(1, 2)
        at = pos.view(1)
        k_cache.index_copy_(2, at, k)
        v_cache.index_copy_(2, at, v)
        span = visible.size(1)
        keys, values = k_cache[:, :, :span], v_cache[:, :, :span]
        if self.rel is None:
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None])
        else:
            y = self._relative_decode(q, keys, values, pos, visible, k_cache.size(2))
        y = y.transpose(1, 2).reshape(B, 1, C)
        return self.c_proj(y)

    def _relative_decode(
        self, q: Tensor, keys: Tensor, values: Tensor, pos: Tensor, visible: Tensor, cap: int
    ) -> Tensor:
        """Relative attention of one query at `pos` over the first `span` cache slots.

        The table's row c embeds distance cap-1-c (cap = block_size), so key j (distance
        pos-j) reads row cap-1-pos+j: one gather of Q·Erᵀ replaces the skew (which needs the
        length as a shape). Scores, scaling and the float32 softmax are `relative_attention`'s.
        """
        assert self.rel is not None
        span = keys.size(2)
        qs = q * (1.0 / math.sqrt(self.head_size))  # (B, nh, 1, hs)
        er = self.rel.table(cap).to(q.dtype)  # (cap, hs) or (nh, cap, hs)
        qe = torch.matmul(qs, er.transpose(-2, -1))  # (B, nh, 1, cap)
        j = torch.arange(span, device=q.device)
        row = (j + (cap - 1) - pos).clamp(max=cap - 1)  # future keys: any row, masked below
        rel = qe.index_select(-1, row)  # (B, nh, 1, span)
        scores = torch.matmul(qs, keys.transpose(-2, -1)) + rel
        scores = scores.masked_fill(~visible[:, None, None], float("-inf"))
        acc = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        p = torch.softmax(scores, dim=-1, dtype=acc)
        return torch.matmul(p.to(values.dtype), values)  # (B, nh, 1, hs)

    @staticmethod
    def _attn_mask(q: Tensor, S: int, key_pad: Tensor | None) -> tuple[Tensor | None, bool]:
        """(attn_mask for SDPA, is_causal) for absolute attention; queries are the last T of S."""
        T = q.size(2)
        if key_pad is None:
            if T == 1:
                return None, False  # a single newest query may see every key
            if T == S:
                return None, True  # plain causal: let SDPA pick its fused kernel
        i = torch.arange(S - T, S, device=q.device).view(T, 1)  # query positions
        j = torch.arange(S, device=q.device).view(1, S)  # key positions
        blocked = j > i  # (T, S) future keys
        if key_pad is not None:
            # Padding keys are hidden from every query except themselves, so a padding
            # row never has all keys masked (that would make NaNs that spread via V).
            blocked = blocked | (key_pad[:, None, None, :] & (j != i))  # (B, 1, T, S)
        return ~blocked, False  # boolean mask: True = may attend


class MLP(nn.Module):
    """Position-wise feed-forward: 4x expansion with GELU."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        width, hidden = config.n_embd, 4 * config.n_embd
        self.c_fc = nn.Linear(width, hidden, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TransformerConfig, relative: bool, rel_shared_heads: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, relative, rel_shared_heads)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: Tensor,
        kv: tuple[Tensor, Tensor] | None = None,
        start: int = 0,
        key_pad: Tensor | None = None,
    ) -> Tensor:
        x = x + self.attn(self.ln_1(x), kv, start, key_pad)
        return x + self.mlp(self.ln_2(x))

    def decode(self, x: Tensor, k: Tensor, v: Tensor, pos: Tensor, visible: Tensor) -> Tensor:
        """`forward` for one new position with fixed shapes (see `CausalSelfAttention.decode`)."""
        x = x + self.attn.decode(self.ln_1(x), k, v, pos, visible)
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------- cache


@dataclass
class KVCache:
    """Preallocated per-layer keys/values for `block_size` positions of `batch` rows.

    `tokens` keeps the ids read so far so that `crop_cache` can re-encode the kept window.
    Writing in place (instead of torch.cat per step) keeps each step O(1) in memory traffic.
    """

    keys: list[Tensor]  # per layer (B, nh, capacity, hs)
    values: list[Tensor]  # per layer (B, nh, capacity, hs)
    tokens: Tensor  # (B, capacity) int64
    pad: Tensor  # (B, capacity) bool, True at left padding
    length: int = 0  # positions filled
    has_pad: bool = False  # any True in pad[:, :length]; skips the mask when False


# ----------------------------------------------------------------------------- models


class GPT(CadenzaModel):
    """nanoGPT: token + learned absolute position embeddings, pre-LN blocks, tied LM head."""

    architecture = "gpt"
    relative = False  # Music Transformer flips this
    config: TransformerConfig
    block_size: int  # always bounded for transformers

    def __init__(self, config: TransformerConfig, vocab_size: int) -> None:
        super().__init__()
        self.config = config
        self.vocab_size = vocab_size
        self.block_size = config.block_size
        shared = config.rel_shared_heads if isinstance(config, MusicTransformerConfig) else True
        self.wte = nn.Embedding(vocab_size, config.n_embd)
        self.wpe = None if self.relative else nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(
            [Block(config, self.relative, shared) for _ in range(config.n_layer)]
        )
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: fewer parameters, better LM

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2: scale residual projections by depth
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _embed(self, idx: Tensor, pos: Tensor | None) -> Tensor:
        """idx (B, T) -> (B, T, C); pos (T,) or (B, T) positions, None when relative."""
        x = self.wte(idx)
        if self.wpe is not None:
            assert pos is not None
            x = x + self.wpe(pos)
        return self.drop(x)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.size()
        if self.config.block_size < T:
            raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
        x = self._embed(idx, torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        loss = self.loss(logits, targets) if targets is not None else None
        return logits, loss

    # -- incremental decoding ---------------------------------------------------------------

    def init_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        ref = self.wte.weight
        device = ref.device if device is None else torch.device(device)
        nh, hs, cap = self.config.n_head, self.config.n_embd // self.config.n_head, self.block_size
        L = self.config.n_layer
        return KVCache(
            keys=[
                torch.zeros(batch_size, nh, cap, hs, device=device, dtype=ref.dtype)
                for _ in range(L)
            ],
            values=[
                torch.zeros(batch_size, nh, cap, hs, device=device, dtype=ref.dtype)
                for _ in range(L)
            ],
            tokens=torch.zeros(batch_size, cap, dtype=torch.long, device=device),
            pad=torch.zeros(batch_size, cap, dtype=torch.bool, device=device),
        )

    @torch.no_grad()
    def forward_step(self, idx: Tensor, cache: KVCache, pad_mask: Tensor | None = None) -> Tensor:
        B, T = idx.size()
        start, end = cache.length, cache.length + T
        if end > self.block_size:
            raise ValueError(
                f"cache holds {start} positions and {T} more exceed block_size "
                f"{self.block_size}; call crop_cache first"
            )
        if pad_mask is not None:
            if start != 0:
                raise ValueError("pad_mask is only accepted while the cache is empty (prefill)")
            cache.pad[:, :T] = pad_mask
            cache.has_pad = bool(pad_mask.any())
        cache.tokens[:, start:end] = idx
        key_pad = cache.pad[:, :end] if cache.has_pad else None  # (B, S)

        pos: Tensor | None = None
        if self.wpe is not None:
            pos = torch.arange(start, end, device=idx.device)  # (T,)
            if key_pad is not None:  # each row's first real token is position 0
                n_pad = key_pad.sum(dim=1, keepdim=True)  # (B, 1)
                pos = (pos.view(1, T) - n_pad).clamp(min=0)  # (B, T)
        x = self._embed(idx, pos)  # (B, T, C)
        for layer, block in enumerate(self.h):
            x = block(x, (cache.keys[layer], cache.values[layer]), start, key_pad)
        cache.length = end
        return self.lm_head(self.ln_f(x))  # (B, T, V)

    def decode_state(self, cache: KVCache) -> tuple[Tensor, ...]:
        return (cache.pad, *cache.keys, *cache.values)

    def decode_static(
        self, token: Tensor, pos: Tensor, *state: Tensor, span: int | None = None
    ) -> Tensor:
        """token (B, 1) at position `pos` -> logits (B, V); state = `decode_state(cache)`.

        Every shape is fixed by (batch, span), the position is a tensor and the cache is written
        in place, so `torch.compile(..., dynamic=False)` compiles this once per (batch, span).
        Attention reads only the first `span` slots (>= pos + 1; default: all block_size):
        the sampler rounds the length up to a few buckets so a short context does not pay for
        reading the whole cache. The caller advances `cache.length` (a Python int).
        """
        pad, kv = state[0], state[1:]
        L = len(self.h)
        keys, values = kv[:L], kv[L:]
        span = self.block_size if span is None else span
        slots = torch.arange(span, device=token.device)
        visible = (slots <= pos) & ~pad[:, :span]  # (B, span): filled, not left padding
        x = self.wte(token)  # (B, 1, C)
        if self.wpe is not None:  # each row's first real token is position 0
            p = (pos - pad.sum(dim=1)).clamp(min=0)  # (B,)
            x = x + self.wpe(p).unsqueeze(1)
        for layer, block in enumerate(self.h):
            assert isinstance(block, Block)
            x = block.decode(x, keys[layer], values[layer], pos, visible)
        return self.lm_head(self.ln_f(x))[:, 0]  # (B, V)

    def select_cache_rows(self, cache: KVCache, rows: Tensor) -> KVCache:
        return KVCache(
            keys=[k.index_select(0, rows) for k in cache.keys],
            values=[v.index_select(0, rows) for v in cache.values],
            tokens=cache.tokens.index_select(0, rows),
            pad=cache.pad.index_select(0, rows),
            length=cache.length,
            has_pad=cache.has_pad,
        )

    def cache_len(self, cache: KVCache) -> int:
        return cache.length

    @torch.no_grad()
    def crop_cache(self, cache: KVCache, keep_last: int) -> None:
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        L = cache.length
        if keep_last >= L:
            return
        tokens = cache.tokens[:, L - keep_last : L].clone()  # (B, keep_last)
        pad = cache.pad[:, L - keep_last : L].clone() if cache.has_pad else None
        cache.length, cache.has_pad = 0, False
        cache.pad.zero_()
        if keep_last > 0:
            self.forward_step(tokens, cache, pad_mask=pad)


class MusicTransformer(GPT):
    """GPT without absolute positions, with learned relative attention in every layer."""

    architecture = "music-transformer"
    relative = True
