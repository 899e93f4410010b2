"""GPT (nanoGPT-style) and Music Transformer (relative attention), leaf to root.

Both are pre-LayerNorm decoders with a GELU MLP and the LM head tied to the token embedding.
`gpt` adds learned absolute position embeddings; `music-transformer` has none and instead adds a
learned relative-position term to every attention logit (Huang et al. 2018, "Music Transformer"):

    attn = softmax((Q Kᵀ + Srel) / sqrt(hs) + causal mask),   Srel[i, j] = q_i · Er[i - j]

Srel is computed with the skewing trick, so only Er (L, hs) and Q·Erᵀ per head exist, never an
(L, L, hs) tensor. Attention with the relative term runs in `relative_attention`, a
memory-efficient kernel in PyTorch ops that takes the queries a chunk at a time, adds Srel to
Q·Kᵀ inside the chunk and recomputes chunks in its own backward pass, so neither the relative
logits nor the attention matrix are ever held whole: memory grows linearly with the sequence,
as for gpt's fused SDPA. Training, evaluation, prefill and cached decoding all go through it, so
the relative term is applied on every path (earlier system A added it only on its non-fused
path, so with torch >= 2 and dropout 0 it silently trained without it).

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
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cadenza.models.base import CadenzaModel
from cadenza.models.registry import MusicTransformerConfig, TransformerConfig

# ----------------------------------------------------------------------------- relative attention


def relative_logits(q: Tensor, er: Tensor) -> Tensor:
    """Srel for T queries that are the last T of S key positions, by skewing.

    q (B, nh, T, hs); er (S, hs) shared by heads, or (nh, S, hs) per head, where er[c] embeds
    the distance S-1-c (its last row is distance 0). Returns (B, nh, T, S) with
    out[..., r, j] = q[..., r, :] · er[distance (S-T+r) - j] wherever j <= S-T+r; entries for
    future keys (j > S-T+r) are meaningless and must be masked by the caller.
    """
    return _skewed_qe(q, er)[1]


def _skewed_qe(q: Tensor, er: Tensor) -> tuple[Tensor, Tensor]:
    """(Q·Erᵀ in the skew's padded layout (B, nh, T·(S+1)), Srel as a view of it (B, nh, T, S)).

    Skewing: row r of Q·Erᵀ holds distances S-1..0 left to right and must move right by
    T-1-r places. Padding one zero column on the left, flattening and dropping the first T
    values does exactly that (for T == S this is the paper's reshape-to-(T+1, T), drop-a-row),
    with O(T·S) memory per head. The zero column comes from a zero row prepended to Er, so
    Q·Erᵀ is computed straight into the padded layout (column c+1 is distance S-1-c), and the
    backward pass reuses that buffer for the gradient of Q·Erᵀ.
    """
    B, nh, T, hs = q.shape
    S = er.size(-2)
    if T > S:
        raise ValueError(f"{T} queries cannot be the last rows of {S} keys")
    er_pad = torch.cat([er.new_zeros((*er.shape[:-2], 1, hs)), er], dim=-2)  # (…, S+1, hs)
    buf = torch.matmul(q, er_pad.transpose(-2, -1)).view(B, nh, T * (S + 1))
    return buf, buf[..., T:].view(B, nh, T, S)  # a view: shifts row r right by T-1-r


def _chunk_scores(
    q: Tensor, k: Tensor, er: Tensor, p1: int, key_pad: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Logits of queries q (B, nh, b, hs), the last b of positions 0..p1-1, against keys 0..p1-1.

    er holds distances S-1..0 of the whole call (its last p1 rows are the ones needed). Returns
    (scores (B, nh, b, p1) with forbidden keys (future, or padding) at -inf, and Q·Erᵀ in the
    skew's padded layout (B, nh, b·(p1+1)), which the backward pass reuses for its gradient).
    """
    B, nh, b, hs = q.shape
    buf, rel = _skewed_qe(q, er[..., er.size(-2) - p1 :, :])
    # Out of place: BLAS adds into a contiguous copy of the skewed view in one pass (in place on
    # the view, whose heads are b values apart, torch would loop over heads one GEMM at a time).
    scores = torch.baddbmm(
        rel.view(B * nh, b, p1),
        q.reshape(B * nh, b, hs),
        k[:, :, :p1].reshape(B * nh, p1, hs).transpose(1, 2),
    ).view(B, nh, b, p1)
    if key_pad is not None:  # padding keys: hidden from every query but themselves
        i = torch.arange(p1 - b, p1, device=q.device).view(b, 1)  # query positions
        j = torch.arange(p1, device=q.device).view(1, p1)  # key positions
        scores.masked_fill_((j > i) | (key_pad[:, None, None, :p1] & (j != i)), float("-inf"))
    elif b > 1:  # only the last b keys can be in a query's future: mask that square alone
        future = torch.ones(b, b, dtype=torch.bool, device=q.device).triu_(1)
        scores[..., p1 - b :].masked_fill_(future, float("-inf"))
    return scores, buf


def _rows(t: Tensor) -> Tensor:
    """t (B, nh, L, hs) as is if it reads as (B·nh, L, hs) matrices without a copy (contiguous,
    or a KV-cache slice along L), else a contiguous copy."""
    B, nh, L, hs = t.shape
    ok = t.stride(-1) == 1 and t.stride(-2) == hs and t.stride(0) == nh * t.stride(1)
    return t if ok or B * nh == 1 else t.contiguous()


def _dropout_keep(shape: torch.Size, p: float, seed: int, device: torch.device) -> Tensor:
    """The same Bernoulli keep-mask in forward and backward, rebuilt from a seed, not stored."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(shape, generator=gen, device=device) >= p


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax and gradient sums of half-precision attention run in float32, as in flash."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _accumulate(out: Tensor, a: Tensor, b: Tensor) -> None:
    """out += a @ b (2-D or batched), in place when that is one GEMM; half-precision products
    are summed into float32 gradient buffers."""
    if out.dtype == a.dtype and (out.dim() == 2 or out.is_contiguous()):
        (out.baddbmm_ if out.dim() == 3 else out.addmm_)(a, b)
    else:  # in place into a strided batch, torch would run one GEMM per batch entry
        out += torch.matmul(a, b).to(out.dtype)


def _forward_chunks(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    er: Tensor,
    chunk: int,
    key_pad: Tensor | None,
    dropout_p: float,
    seed: int,
) -> Tensor:
    """The attention output, a chunk of queries at a time (the forward of both paths).

    q, k, v as `_rows` gives them (each chunk reads them as (B·nh, rows, hs) matrices, so one
    copy of the strided QKV views up front saves a copy per chunk and GEMM); er in q's dtype.
    """
    B, nh, T, _ = q.shape
    S = k.size(2)
    out = torch.empty(B, nh, T, v.size(-1), dtype=v.dtype, device=v.device)
    for r0 in range(0, T, chunk):
        r1 = min(T, r0 + chunk)
        scores, _ = _chunk_scores(q[:, :, r0:r1], k, er, S - T + r1, key_pad)
        p = torch.softmax(scores, dim=-1, dtype=_acc_dtype(q.dtype))
        if dropout_p > 0:
            p.mul_(_dropout_keep(p.shape, dropout_p, seed + r0, p.device) / (1 - dropout_p))
        out[:, :, r0:r1] = torch.matmul(p.to(v.dtype), v[:, :, : S - T + r1])
    return out


class _RelativeAttention(torch.autograd.Function):
    """softmax(Q Kᵀ + Srel + causal) V, a query chunk at a time, memory-efficient both ways.

    Like flash attention, but in PyTorch ops: the forward keeps only q, k, v and Er; the
    backward recomputes one chunk's scores at a time. No (T, T) tensor of any kind outlives a
    chunk, so with a fixed chunk the relative term's memory grows linearly with the sequence
    (a chunk of c queries holds c·S scores), where an additive bias for SDPA is (heads, T, T).
    Causality also skips the keys after each chunk, which SDPA with an arbitrary bias cannot.
    Softmax runs in float32 even when q/k/v are bf16/fp16.
    """

    @staticmethod
    def forward(
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, er: Tensor, chunk: int, dropout_p: float
    ) -> Tensor:
        q, k, v = _rows(q), _rows(k), _rows(v)
        seed = int(torch.randint(0, 2**62, (1,)).item()) if dropout_p > 0 else 0
        out = _forward_chunks(q, k, v, er, chunk, None, dropout_p, seed)
        ctx.save_for_backward(q, k, v, er)
        ctx.chunk, ctx.dropout_p, ctx.seed = chunk, dropout_p, seed
        return out

    @staticmethod
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
        q, k, v, er = ctx.saved_tensors
        chunk, dropout_p = ctx.chunk, ctx.dropout_p
        B, nh, T, hs = q.shape
        S = k.size(2)
        dout = dout.contiguous()
        acc = _acc_dtype(q.dtype)
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        der = torch.zeros(er.shape, dtype=acc, device=er.device)
        for r0 in range(0, T, chunk):
            r1 = min(T, r0 + chunk)
            p1, b = S - T + r1, r1 - r0
            qc, doc = q[:, :, r0:r1], dout[:, :, r0:r1]
            kc, vc = k[:, :, :p1], v[:, :, :p1]
            scores, buf = _chunk_scores(qc, k, er, p1, None)
            p = torch.softmax(scores, dim=-1, dtype=acc)  # P, exactly as in the forward
            dp = torch.matmul(doc, vc.transpose(-2, -1)).to(acc)  # dL/d(P after dropout)
            pv = p  # what multiplied V in the forward
            if dropout_p > 0:
                keep = _dropout_keep(p.shape, dropout_p, ctx.seed + r0, p.device) / (1 - dropout_p)
                pv = p * keep
                dp.mul_(keep)
            _accumulate(
                dv[:, :, :p1].view(B * nh, p1, -1),
                pv.view(B * nh, b, p1).transpose(1, 2).to(doc.dtype),
                doc.reshape(B * nh, b, -1),
            )
            # dScores = P ∘ (dP - rowsum(P ∘ dP)) (0 where masked), also written into the skew
            # buffer, which then holds dL/d(Q·Erᵀ) in the padded layout: the first b values
            # belong to no score and are zeroed; column 0 is the zero row of Er.
            ds = torch._softmax_backward_data(dp, p, -1, acc).to(q.dtype).view(B * nh, b, p1)
            buf[..., b:].view(B * nh, b, p1).copy_(ds)
            buf[..., :b].zero_()
            er_c = er[..., S - p1 :, :]
            qc3 = qc.reshape(B * nh, b, hs)
            _accumulate(dk[:, :, :p1].view(B * nh, p1, hs), ds.transpose(1, 2), qc3)
            dqc = torch.bmm(ds, kc.reshape(B * nh, p1, hs))  # (B·nh, b, hs)
            if er.dim() == 2:  # shared by heads: one GEMM over all (batch, head, row) triples
                # dL/d(Q·Erᵀ) without its zero column: rows of p1 values every p1+1 in buf
                dqe = buf.as_strided((B * nh * b, p1), (p1 + 1, 1), buf.storage_offset() + 1)
                dqc.view(B * nh * b, hs).addmm_(dqe, er_c)
                _accumulate(der[S - p1 :], dqe.t(), qc3.reshape(B * nh * b, hs))
            else:  # (nh, S, hs): per head, summed over the batch
                dqe4 = buf.view(B, nh, b, p1 + 1)[..., 1:]
                dqc += torch.matmul(dqe4, er_c).view(B * nh, b, hs)
                der[:, S - p1 :] += torch.matmul(dqe4.transpose(-2, -1), qc).sum(0)
            dq[:, :, r0:r1] = dqc.view(B, nh, b, hs)
        return dq, dk.to(k.dtype), dv.to(v.dtype), der, None, None


REL_CHUNK = 64  # queries per chunk: fastest here at 256-1024 tokens, and memory stays linear


def relative_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    er: Tensor,
    key_pad: Tensor | None = None,
    dropout_p: float = 0.0,
    chunk: int = REL_CHUNK,
) -> Tensor:
    """Causal attention with the Music Transformer relative term; q is already scaled.

    q (B, nh, T, hs) are the last T of S positions; k, v (B, nh, S, hs); er (S, hs) or
    (nh, S, hs) embeds distances S-1..0. key_pad (B, S) marks left padding (inference only).
    Both training and inference go a chunk of queries at a time, so the relative term never
    needs a (T, S) tensor per head and the result is the same on every device and path.
    """
    if key_pad is None and torch.is_grad_enabled():
        return _RelativeAttention.apply(q, k, v, er.to(q.dtype), chunk, dropout_p)
    if key_pad is not None and torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("key padding is only supported without gradients (inference)")
    q, k, v = _rows(q), _rows(k), _rows(v)
    return _forward_chunks(q, k, v, er.to(q.dtype), chunk, key_pad, 0.0, 0)


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


# ----------------------------------------------------------------------------- blocks


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
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
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
