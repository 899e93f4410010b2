"""Training state on top of the inference format: everything a run needs to resume exactly.

A payload is the inference checkpoint of `cadenza.models.checkpoint` (weights, spec, tokenizer
hash, step, format version) plus the optimizer, scheduler and grad-scaler state, the counters of
`TrainState`, every rank's RNG state and every data slot's generator state. It is a `torch.save`
of plain containers and tensors only, so `torch.load(weights_only=True)` can open it: a
checkpoint uploaded by a user, or read back from a shared bucket, can never execute code.

The loop never touches files or SQL; it hands these bytes to its hooks, which store them
atomically and prune old ones with `checkpoints_to_prune`. Importing this module does not
import torch (the pruning rule is pure); the functions that need it load it on first use.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from cadenza.models import CadenzaModel
    from cadenza.train.config import TrainConfig
    from cadenza.train.data import TrainBatches
    from cadenza.train.distributed import DistInfo
    from cadenza.train.step import TrainStep

_REQUIRED_KEYS = ("format", "model", "step", "tokenizer_hash", "model_spec")


@dataclass
class TrainState:
    """Counters that go into every checkpoint and come back on resume."""

    step: int = 0
    best_val_loss: float | None = None
    evals_since_best: int = 0
    elapsed_before: float = 0.0  # seconds trained by earlier attempts of this run
    tokens_seen: int = 0
    last_lr: float = 0.0  # lr of the latest optimizer step, reported with val/test rows

    def note_val(self, loss: float, *, count_miss: bool = True) -> bool:
        """Record a validation loss; True when it is the best so far.

        Early stopping counts the evaluations since the best (`count_miss`); the final
        evaluation of a run only updates the best, since no further step depends on it.
        """
        if self.best_val_loss is None or loss < self.best_val_loss:
            self.best_val_loss = loss
            self.evals_since_best = 0
            return True
        if count_miss:
            self.evals_since_best += 1
        return False


# ----------------------------------------------------------------------------- RNG


def capture_rng_state() -> dict[str, Any]:
    """Snapshot every RNG the step can touch (dropout, numpy/python users) as tensors.

    numpy's and python's states are converted to int64 tensors because their native forms
    (ndarray, tuples of huge ints) are not on the `weights_only` allow-list or are wasteful.
    """
    import torch

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
    import torch

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


def seed_rngs(seed: int, rank: int) -> None:
    """Per-rank dropout / numpy / python streams (ranks must not drop the same units)."""
    import torch

    torch.manual_seed(seed + 7919 * (rank + 1))
    np.random.seed((seed + rank) % 2**32)
    random.seed(seed + rank)


# ----------------------------------------------------------------------------- payloads


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
    adapter: Mapping[str, Any] | None = None,
) -> bytes:
    """Serialise one training state; everything needed to resume bit-for-bit on the same setup.

    `rng_states` and `data_generator_states` are lists because a distributed run has one per
    rank / per data slot; rank 0 gathers them before calling this. With `adapter` (a LoRA
    run), `model_state` and the optimizer state cover only the adapter's tensors: the frozen
    base weights live in the base checkpoint, never in this payload.
    """
    from cadenza.models.checkpoint import dump_checkpoint, model_checkpoint

    payload = model_checkpoint(
        model_state, model_spec, tokenizer_hash=tokenizer_hash, step=step, adapter=adapter
    )
    payload.update(
        {
            "optimizer": optimizer_state,
            "scheduler": scheduler_state,
            "scaler": scaler_state,
            "train_config": dict(train_config) if train_config is not None else None,
            "best_val_loss": None if best_val_loss is None else float(best_val_loss),
            "evals_since_best": int(evals_since_best),
            "elapsed_s": float(elapsed_s),
            "tokens_seen": int(tokens_seen),
            "world_size": int(world_size),
            "rng": rng_states or [],
            "data_generators": data_generator_states or [],
        }
    )
    return dump_checkpoint(payload)


def unpack(payload: bytes) -> dict[str, Any]:
    """Load a training payload weights-only; anything else is refused with a clear error."""
    from cadenza.models.checkpoint import load_checkpoint

    state = load_checkpoint(payload)
    if any(key not in state for key in _REQUIRED_KEYS):
        raise ValueError("not a Cadenza checkpoint: required keys are missing")
    return state


# ----------------------------------------------------------------------------- capture / restore


def check_tokenizer(saved: str, expected: str, what: str) -> None:
    """Token ids only mean the same thing under the same tokenizer; refuse anything else."""
    if saved != expected:
        raise ValueError(
            f"{what} was trained with tokenizer {saved!r} but this corpus uses {expected!r}; "
            "token ids would mean different things. Use a corpus built with the same tokenizer "
            "or train from scratch"
        )


def capture(
    *,
    step: TrainStep,
    state: TrainState,
    batches: TrainBatches,
    spec: Mapping[str, Any],
    tokenizer_hash: str,
    cfg: TrainConfig,
    info: DistInfo,
    elapsed: Callable[[], float],
    adapter: Mapping[str, Any] | None = None,
) -> bytes | None:
    """The full training state as a payload on rank 0 (None on other ranks).

    A collective: every rank must call it, since each contributes its RNG and data-generator
    states. A model wrapped by `lora.apply_lora` saves only its adapter (and `adapter`, its
    options).
    """
    from cadenza.models import lora
    from cadenza.train.distributed import gather_objects

    local = {"rng": capture_rng_state(), "gens": [g.get_state() for g in batches.generators]}
    gathered = gather_objects(local, info)
    if not info.is_main:
        return None
    optim = step.state_dicts()
    adapted = lora.has_lora(step.raw_model)
    return pack(
        model_state=lora.adapter_state(step.raw_model) if adapted else step.raw_model.state_dict(),
        adapter=adapter,
        optimizer_state=optim["optimizer"],
        scheduler_state=optim["scheduler"],
        scaler_state=optim["scaler"],
        step=state.step,
        tokenizer_hash=tokenizer_hash,
        model_spec=spec,
        train_config=cfg.model_dump(mode="json"),
        best_val_loss=state.best_val_loss,
        rng_states=[g["rng"] for g in gathered],
        data_generator_states=[t for g in gathered for t in g["gens"]],
        evals_since_best=state.evals_since_best,
        elapsed_s=elapsed(),
        tokens_seen=state.tokens_seen,
        world_size=info.world_size,
    )


def restore(
    payload: bytes,
    *,
    step: TrainStep,
    batches: TrainBatches,
    spec: Mapping[str, Any],
    tokenizer_hash: str,
    seed: int,
    info: DistInfo,
) -> tuple[TrainState, list[str]]:
    """Load a payload written by an earlier attempt of this run; return its counters and notes.

    Weights, optimizer, schedule and scaler always come back. RNG and data streams come back
    exactly when the number of ranks and micro-batch slots match; otherwise they are reseeded
    from the step and a note says the data order is not bit-identical.
    """
    import torch

    from cadenza.models import lora
    from cadenza.models.checkpoint import ADAPTER_KEY, load_weights
    from cadenza.train.data import slot_seed

    saved = unpack(payload)
    check_tokenizer(saved["tokenizer_hash"], tokenizer_hash, "the checkpoint to resume")
    if saved["model_spec"] != spec:
        raise ValueError(
            "the checkpoint to resume belongs to a different model spec "
            f"({saved['model_spec']}) than this job ({spec}); start a new model instead"
        )
    if lora.has_lora(step.raw_model) != (saved.get(ADAPTER_KEY) is not None):
        raise ValueError("the checkpoint to resume and this job disagree on being an adapter")
    if saved.get(ADAPTER_KEY) is not None:
        lora.load_adapter_state(step.raw_model, saved["model"])  # the base is loaded already
    else:
        load_weights(step.raw_model, saved["model"])
    step.load_state_dicts(saved)
    state = TrainState(
        step=int(saved["step"]),
        best_val_loss=saved.get("best_val_loss"),
        evals_since_best=int(saved.get("evals_since_best", 0)),
        elapsed_before=float(saved.get("elapsed_s", 0.0)),
        tokens_seen=int(saved.get("tokens_seen", 0)),
    )
    rngs = saved.get("rng") or []
    gens = saved.get("data_generators") or []
    if len(rngs) == info.world_size:
        restore_rng_state(rngs[info.rank])
    else:
        # Dropout streams cannot be mapped onto a different number of ranks; reseed them.
        torch.manual_seed(seed + state.step + 7919 * (info.rank + 1))
    pairs = zip(batches.generators, batches.slots, strict=True)
    if len(gens) == batches.total_slots:
        # Slot j's stream moves with slot j, so 2 ranks x 1 accumulation and 1 rank x 2
        # accumulation continue with exactly the same batches.
        for gen, slot in pairs:
            gen.set_state(gens[slot].to(torch.uint8))
        return state, []
    for gen, slot in pairs:
        gen.manual_seed(slot_seed(seed + state.step, slot))
    note = (
        f"resumed with {batches.total_slots} micro-batches per step from a checkpoint written "
        f"with {len(gens)}; the data order was reseeded (not bit-identical)"
    )
    return state, [note]


def load_init_weights(
    raw_model: CadenzaModel, payload: bytes, *, tokenizer_hash: str, vocab_size: int
) -> None:
    """Seed a fine-tune with a checkpoint's weights (same tokenizer and vocabulary required)."""
    from cadenza.models.checkpoint import load_weights

    source = unpack(payload)
    check_tokenizer(source["tokenizer_hash"], tokenizer_hash, "the checkpoint to fine-tune")
    if int(source["model_spec"]["vocab_size"]) != vocab_size:
        raise ValueError(
            f"the checkpoint to fine-tune has vocab_size {source['model_spec']['vocab_size']} "
            f"but this model has {vocab_size}; use the same tokenizer settings"
        )
    load_weights(raw_model, source["model"])


# ----------------------------------------------------------------------------- pruning


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
