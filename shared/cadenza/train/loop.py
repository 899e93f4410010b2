"""The training loop: model + token arrays + config in, metrics and checkpoints out via hooks.

The loop knows nothing about SQL, object stores or files. The caller (a Celery task, a k8s Job,
`run_local`) passes `TrainHooks` that persist metrics and checkpoints and answer "was I
cancelled?". That keeps this module testable on a CPU in seconds and lets the same code run
under `torchrun` with DDP, where only rank 0 calls the writing hooks.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from cadenza.train import checkpoint as ckpt
from cadenza.train.config import TrainConfig
from cadenza.train.distributed import (
    DistInfo,
    all_reduce_sum,
    broadcast_int,
    current_dist_info,
    gather_objects,
)

if TYPE_CHECKING:
    from cadenza.models import CadenzaModel

StopReason = Literal["completed", "cancelled", "early_stopping", "time_budget"]
_STOP_CODES: dict[int, StopReason] = {1: "cancelled", 2: "time_budget"}


class TrainHooks(Protocol):
    """What the loop needs from its host. Implementations own storage and cancellation.

    `should_stop` is polled before every optimizer step, so it must be cheap (cache a DB poll
    for a second or two). `save_checkpoint` must store `payload` atomically: the loop assumes
    that once it returns, `load_latest_checkpoint` may hand that payload back after a crash.
    Pruning old checkpoints (keep the newest `TrainConfig.keep_last_n` plus the best) is the
    hooks' job because only they can delete; `checkpoint.checkpoints_to_prune` has the rule.
    """

    def on_metrics(self, record: dict[str, Any]) -> None:
        """One row: step, split ("train"/"val"/"test"), loss, perplexity, lr, tokens_per_s,
        elapsed_s (tokens_per_s is None for val/test rows)."""
        ...

    def on_progress(self, fraction: float, message: str) -> None:
        """Progress in [0, 1] and a human-readable line for the job record."""
        ...

    def should_stop(self) -> bool:
        """True when the job was cancelled; the loop saves a checkpoint and returns."""
        ...

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        """Persist a full-state payload (see `checkpoint.pack`)."""
        ...

    def load_latest_checkpoint(self) -> bytes | None:
        """The newest payload saved by an earlier attempt of this job, or None for a fresh run."""
        ...


class NullHooks:
    """Hooks that store nothing; for benchmarks and quick experiments."""

    def on_metrics(self, record: dict[str, Any]) -> None:
        """Discard."""

    def on_progress(self, fraction: float, message: str) -> None:
        """Discard."""

    def should_stop(self) -> bool:
        """Never cancelled."""
        return False

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        """Discard."""

    def load_latest_checkpoint(self) -> bytes | None:
        """Always a fresh run."""
        return None


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run reports back to the job record."""

    steps: int
    stopped_reason: StopReason
    best_val_loss: float | None
    final_val_loss: float | None
    final_val_perplexity: float | None
    test_loss: float | None
    test_perplexity: float | None
    tokens_per_s: float
    elapsed_s: float
    resumed_from_step: int | None
    num_params: int


def perplexity(loss: float) -> float:
    """exp(loss), saturating at +inf instead of raising OverflowError for a diverged model."""
    if not math.isfinite(loss):
        return float("inf")
    return math.exp(loss) if loss < 700.0 else float("inf")


# --------------------------------------------------------------------------- data


def _check_split(
    name: str, array: np.ndarray[Any, Any], seq_len: int, vocab_size: int
) -> np.ndarray[Any, Any]:
    """Reject data the loop cannot use, with the fix in the message."""
    arr = np.asarray(array)
    if arr.ndim != 1:
        raise ValueError(f"the {name} split must be a 1-D token array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"the {name} split must hold integer token ids, got dtype {arr.dtype}")
    if arr.shape[0] < seq_len + 1:
        raise ValueError(
            f"the {name} split has {arr.shape[0]} tokens but seq_len={seq_len} needs at least "
            f"{seq_len + 1}; add more data to the corpus or lower seq_len"
        )
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(
            f"the {name} split has token ids in [{low}, {high}] but vocab_size is {vocab_size}; "
            "the corpus and the model were built with different tokenizers"
        )
    return arr


def _windows(arr: np.ndarray[Any, Any], starts: np.ndarray[Any, Any], seq_len: int) -> np.ndarray:
    """(B, seq_len + 1) int64 windows starting at `starts` (gathered in numpy, no full copy)."""
    index = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return np.asarray(arr[index], dtype=np.int64)


def grid_starts(arr: np.ndarray[Any, Any], bos_id: int, grid: int, high: int) -> np.ndarray:
    """Window starts below `high` at each BOS of `arr` and every `grid` tokens after it.

    A corpus stream is BOS file EOS BOS file EOS ...; aligned windows see a file's tokens in
    the same phase of its grid (for quarter-vq: a window starts on a quarter's first code).
    """
    bos = np.flatnonzero(arr[: max(high, 0)] == bos_id)
    if bos.size == 0:
        return np.zeros(0, np.int64)
    ends = np.append(bos[1:], high)
    parts = [bos.astype(np.int64)]
    parts += [np.arange(b + 1, e, grid, dtype=np.int64) for b, e in zip(bos, ends, strict=True)]
    return np.sort(np.concatenate(parts))


class _Batcher:
    """Moves windows to the device; pinned + non-blocking on CUDA so copies overlap compute."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pin = device.type == "cuda"

    def __call__(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tensor = torch.from_numpy(windows)
        if self.pin:
            tensor = tensor.pin_memory()
        tensor = tensor.to(self.device, non_blocking=self.pin)
        return tensor[:, :-1], tensor[:, 1:]


def _slot_seed(seed: int, slot: int) -> int:
    """Seed of the data generator that feeds micro-batch slot `slot` of every global batch.

    A global batch has world_size x grad_accum_steps slots; slot j always gets the same stream
    whichever rank runs it, so one process with grad_accum 2 sees exactly the batches that two
    DDP ranks with grad_accum 1 see together.
    """
    return (seed + 1) * 1_000_003 + slot


def _eval_starts(n_tokens: int, seq_len: int, max_windows: int) -> np.ndarray:
    """Evenly spaced, fixed window starts: every evaluation scores the same tokens.

    Fixed windows make successive val losses comparable (early stopping reacts to the model,
    not to sampling noise) and do not depend on the number of ranks.
    """
    last = n_tokens - seq_len - 1
    disjoint = max(1, (n_tokens - 1) // seq_len)
    count = max(1, min(max_windows, disjoint))
    return np.unique(np.linspace(0, last, count).round().astype(np.int64))


# --------------------------------------------------------------------------- setup helpers


def _resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on CUDA when supported, fp16 (with GradScaler) on older CUDA, fp32 on CPU."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(
            "precision fp16 needs a CUDA device (it relies on a CUDA GradScaler); "
            "use precision=bf16 or fp32 on CPU"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("precision bf16 is not supported by this GPU; use precision=fp16 or auto")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _build(model_spec: Mapping[str, Any]) -> CadenzaModel:
    """Instantiate through the architecture registry (the only coupling to cadenza.models)."""
    from cadenza.models import build_model

    for key in ("architecture", "config", "vocab_size"):
        if key not in model_spec:
            raise ValueError(
                f"model_spec is missing {key!r} (needs architecture, config, vocab_size)"
            )
    return build_model(
        str(model_spec["architecture"]), model_spec["config"], int(model_spec["vocab_size"])
    )


def _resolved_spec(model: CadenzaModel) -> dict[str, Any]:
    """The spec with the model's fully resolved config, so a checkpoint rebuilds the same net
    even if preset defaults change in a later release."""
    return ckpt.spec_to_plain(model.spec())


def _check_tokenizer(saved: str, expected: str, what: str) -> None:
    if saved != expected:
        raise ValueError(
            f"{what} was trained with tokenizer {saved!r} but this corpus uses {expected!r}; "
            "token ids would mean different things. Use a corpus built with the same tokenizer "
            "or train from scratch"
        )


# --------------------------------------------------------------------------- the loop


@dataclass
class _RunState:
    """Mutable counters that go into every checkpoint."""

    step: int = 0
    best_val_loss: float | None = None
    evals_since_best: int = 0
    elapsed_before: float = 0.0
    tokens_seen: int = 0
    last_lr: float = 0.0  # lr of the latest optimizer step, reported with val/test rows


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    arr: np.ndarray,
    cfg: TrainConfig,
    info: DistInfo,
    batcher: _Batcher,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> float:
    """Mean per-token loss over fixed windows of one split, shared out across ranks."""
    starts = _eval_starts(arr.shape[0], cfg.seq_len, cfg.eval_batches * cfg.batch_size)
    mine = starts[info.rank :: info.world_size]
    was_training = model.training
    model.eval()
    total, count = 0.0, 0.0
    for begin in range(0, mine.shape[0], cfg.batch_size):
        chunk = mine[begin : begin + cfg.batch_size]
        x, y = batcher(_windows(arr, chunk, cfg.seq_len))
        with autocast():
            _, loss = model(x, y)
        total += float(loss.float().item()) * chunk.shape[0]
        count += chunk.shape[0]
    model.train(was_training)
    total, count = all_reduce_sum([total, count], info, str(batcher.device))
    return total / max(count, 1.0)


def train(
    model_spec: Mapping[str, Any],
    data: Mapping[str, np.ndarray],
    cfg: TrainConfig,
    hooks: TrainHooks,
    *,
    tokenizer_hash: str,
    init_from: bytes | None = None,
    device: str | None = None,
    bos_id: int | None = None,
) -> TrainResult:
    """Train (or resume training) one model; return how it ended.

    `model_spec` = {"architecture", "config", "vocab_size"}; `data` = 1-D integer token arrays
    "train", "val" and optionally "test". If `hooks.load_latest_checkpoint()` returns a payload
    the run continues from it exactly (weights, optimizer, schedule, scaler, RNG, data
    position); otherwise `init_from` (any checkpoint payload, weights only) seeds a fine-tune.
    Under torchrun (a process group already initialised) this is one rank of a DDP run.
    `bos_id` (the corpus tokenizer's) is needed only with `cfg.window_grid`.
    """
    info = current_dist_info(device)
    dev = torch.device(device or info.device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    vocab_size = int(model_spec.get("vocab_size", 0))
    if vocab_size < 1:
        raise ValueError("model_spec.vocab_size must be a positive integer")

    if "train" not in data or "val" not in data:
        raise ValueError("data needs 'train' and 'val' token arrays ('test' is optional)")
    splits = {
        name: _check_split(name, data[name], cfg.seq_len, vocab_size)
        for name in ("train", "val", "test")
        if name in data
    }

    # Same seed on every rank -> identical initial weights (DDP would broadcast them anyway).
    torch.manual_seed(cfg.seed)
    raw_model = _build(model_spec)
    block_size = getattr(raw_model, "block_size", None)
    if block_size is not None and cfg.seq_len > int(block_size):
        raise ValueError(
            f"seq_len ({cfg.seq_len}) exceeds the model's block_size ({block_size}); "
            "lower seq_len or build the model with a larger block_size"
        )
    spec = _resolved_spec(raw_model)
    num_params = raw_model.num_params()

    dtype = _resolve_precision(cfg.precision, dev)
    raw_model.to(dev)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=dtype)

    groups = raw_model.optim_groups(cfg.weight_decay)
    # Fused AdamW (one kernel over all parameters) exists for CUDA and, since torch 2.4, CPU;
    # on CPU it makes the optimizer step 3-6x cheaper than the default foreach path.
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=cfg.betas, fused=True if dev.type in ("cuda", "cpu") else None
    )
    # LambdaLR multiplies each group's initial lr, so per-group lr scaling survives.
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda=lambda s: cfg.lr_at(s) / cfg.lr
    )
    scaler = torch.amp.GradScaler(dev.type, enabled=dtype == torch.float16)

    ga = cfg.grad_accum_steps
    my_slots = [info.rank * ga + m for m in range(ga)]
    total_slots = info.world_size * ga
    generators = [torch.Generator().manual_seed(_slot_seed(cfg.seed, s)) for s in my_slots]
    # Dropout streams differ per rank (otherwise ranks would drop the same units).
    torch.manual_seed(cfg.seed + 7919 * (info.rank + 1))
    np.random.seed((cfg.seed + info.rank) % 2**32)
    random.seed(cfg.seed + info.rank)

    state = _RunState()
    resumed_from: int | None = None
    notes: list[str] = []
    latest = hooks.load_latest_checkpoint()
    if latest is not None:
        saved = ckpt.unpack(latest)
        _check_tokenizer(saved["tokenizer_hash"], tokenizer_hash, "the checkpoint to resume")
        if saved["model_spec"] != spec:
            raise ValueError(
                "the checkpoint to resume belongs to a different model spec "
                f"({saved['model_spec']}) than this job ({spec}); start a new model instead"
            )
        ckpt.load_weights(raw_model, saved["model"])
        if saved.get("optimizer") is not None:
            optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scheduler") is not None:
            scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(saved["scaler"])
        state = _RunState(
            step=int(saved["step"]),
            best_val_loss=saved.get("best_val_loss"),
            evals_since_best=int(saved.get("evals_since_best", 0)),
            elapsed_before=float(saved.get("elapsed_s", 0.0)),
            tokens_seen=int(saved.get("tokens_seen", 0)),
        )
        resumed_from = state.step
        rngs = saved.get("rng") or []
        gens = saved.get("data_generators") or []
        if len(rngs) == info.world_size:
            ckpt.restore_rng_state(rngs[info.rank])
        else:
            # Dropout streams cannot be mapped onto a different number of ranks; reseed them.
            torch.manual_seed(cfg.seed + state.step + 7919 * (info.rank + 1))
        if len(gens) == total_slots:
            # Slot j's stream moves with slot j, so 2 ranks x 1 accumulation and 1 rank x 2
            # accumulation continue with exactly the same batches.
            for gen, slot in zip(generators, my_slots, strict=True):
                gen.set_state(gens[slot].to(torch.uint8))
        else:
            for gen, slot in zip(generators, my_slots, strict=True):
                gen.manual_seed(_slot_seed(cfg.seed + state.step, slot))
            notes.append(
                f"resumed with {total_slots} micro-batches per step from a checkpoint written "
                f"with {len(gens)}; the data order was reseeded (not bit-identical)"
            )
    elif init_from is not None:
        source = ckpt.unpack(init_from)
        _check_tokenizer(source["tokenizer_hash"], tokenizer_hash, "the checkpoint to fine-tune")
        if int(source["model_spec"]["vocab_size"]) != vocab_size:
            raise ValueError(
                f"the checkpoint to fine-tune has vocab_size {source['model_spec']['vocab_size']} "
                f"but this model has {vocab_size}; use the same tokenizer settings"
            )
        ckpt.load_weights(raw_model, source["model"])

    model: nn.Module = raw_model
    if cfg.compile:
        model = torch.compile(raw_model)  # type: ignore[assignment]
    eval_model = model
    if info.is_distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    batcher = _Batcher(dev)
    train_arr = splits["train"]
    high = train_arr.shape[0] - cfg.seq_len  # exclusive upper bound of window starts
    aligned: np.ndarray | None = None
    if cfg.window_grid is not None:
        if bos_id is None:
            raise ValueError("train.window_grid needs the corpus's BOS id to find file starts")
        aligned = grid_starts(train_arr, bos_id, cfg.window_grid, high)
        if aligned.size == 0:
            raise ValueError(
                f"no training window of {cfg.seq_len} tokens starts on the window_grid; "
                "lower seq_len or drop window_grid"
            )
    tokens_per_step = cfg.batch_size * cfg.seq_len * total_slots
    started = time.perf_counter()
    state.last_lr = float(scheduler.get_last_lr()[0])

    def elapsed() -> float:
        return state.elapsed_before + time.perf_counter() - started

    def emit(record: dict[str, Any]) -> None:
        if info.is_main:
            hooks.on_metrics(record)

    def progress(message: str) -> None:
        if info.is_main:
            hooks.on_progress(min(1.0, state.step / cfg.max_steps), message)

    last_saved_step = state.step if latest is not None else -1

    def save(val_loss: float | None, is_best: bool) -> None:
        nonlocal last_saved_step
        # Collectives first: every rank contributes its RNG and data-generator states.
        local = {
            "rng": ckpt.capture_rng_state(),
            "gens": [g.get_state() for g in generators],
        }
        gathered = gather_objects(local, info)
        if info.is_main:
            payload = ckpt.pack(
                model_state=raw_model.state_dict(),
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
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
            hooks.save_checkpoint(state.step, payload, val_loss=val_loss, is_best=is_best)
        last_saved_step = state.step

    def run_eval(split: str) -> float:
        loss = _evaluate(eval_model, splits[split], cfg, info, batcher, autocast)
        emit(
            {
                "step": state.step,
                "split": split,
                "loss": loss,
                "perplexity": perplexity(loss),
                "lr": state.last_lr,
                "tokens_per_s": None,
                "elapsed_s": elapsed(),
            }
        )
        return loss

    def micro_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for gen in generators:
            if aligned is None:
                starts = torch.randint(0, high, (cfg.batch_size,), generator=gen).numpy()
            else:
                picks = torch.randint(0, aligned.size, (cfg.batch_size,), generator=gen).numpy()
                starts = aligned[picks]
            yield batcher(_windows(train_arr, starts, cfg.seq_len))

    progress(
        f"resuming at step {state.step}/{cfg.max_steps}"
        if resumed_from is not None
        else f"starting: {num_params:,} parameters, {tokens_per_step:,} tokens per step"
    )
    for note in notes:
        progress(note)

    model.train()
    reason: StopReason = "completed"
    loss_acc = torch.zeros((), device=dev)
    steps_in_window = 0
    window_start = time.perf_counter()
    paused = 0.0  # seconds spent in eval/checkpoint inside the current logging window
    train_time = 0.0
    tokens_this_call = 0
    last_val: float | None = None
    last_val_step = -1

    while state.step < cfg.max_steps:
        code = 0
        if info.is_main:
            if hooks.should_stop():
                code = 1
            elif cfg.time_budget_s is not None and elapsed() >= cfg.time_budget_s:
                code = 2
        code = broadcast_int(code, info, str(dev))
        if code:
            reason = _STOP_CODES[code]
            break

        for micro, (x, y) in enumerate(micro_batches()):
            sync = micro == ga - 1 or not info.is_distributed
            context = contextlib.nullcontext() if sync else model.no_sync()  # type: ignore[operator]
            with context:
                with autocast():
                    _, loss = model(x, y)
                    loss = loss / ga
                scaler.scale(loss).backward()
            loss_acc += loss.detach().float()
        if cfg.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        lr_used = state.last_lr = float(scheduler.get_last_lr()[0])
        scheduler.step()
        state.step += 1
        state.tokens_seen += tokens_per_step
        tokens_this_call += tokens_per_step
        steps_in_window += 1

        if state.step % cfg.log_interval == 0 or state.step == cfg.max_steps:
            (loss_sum,) = all_reduce_sum([float(loss_acc.item())], info, str(dev))
            now = time.perf_counter()
            busy = max(1e-9, now - window_start - paused)
            train_time += busy
            mean_loss = loss_sum / info.world_size / steps_in_window
            if not math.isfinite(mean_loss):
                raise FloatingPointError(
                    f"training diverged at step {state.step} (loss {mean_loss}); lower lr, "
                    "raise warmup_steps, or use precision=bf16/fp32"
                )
            rate = tokens_per_step * steps_in_window / busy
            emit(
                {
                    "step": state.step,
                    "split": "train",
                    "loss": mean_loss,
                    "perplexity": perplexity(mean_loss),
                    "lr": lr_used,
                    "tokens_per_s": rate,
                    "elapsed_s": elapsed(),
                }
            )
            progress(f"step {state.step}/{cfg.max_steps} train loss {mean_loss:.4f}")
            loss_acc.zero_()
            steps_in_window = 0
            paused = 0.0
            window_start = time.perf_counter()

        pause_start = time.perf_counter()
        is_best = False
        val_now: float | None = None
        if state.step % cfg.eval_interval == 0 and state.step < cfg.max_steps:
            val_now = last_val = run_eval("val")
            last_val_step = state.step
            if state.best_val_loss is None or val_now < state.best_val_loss:
                state.best_val_loss = val_now
                state.evals_since_best = 0
                is_best = True
            else:
                state.evals_since_best += 1
            patience = cfg.early_stopping_patience
            if patience is not None and state.evals_since_best >= patience:
                reason = "early_stopping"
        if is_best or state.step % cfg.checkpoint_interval == 0 or reason == "early_stopping":
            save(val_now, is_best)
        paused += time.perf_counter() - pause_start
        if reason == "early_stopping":
            break

    if steps_in_window:
        train_time += max(1e-9, time.perf_counter() - window_start - paused)
    tokens_per_s = tokens_this_call / train_time if train_time > 0 else 0.0

    if reason == "cancelled":
        # Stop fast: no evaluation, just make sure the work done so far is resumable.
        if last_saved_step != state.step:
            save(None, False)
        progress(f"cancelled at step {state.step}/{cfg.max_steps}; checkpoint saved")
        return TrainResult(
            steps=state.step,
            stopped_reason=reason,
            best_val_loss=state.best_val_loss,
            final_val_loss=last_val,
            final_val_perplexity=None if last_val is None else perplexity(last_val),
            test_loss=None,
            test_perplexity=None,
            tokens_per_s=tokens_per_s,
            elapsed_s=elapsed(),
            resumed_from_step=resumed_from,
            num_params=num_params,
        )

    if last_val_step != state.step:
        last_val = run_eval("val")
        is_best = state.best_val_loss is None or last_val < state.best_val_loss
        if is_best:
            state.best_val_loss = last_val
            state.evals_since_best = 0
        if last_saved_step != state.step or is_best:
            save(last_val, is_best)
    elif last_saved_step != state.step:
        save(last_val, False)
    test_loss = run_eval("test") if "test" in splits else None
    assert last_val is not None
    progress(f"{reason} at step {state.step}/{cfg.max_steps}: val loss {last_val:.4f}")
    return TrainResult(
        steps=state.step,
        stopped_reason=reason,
        best_val_loss=state.best_val_loss,
        final_val_loss=last_val,
        final_val_perplexity=perplexity(last_val),
        test_loss=test_loss,
        test_perplexity=None if test_loss is None else perplexity(test_loss),
        tokens_per_s=tokens_per_s,
        elapsed_s=elapsed(),
        resumed_from_step=resumed_from,
        num_params=num_params,
    )
