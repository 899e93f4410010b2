"""Rebuilding models for inference from what training stored.

A model is fully described by its *spec* `{"architecture", "config", "vocab_size"}` (plain JSON
types) plus its weights. Training checkpoints are dicts loaded with `torch.load(...,
weights_only=True)` (never unpickling code from the object store) holding at least
`{MODEL_STATE_KEY: state_dict, MODEL_SPEC_KEY: spec}`. For serving, `model_to_safetensors`
packs weights and spec into one safetensors blob (the spec goes in its string metadata).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from cadenza.models.base import CadenzaModel
from cadenza.models.registry import build_model

MODEL_STATE_KEY = "model"
"""Checkpoint key of the model's state_dict."""
MODEL_SPEC_KEY = "model_spec"
"""Checkpoint key of `CadenzaModel.spec()`."""
_SPEC_METADATA = "cadenza_model_spec"
_SPEC_FIELDS = {"architecture", "config", "vocab_size"}
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


def build_from_spec(spec: Mapping[str, Any]) -> CadenzaModel:
    """An untrained model from a spec dict; errors name missing or unexpected keys."""
    keys = set(spec)
    if keys != _SPEC_FIELDS:
        raise ValueError(
            f"model spec needs exactly the keys {sorted(_SPEC_FIELDS)}; "
            f"missing {sorted(_SPEC_FIELDS - keys)}, unexpected {sorted(keys - _SPEC_FIELDS)}"
        )
    return build_model(str(spec["architecture"]), dict(spec["config"]), int(spec["vocab_size"]))


def _tied_aliases(model: CadenzaModel) -> set[str]:
    """Parameter names that are a second name for an already-listed parameter (weight tying)."""
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    return every - {name for name, _ in model.named_parameters()}


def _strip_wrappers(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def load_weights(model: CadenzaModel, state: Mapping[str, Tensor]) -> None:
    """Strict load that tolerates missing tied aliases and torch.compile/DDP key prefixes."""
    missing, unexpected = model.load_state_dict(_strip_wrappers(state), strict=False)
    really_missing = sorted(set(missing) - _tied_aliases(model))
    if really_missing or unexpected:
        raise ValueError(
            f"checkpoint does not match the {model.architecture} model: missing "
            f"{really_missing}, unexpected {sorted(unexpected)}"
        )


def load_checkpoint(
    source: str | Path | bytes | BinaryIO, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """torch.load with weights_only=True (plain tensors and containers only, no code)."""
    f: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    obj = torch.load(f, map_location=map_location, weights_only=True)
    if not isinstance(obj, dict):
        raise ValueError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    return obj


def model_from_checkpoint(
    checkpoint: Mapping[str, Any], map_location: str | torch.device | None = None
) -> CadenzaModel:
    """Rebuild a model in eval mode from a training checkpoint dict."""
    for key in (MODEL_SPEC_KEY, MODEL_STATE_KEY):
        if key not in checkpoint:
            raise ValueError(f"checkpoint has no {key!r} entry; keys: {sorted(checkpoint)}")
    model = build_from_spec(checkpoint[MODEL_SPEC_KEY])
    load_weights(model, checkpoint[MODEL_STATE_KEY])
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def model_to_safetensors(model: CadenzaModel) -> bytes:
    """Weights (tied ones once) and the spec in one safetensors blob."""
    aliases = _tied_aliases(model)
    tensors = {
        name: t.detach().contiguous()
        for name, t in model.state_dict().items()
        if name not in aliases
    }
    return st_save(tensors, metadata={_SPEC_METADATA: json.dumps(model.spec())})


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The string metadata of a safetensors blob (8-byte little-endian header size + JSON)."""
    if len(data) < 8:
        raise ValueError("not a safetensors blob: shorter than its header size field")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise ValueError("not a safetensors blob: header size exceeds the data")
    header = json.loads(data[8 : 8 + n])
    meta = header.get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}


def model_from_safetensors(data: bytes, map_location: str | torch.device = "cpu") -> CadenzaModel:
    """Inverse of `model_to_safetensors`; the model comes back in eval mode."""
    meta = _safetensors_metadata(data)
    if _SPEC_METADATA not in meta:
        raise ValueError("safetensors blob carries no Cadenza model spec in its metadata")
    model = build_from_spec(json.loads(meta[_SPEC_METADATA]))
    load_weights(model, st_load(data))
    return model.to(map_location).eval()
