"""Checkpoint payloads: the complete state of a training run as one `bytes` object.

The loop never touches files or SQL; it hands these bytes to its hooks, which store them
atomically wherever they like. A payload is a `torch.save` of plain containers and tensors only,
so `torch.load(weights_only=True)` can open it: a checkpoint uploaded by a user, or read back from
a shared bucket, can never execute code on a worker.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1
_REQUIRED_KEYS = ("format", "model", "step", "tokenizer_hash", "model_spec")


def spec_to_plain(model_spec: Mapping[str, Any]) -> dict[str, Any]:
    """Turn a model spec (whose config may be a pydantic model) into JSON-able builtins.

    Checkpoints must hold only builtins and tensors to stay `weights_only`-loadable, and the
    spec is compared between a run and its resume, so it needs one canonical form.
    """
    config = model_spec.get("config")
    if config is not None and hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    plain = {
        "architecture": str(model_spec["architecture"]),
        "config": json.loads(json.dumps(config if config is not None else {})),
        "vocab_size": int(model_spec["vocab_size"]),
    }
    return plain


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every RNG the step can touch (dropout, numpy/python users) as tensors.

    numpy's and python's states are converted to int64 tensors because their native forms
    (ndarray, tuples of huge ints) are not on the `weights_only` allow-list or are wasteful.
    """
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)
    _, keys, pos, has_gauss, cached = np_state
    py_version, py_state, py_gauss = random.getstate()
    cuda_state: torch.Tensor | None = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_state = torch.cuda.get_rng_state()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": cuda_state,
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "python_version": int(py_version),
        "python_state": torch.tensor(py_state, dtype=torch.int64),
        "python_gauss_next": None if py_gauss is None else float(py_gauss),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`; CUDA state is skipped when resuming on a CPU machine."""
    torch.set_rng_state(state["torch_cpu"].cpu().to(torch.uint8))
    cuda_state = state.get("torch_cuda")
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state.cpu().to(torch.uint8))
    keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(
        (
            "MT19937",
            keys,
            int(state["numpy_pos"]),
            int(state["numpy_has_gauss"]),
            float(state["numpy_cached_gaussian"]),
        )
    )
    py_state = tuple(int(v) for v in state["python_state"].tolist())
    random.setstate((int(state["python_version"]), py_state, state["python_gauss_next"]))


def pack(
    *,
    model_state: Mapping[str, torch.Tensor],
    optimizer_state: Mapping[str, Any] | None,
    scheduler_state: Mapping[str, Any] | None,
    scaler_state: Mapping[str, Any] | None,
    step: int,
    tokenizer_hash: str,
    model_spec: Mapping[str, Any],
    train_config: Mapping[str, Any] | None,
    best_val_loss: float | None,
    rng_states: list[dict[str, Any]] | None = None,
    data_generator_states: list[torch.Tensor] | None = None,
    evals_since_best: int = 0,
    elapsed_s: float = 0.0,
    tokens_seen: int = 0,
    world_size: int = 1,
) -> bytes:
    """Serialise one training state; everything needed to resume bit-for-bit on the same setup.

    `rng_states` and `data_generator_states` are lists because a distributed run has one per
    rank / per data slot; rank 0 gathers them before calling this.
    """
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "scaler": scaler_state,
        "step": int(step),
        "tokenizer_hash": str(tokenizer_hash),
        "model_spec": spec_to_plain(model_spec),
        "train_config": dict(train_config) if train_config is not None else None,
        "best_val_loss": None if best_val_loss is None else float(best_val_loss),
        "evals_since_best": int(evals_since_best),
        "elapsed_s": float(elapsed_s),
        "tokens_seen": int(tokens_seen),
        "world_size": int(world_size),
        "rng": rng_states or [],
        "data_generators": data_generator_states or [],
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def unpack(payload: bytes) -> dict[str, Any]:
    """Load a payload with `weights_only=True`; anything else is refused with a clear error."""
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe pickles
        raise ValueError(
            "not a readable Cadenza checkpoint (corrupt, truncated, or contains objects that "
            f"are not allowed in a weights-only load): {exc}"
        ) from exc
    if not isinstance(state, dict) or any(key not in state for key in _REQUIRED_KEYS):
        raise ValueError("not a Cadenza checkpoint: required keys are missing")
    if state["format"] != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint format {state['format']} is not supported by this version "
            f"(expects {FORMAT_VERSION}); upgrade Cadenza or retrain"
        )
    return state


# Metadata key that `cadenza.models.model_from_safetensors` reads the spec from; the unit tests
# load an export with that function, so a rename on either side fails loudly.
SAFETENSORS_SPEC_KEY = "cadenza_model_spec"


def export_safetensors(payload: bytes) -> bytes:
    """Weights only, as safetensors, for serving or taking the model elsewhere.

    Loadable with `cadenza.models.model_from_safetensors`. Tied weights are stored once, and
    the metadata also carries the tokenizer hash and step, so the file alone says which corpus
    tokenizer its ids belong to.
    """
    from safetensors.torch import save

    state = unpack(payload)
    model, spec = model_from_checkpoint(payload, "cpu")
    every = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    aliases = every - {name for name, _ in model.named_parameters()}
    tensors = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name not in aliases
    }
    metadata = {
        SAFETENSORS_SPEC_KEY: json.dumps(ckpt_spec(spec)),
        "tokenizer_hash": str(state["tokenizer_hash"]),
        "step": str(state["step"]),
    }
    return save(tensors, metadata=metadata)


def ckpt_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Only the three keys that rebuild a model (drops tokenizer_hash/step annotations)."""
    return {k: spec[k] for k in ("architecture", "config", "vocab_size")}


def load_weights(model: nn.Module, model_state: Mapping[str, torch.Tensor]) -> None:
    """Load weights into `model`, turning every mismatch into a ValueError that says what to do.

    Delegates to `cadenza.models.checkpoint.load_weights` (which tolerates tied aliases and
    torch.compile/DDP prefixes) and also converts torch's shape-mismatch RuntimeError.
    """
    from cadenza.models.checkpoint import load_weights as models_load_weights

    try:
        models_load_weights(model, model_state)  # type: ignore[arg-type]
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            "checkpoint weights do not fit this model (different architecture or size); use "
            f"the same architecture and config as the checkpoint: {exc}"
        ) from exc


def model_from_checkpoint(
    payload: bytes, device: str | torch.device | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, in eval mode, for the sampler.

    Returns the model and its spec (architecture, config, vocab_size) annotated with the
    `tokenizer_hash` and `step` the sampler needs to check a primer's tokenizer.
    """
    from cadenza.models.checkpoint import build_from_spec

    state = unpack(payload)
    model = build_from_spec(state["model_spec"])
    load_weights(model, state["model"])
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.eval()
    spec: dict[str, Any] = dict(state["model_spec"])
    spec["tokenizer_hash"] = state["tokenizer_hash"]
    spec["step"] = state["step"]
    return model, spec


def checkpoints_to_prune(
    steps: Iterable[int], *, keep_last_n: int, protect: Iterable[int] = ()
) -> list[int]:
    """Which stored checkpoint steps to delete: all but the newest `keep_last_n` and `protect`.

    Storage belongs to the hooks, so pruning is too; this keeps the rule in one tested place
    (the best checkpoint is passed in `protect` and survives however old it is).
    """
    if keep_last_n < 1:
        raise ValueError("keep_last_n must be at least 1 so a resume point always exists")
    ordered = sorted(set(steps), reverse=True)
    keep = set(ordered[:keep_last_n]) | set(protect)
    return sorted(s for s in ordered if s not in keep)
