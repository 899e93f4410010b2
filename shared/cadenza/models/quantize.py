"""Weight-only int8 quantization for sampling: the same model, a quarter of the weight bytes.

Why: decoding one token at batch 1 reads every weight once and does ~2 FLOP per weight, so on a
CPU it waits on memory, not on arithmetic. Measured on a 2-core Xeon (BENCHMARKS.md,
"Sampling"): the 16 linear layers of a 4-layer, 256-wide `gpt` took ~490 µs per token in
float32 (14 MB of weights streamed from L3 every token) and ~230 µs as int8 weights with
bfloat16 activations (`torch._weight_int8pack_mm`, which dequantizes inside the GEMV kernel).
A bfloat16 copy alone did not help (MKL's bf16 GEMV at M=1 is slower than its fp32 one).

What `quantize_int8` does (gpt-fast's "int8 weight-only" scheme): a deep copy of the model in
bfloat16, every `nn.Linear` replaced by an :class:`Int8Linear` holding its weight rounded to int8
with one scale per output channel (absmax / 127) and its bias in bfloat16. Embeddings, norms,
attention and recurrent layers stay bfloat16; the sampler turns the logits into float32 before
its filters and softmax. Nothing is written back: training and the stored checkpoint keep full
precision, and a sample job asks for this copy with `quantize: "int8"`.

The price is a small change in the logits (bench/sample.py `--quality` measures the KL
divergence to the float32 model and the change of held-out NLL); the cached and uncached
paths of the quantized copy agree to bfloat16 rounding, not bit for bit.
"""

from __future__ import annotations

import copy
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cadenza.models.base import CadenzaModel

QUANTIZE_MODES: tuple[str, ...] = ("none", "int8")  # the request's `quantize` (sample.params)


class Int8Linear(nn.Module):
    """`y = x W^T * scale + b` with W in int8 (one scale per output row), x in bfloat16.

    On CPU the product is `torch._weight_int8pack_mm` (the dequantization happens in the kernel,
    so only the int8 bytes are read) when `in_features` is a multiple of 16: the kernel walks K
    in blocks of 16 and, on torch 2.13, returned NaN/inf or crashed the process for other
    widths (8, 24, 40, 100 tried). Otherwise, and on other devices, W is widened to x's dtype
    first (correct everywhere; a CUDA graph or compile fuses the widening).
    """

    weight: Tensor
    scale: Tensor
    bias: Tensor | None

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scale", scale.to(dtype))
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x.to(self.scale.dtype)
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.device.type == "cpu" and self.in_features % 16 == 0:
            y = torch._weight_int8pack_mm(flat.contiguous(), self.weight, self.scale)
        else:
            y = F.linear(flat, self.weight.to(flat.dtype)) * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: CadenzaModel) -> CadenzaModel:
    """A bfloat16 copy of `model` (eval mode) whose linear layers hold int8 weights.

    The original is left untouched. Tied weights (gpt's `lm_head` shares `wte`) are quantized
    for the head and kept in bfloat16 for the embedding lookup.
    """
    out = copy.deepcopy(model).eval()
    _swap(out)
    out.to(torch.bfloat16)  # what is left: embeddings, norms, attention tables, RNN cells
    return out


def _swap(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, Int8Linear(child))
        else:
            _swap(child)


_copies: weakref.WeakKeyDictionary[CadenzaModel, tuple[tuple[int, ...], CadenzaModel]] = (
    weakref.WeakKeyDictionary()
)


def prepare_for_sampling(model: CadenzaModel, quantize: str) -> CadenzaModel:
    """The model the sampler decodes with: itself, or its int8 copy (`quantize: "int8"`).

    The copy is kept while the model lives and its weights are unchanged (their version
    counters, which every in-place write bumps), so the re-sampling tries and variations of one
    job quantize once.
    """
    if quantize == "none":
        return model
    if quantize != "int8":
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {quantize!r}")
    versions = tuple(p._version for p in model.parameters())
    kept = _copies.get(model)
    if kept is not None and kept[0] == versions:
        return kept[1]
    copy_ = quantize_int8(model)
    _copies[model] = (versions, copy_)
    return copy_


__all__ = ["QUANTIZE_MODES", "Int8Linear", "prepare_for_sampling", "quantize_int8"]
