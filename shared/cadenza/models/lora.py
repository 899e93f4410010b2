"""LoRA: train a few low-rank matrices beside a frozen model, store only them, merge to sample.

A small implementation of our own rather than PEFT: PEFT is not installed, and what Cadenza
needs is narrow (wrap named `nn.Linear` layers, save the adapter's tensors, fold them into the
weights) while its models need a checkpoint format that stays `weights_only`-loadable and a
sampler whose KV cache and fixed-shape decode step (`decode_static`) see plain `nn.Linear`
layers. Merging at load time gives exactly that: the sampler runs the same code and speed as
for any other model.

`LoRALinear` *is* an `nn.Linear` holding the base layer's own weight and bias (frozen) plus
`lora_A` (rank x in) and `lora_B` (out x rank, zero at start), so the wrapped model's state
dict keeps every base name and adds `….lora_A` / `….lora_B`: the adapter's part of it is
exactly those keys (`adapter_state`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ADAPTER_KEYS = ("lora_A", "lora_B")


class LoRALinear(nn.Linear):
    """`base(x) + (alpha / rank) * B(A(dropout(x)))` with the base weight and bias frozen."""

    def __init__(self, base: nn.Linear, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter: frozen below, never copied
        self.bias = base.bias
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dtype))
        # As in the LoRA paper: A random, B zero, so training starts from the base model.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.rank, self.scaling = rank, alpha / rank
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + update * self.scaling

    def delta(self) -> Tensor:
        """The adapter's weight update, `scaling * B A` (out x in)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` with `W + scaling * B A` (same bias), for sampling."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.delta().to(self.weight.dtype))
            if self.bias is not None and out.bias is not None:
                out.bias.copy_(self.bias)
        return out


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def apply_lora(model: nn.Module, adapter: Mapping[str, Any]) -> list[str]:
    """Freeze every parameter of `model` and wrap its target layers; returns their names.

    `adapter` is a resolved `AdapterSpec` (`cadenza.models.adapters.resolve_adapter`). A target
    that matches no layer raises ValueError (the table of targets and the model disagree).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    targets = list(adapter["targets"])
    wrapped: list[str] = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or isinstance(module, LoRALinear):
            continue
        if not any(_matches(name, t) for t in targets):
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lora = LoRALinear(
            module,
            rank=int(adapter["rank"]),
            alpha=float(adapter["alpha"]),
            dropout=float(adapter.get("dropout", 0.0)),
        )
        setattr(parent, attr, lora)
        wrapped.append(name)
    missing = [t for t in targets if not any(_matches(n, t) for n in wrapped)]
    if missing:
        raise ValueError(f"adapter targets {missing} match no linear layer of this model")
    return wrapped


def has_lora(model: nn.Module) -> bool:
    """Whether `model` carries LoRA layers (it is being trained as an adapter)."""
    return any(isinstance(m, LoRALinear) for m in model.modules())


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapter's tensors of `model`'s state dict (what an adapter checkpoint stores)."""
    return {
        k: v.detach().cpu()
        for k, v in model.state_dict().items()
        if k.rsplit(".", 1)[-1] in ADAPTER_KEYS
    }


def load_adapter_state(model: nn.Module, state: Mapping[str, Tensor]) -> None:
    """Load adapter tensors into a model wrapped by `apply_lora`; every name must match."""
    own = adapter_state(model)
    clean = {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = sorted(set(own) - set(clean)), sorted(set(clean) - set(own))
    if missing or unexpected:
        raise ValueError(
            "the adapter does not fit this model (other targets or architecture): "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    result = model.load_state_dict(clean, strict=False)
    assert not result.unexpected_keys


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` of `model` by its merged `nn.Linear`, in place."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, module.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_params(model: nn.Module) -> int:
    """Parameters the optimizer updates (unique ones; tied weights once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
