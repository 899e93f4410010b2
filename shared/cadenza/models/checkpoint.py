"""The inference format: what a stored model is, and how to rebuild it for sampling or serving.

A model is fully described by its *spec* `{"architecture", "config", "vocab_size"}` (plain JSON
types) plus its weights; the corpus tokenizer's hash says which token ids it speaks. A checkpoint
is a dict loaded with `torch.load(..., weights_only=True)` (never unpickling code from the object
store) holding at least `{MODEL_STATE_KEY: state_dict, MODEL_SPEC_KEY: spec}`; a training
checkpoint (`cadenza.train.checkpoint.pack`) adds `FORMAT_KEY`, `TOKENIZER_HASH_KEY`, `STEP_KEY`
and the optimiser/RNG state on top of this format. For serving, `model_to_safetensors` and
`export_safetensors` pack the weights and the spec into one safetensors blob (the spec goes in
its string metadata under `SAFETENSORS_SPEC_KEY`).

An *adapter* checkpoint (a LoRA model, `cadenza.models.lora`) has the same keys, but its
`MODEL_STATE_KEY` holds only the adapter's tensors and `ADAPTER_KEY` its options; the spec is
its base model's. It means something only with the base checkpoint it was trained on:
`load_for_inference(adapter, base=base)` rebuilds the base and merges the adapter into its
weights, so the sampler sees an ordinary model.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from cadenza.models.base import CadenzaModel
from cadenza.models.registry import build_model

MODEL_STATE_KEY = "model"
"""Checkpoint key of the model's state_dict."""
MODEL_SPEC_KEY = "model_spec"
"""Checkpoint key of `CadenzaModel.spec()`."""
TOKENIZER_HASH_KEY = "tokenizer_hash"
"""Checkpoint (and safetensors metadata) key of the corpus tokenizer's hash."""
STEP_KEY = "step"
"""Checkpoint (and safetensors metadata) key of the optimizer step the weights were saved at."""
FORMAT_KEY = "format"
"""Checkpoint key of the payload format version written by training."""
FORMAT_VERSION = 1
ADAPTER_KEY = "adapter"
"""Checkpoint key of a LoRA adapter's options (resolved `AdapterSpec`); absent for full models."""
SAFETENSORS_SPEC_KEY = "cadenza_model_spec"
"""safetensors metadata key holding the JSON spec that rebuilds the network."""
SPEC_FIELDS = ("architecture", "config", "vocab_size")
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile and DDP wrappers


# ----------------------------------------------------------------------------- the spec


def spec_to_plain(model_spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's three keys as JSON-able builtins (a pydantic config is dumped).

    Checkpoints must hold only builtins and tensors to stay `weights_only`-loadable, and the
    spec is compared between a run and its resume, so it needs one canonical form.
    """
    config = model_spec.get("config")
    if config is not None and hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    return {
        "architecture": str(model_spec["architecture"]),
        "config": json.loads(json.dumps(config if config is not None else {})),
        "vocab_size": int(model_spec["vocab_size"]),
    }


def build_from_spec(spec: Mapping[str, Any]) -> CadenzaModel:
    """An untrained model from a spec dict; errors name missing or unexpected keys.

    The config may be a dict or an already-validated pydantic config (training passes the
    resolved preset object straight through).
    """
    keys, fields = set(spec), set(SPEC_FIELDS)
    if keys != fields:
        raise ValueError(
            f"model spec needs exactly the keys {sorted(fields)}; "
            f"missing {sorted(fields - keys)}, unexpected {sorted(keys - fields)}"
        )
    config = spec["config"]
    if not hasattr(config, "model_dump"):
        config = dict(config)
    return build_model(str(spec["architecture"]), config, int(spec["vocab_size"]))


# ----------------------------------------------------------------------------- weights


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
    """Strict load that tolerates missing tied aliases and torch.compile/DDP key prefixes.

    Every mismatch (missing or unexpected names, or torch's shape-mismatch RuntimeError) becomes
    one ValueError that names the offending keys and says what to do.
    """
    advice = (
        f"checkpoint weights do not fit this {model.architecture} model (different architecture "
        "or size); use the same architecture and config as the checkpoint"
    )
    try:
        missing, unexpected = model.load_state_dict(_strip_wrappers(state), strict=False)
    except RuntimeError as exc:
        raise ValueError(f"{advice}: {exc}") from exc
    really_missing = sorted(set(missing) - _tied_aliases(model))
    if really_missing or unexpected:
        raise ValueError(f"{advice}: missing {really_missing}, unexpected {sorted(unexpected)}")


# ----------------------------------------------------------------------------- checkpoints


def model_checkpoint(
    model_state: Mapping[str, Tensor],
    model_spec: Mapping[str, Any],
    *,
    tokenizer_hash: str,
    step: int,
    adapter: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The inference part of a checkpoint (training adds its own state to this dict).

    With `adapter`, `model_state` is the adapter's tensors only (`lora.adapter_state`).
    """
    out: dict[str, Any] = {
        FORMAT_KEY: FORMAT_VERSION,
        MODEL_STATE_KEY: {k: v.detach().cpu() for k, v in model_state.items()},
        STEP_KEY: int(step),
        TOKENIZER_HASH_KEY: str(tokenizer_hash),
        MODEL_SPEC_KEY: spec_to_plain(model_spec),
    }
    if adapter is not None:
        out[ADAPTER_KEY] = json.loads(json.dumps(dict(adapter)))
    return out


def dump_checkpoint(checkpoint: Mapping[str, Any]) -> bytes:
    """`torch.save` of a checkpoint dict to bytes (the inverse of `load_checkpoint`)."""
    buffer = io.BytesIO()
    torch.save(dict(checkpoint), buffer)
    return buffer.getvalue()


def load_checkpoint(
    source: str | Path | bytes | BinaryIO, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """torch.load with weights_only=True (plain tensors and containers only, no code).

    Anything else is refused with a ValueError, as is a payload whose `FORMAT_KEY` names a
    format this version cannot read.
    """
    f: Any = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        obj = torch.load(f, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe pickles
        raise ValueError(
            "not a readable Cadenza checkpoint (corrupt, truncated, or contains objects that "
            f"are not allowed in a weights-only load): {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise ValueError(f"a checkpoint must be a dict, got {type(obj).__name__}")
    if FORMAT_KEY in obj and obj[FORMAT_KEY] != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format {obj[FORMAT_KEY]} is not supported by this version "
            f"(expects {FORMAT_VERSION}); upgrade Cadenza or retrain"
        )
    return obj


def _as_checkpoint(checkpoint: Mapping[str, Any] | bytes) -> Mapping[str, Any]:
    return load_checkpoint(checkpoint) if isinstance(checkpoint, bytes | bytearray) else checkpoint


def model_from_checkpoint(
    checkpoint: Mapping[str, Any] | bytes, map_location: str | torch.device | None = None
) -> CadenzaModel:
    """Rebuild a model in eval mode from a checkpoint dict (or its stored bytes)."""
    checkpoint = _as_checkpoint(checkpoint)
    for key in (MODEL_SPEC_KEY, MODEL_STATE_KEY):
        if key not in checkpoint:
            raise ValueError(f"checkpoint has no {key!r} entry; keys: {sorted(checkpoint)}")
    if checkpoint.get(ADAPTER_KEY) is not None:
        raise ValueError(
            "this checkpoint holds only a LoRA adapter; load it together with the base "
            "checkpoint it was trained on (load_for_inference(adapter, base=base))"
        )
    model = build_from_spec(checkpoint[MODEL_SPEC_KEY])
    load_weights(model, checkpoint[MODEL_STATE_KEY])
    if map_location is not None:
        model.to(map_location)
    return model.eval()


def checkpoint_spec(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The stored spec annotated with `tokenizer_hash` and `step` (None where not stored).

    The sampler compares the tokenizer hash with the primer's corpus before generating.
    """
    spec: dict[str, Any] = dict(checkpoint[MODEL_SPEC_KEY])
    spec[TOKENIZER_HASH_KEY] = checkpoint.get(TOKENIZER_HASH_KEY)
    spec[STEP_KEY] = checkpoint.get(STEP_KEY)
    return spec


def merged_model(
    adapter: Mapping[str, Any] | bytes, base: Mapping[str, Any] | bytes
) -> CadenzaModel:
    """The base checkpoint's model with the adapter checkpoint merged into its weights (CPU).

    Merging once at load (W + alpha/rank * B A per adapted layer) leaves plain `nn.Linear`
    layers, so sampling keeps its KV cache and fixed-shape decode path and costs nothing extra.
    """
    from cadenza.models import lora

    adapter, base = _as_checkpoint(adapter), _as_checkpoint(base)
    if ADAPTER_KEY not in adapter:
        raise ValueError("not an adapter checkpoint: it has no adapter options")
    if spec_to_plain(adapter[MODEL_SPEC_KEY]) != spec_to_plain(base[MODEL_SPEC_KEY]):
        raise ValueError("the adapter was trained on another base model (the specs differ)")
    if adapter.get(TOKENIZER_HASH_KEY) != base.get(TOKENIZER_HASH_KEY):
        raise ValueError("the adapter and its base speak different tokenizers")
    model = model_from_checkpoint(base, "cpu")
    lora.apply_lora(model, adapter[ADAPTER_KEY])
    lora.load_adapter_state(model, adapter[MODEL_STATE_KEY])
    return lora.merge_lora(model).eval()  # type: ignore[return-value]


def load_for_inference(
    checkpoint: Mapping[str, Any] | bytes,
    device: str | torch.device | None = None,
    *,
    base: Mapping[str, Any] | bytes | None = None,
) -> tuple[CadenzaModel, dict[str, Any]]:
    """The model in eval mode on `device` (default: CUDA when present) and its annotated spec.

    An adapter checkpoint needs `base`, the checkpoint it was trained on; they are merged.
    """
    checkpoint = _as_checkpoint(checkpoint)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if checkpoint.get(ADAPTER_KEY) is not None:
        if base is None:
            raise ValueError("an adapter checkpoint needs its base checkpoint to sample")
        return merged_model(checkpoint, base).to(device), checkpoint_spec(checkpoint)
    return model_from_checkpoint(checkpoint, device), checkpoint_spec(checkpoint)


# ----------------------------------------------------------------------------- safetensors


def model_to_safetensors(model: CadenzaModel, metadata: Mapping[str, str] | None = None) -> bytes:
    """Weights (tied ones once) and the spec in one safetensors blob, plus extra `metadata`."""
    # Imported on use: training (also on a machine without safetensors) never needs it.
    from safetensors.torch import save as st_save

    aliases = _tied_aliases(model)
    tensors = {
        name: t.detach().contiguous()
        for name, t in model.state_dict().items()
        if name not in aliases
    }
    meta = {SAFETENSORS_SPEC_KEY: json.dumps(model.spec()), **(metadata or {})}
    return st_save(tensors, metadata=meta)


def export_safetensors(checkpoint: Mapping[str, Any] | bytes) -> bytes:
    """A checkpoint's weights as safetensors, for serving or taking the model elsewhere.

    Loadable with `model_from_safetensors`. The metadata also carries the tokenizer hash and
    step, so the file alone says which corpus tokenizer its ids belong to. An adapter
    checkpoint exports only the adapter's tensors, with its options under `ADAPTER_KEY` (the
    base's weights are the base's to publish, and would make every adapter a full copy).
    """
    checkpoint = _as_checkpoint(checkpoint)
    meta = {
        TOKENIZER_HASH_KEY: str(checkpoint.get(TOKENIZER_HASH_KEY)),
        STEP_KEY: str(checkpoint.get(STEP_KEY)),
    }
    if checkpoint.get(ADAPTER_KEY) is not None:
        from safetensors.torch import save as st_save

        meta[SAFETENSORS_SPEC_KEY] = json.dumps(spec_to_plain(checkpoint[MODEL_SPEC_KEY]))
        meta[ADAPTER_KEY] = json.dumps(checkpoint[ADAPTER_KEY])
        tensors = {k: v.contiguous() for k, v in checkpoint[MODEL_STATE_KEY].items()}
        return st_save(tensors, metadata=meta)
    return model_to_safetensors(model_from_checkpoint(checkpoint, "cpu"), meta)


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
    from safetensors.torch import load as st_load

    meta = _safetensors_metadata(data)
    if SAFETENSORS_SPEC_KEY not in meta:
        raise ValueError("safetensors blob carries no Cadenza model spec in its metadata")
    if ADAPTER_KEY in meta:
        raise ValueError("this safetensors blob holds only a LoRA adapter, not a whole model")
    model = build_from_spec(json.loads(meta[SAFETENSORS_SPEC_KEY]))
    load_weights(model, st_load(data))
    return model.to(map_location).eval()
