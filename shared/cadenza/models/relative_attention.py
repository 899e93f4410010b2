"""Music Transformer relative attention: a memory-efficient kernel in PyTorch ops.

Huang et al. 2018 ("Music Transformer") add a learned relative-position term to every
attention logit:

    attn = softmax((Q Kᵀ + Srel) / sqrt(hs) + causal mask),   Srel[i, j] = q_i · Er[i - j]

Srel is computed with the skewing trick (`relative_logits`), so only Er (L, hs) and Q·Erᵀ per
head exist, never an (L, L, hs) tensor. `relative_attention` takes the queries a chunk at a
time, adds Srel to Q·Kᵀ inside the chunk and recomputes chunks in its own backward pass
(`_RelativeAttention`), so neither the relative logits nor the attention matrix are ever held
whole: memory grows linearly with the sequence, as for gpt's fused SDPA. Training, evaluation,
prefill and cached decoding all go through it, so the relative term is applied on every path
(a model that adds it only on a non-fused path silently trains without it whenever torch picks
the fused kernel, e.g. with dropout 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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
                # dL/d(Q·Erᵀ) without its zero column: rows of p1 values every p1+1 in buf (a
                # view, not as_strided with an offset, so torch.compile can trace the backward)
                dqe = buf.view(B * nh * b, p1 + 1)[:, 1:]
                dqc.view(B * nh * b, hs).addmm_(dqe, er_c)
                _accumulate(der[S - p1 :], dqe.t(), qc3.reshape(B * nh * b, hs))
            else:  # (nh, S, hs): per head, summed over the batch
                dqe4 = buf.view(B, nh, b, p1 + 1)[..., 1:]
                dqc += torch.matmul(dqe4, er_c).view(B * nh, b, hs)
                der[:, S - p1 :] += torch.matmul(dqe4.transpose(-2, -1), qc).sum(0)
            dq[:, :, r0:r1] = dqc.view(B, nh, b, hs)
        return dq, dk.to(k.dtype), dv.to(v.dtype), der, None, None


REL_CHUNK = 64  # queries per chunk: fastest here at 256-1024 tokens, and memory stays linear


@torch.compiler.disable
def _train_attention(
    q: Tensor, k: Tensor, v: Tensor, er: Tensor, chunk: int, dropout_p: float
) -> Tensor:
    """The autograd kernel, kept out of torch.compile graphs: traced in, its per-chunk in-place
    accumulation into slices of dk/dv/dEr is functionalised into copies of whole buffers, and a
    compiled 4-layer music-transformer step ran at 0.36x (best) / 0.52x (median) of eager on
    CPU; run eagerly between compiled graphs it is at parity (BENCHMARKS.md, torch.compile)."""
    return _RelativeAttention.apply(q, k, v, er.to(q.dtype), chunk, dropout_p)


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
        return _train_attention(q, k, v, er, chunk, dropout_p)
    if key_pad is not None and torch.is_grad_enabled() and q.requires_grad:
        raise ValueError("key padding is only supported without gradients (inference)")
    q, k, v = _rows(q), _rows(k), _rows(v)
    return _forward_chunks(q, k, v, er.to(q.dtype), chunk, key_pad, 0.0, 0)


__all__ = ["REL_CHUNK", "relative_attention", "relative_logits"]
