"""The training loop: model + token arrays + config in, metrics and checkpoints out via hooks.

The loop knows nothing about SQL, object stores or files. The caller (a Celery task, a k8s Job,
`run_local`) passes `TrainHooks` that persist metrics and checkpoints and answer "was I
cancelled?". That keeps this module testable on a CPU in seconds and lets the same code run
under `torchrun` with DDP, where only rank 0 calls the writing hooks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
import torch

from cadenza.models import lora
from cadenza.models.checkpoint import build_from_spec, spec_to_plain
from cadenza.train import checkpoint as ckpt
from cadenza.train.config import TrainConfig
from cadenza.train.data import Batcher, TrainBatches, check_splits
from cadenza.train.distributed import current_dist_info, max_int
from cadenza.train.evaluate import LossWindow, evaluate, perplexity
from cadenza.train.step import TrainStep

if TYPE_CHECKING:
    from cadenza.models import CadenzaModel
    from cadenza.tokenize.mmm import MMMIds

StopReason = Literal["completed", "cancelled", "drained", "early_stopping", "time_budget"]
# Every rank's code is reduced with MAX, so the larger code wins: a cancel seen on rank 0 beats
# its time budget, which beats another rank's process stopping ("drained").
_STOP_CODES: dict[int, StopReason] = {3: "cancelled", 2: "time_budget", 1: "drained"}


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
        """True when the job was cancelled or this process must stop (a drain): the loop saves
        a checkpoint and returns. Every rank of a DDP run polls it; a True on rank 0 ends the run
        as "cancelled", a True on another rank (its node is being drained) as "drained"."""
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
    trainable_params: int  # what the optimizer updates: num_params, or a LoRA adapter's share
    compiled: bool  # training steps ran a torch.compile'd model (see `compile_plan`)
    compile_s: float  # seconds spent compiling, not counted in tokens_per_s


def _build_model(model_spec: Mapping[str, Any], cfg: TrainConfig) -> CadenzaModel:
    """The untrained model; the same seed on every rank gives identical initial weights (DDP
    would broadcast them anyway)."""
    torch.manual_seed(cfg.seed)
    model = build_from_spec(model_spec)
    block_size = getattr(model, "block_size", None)
    if block_size is not None and cfg.seq_len > int(block_size):
        raise ValueError(
            f"seq_len ({cfg.seq_len}) exceeds the model's block_size ({block_size}); "
            "lower seq_len or build the model with a larger block_size"
        )
    return model


class _Run:
    """One call of `train()`: what is set up once, and the named pieces the loop calls."""

    def __init__(
        self,
        model_spec: Mapping[str, Any],
        data: Mapping[str, np.ndarray],
        cfg: TrainConfig,
        hooks: TrainHooks,
        *,
        tokenizer_hash: str,
        device: str | None,
        bos_id: int | None,
        infill_ids: MMMIds | None = None,
        adapter: Mapping[str, Any] | None = None,
        init_from: bytes | None = None,
        cond_slots: int = 0,
    ) -> None:
        self.cfg, self.hooks, self.tokenizer_hash = cfg, hooks, tokenizer_hash
        self.bos_id, self.cond_slots = bos_id, cond_slots
        self.adapter = dict(adapter) if adapter is not None else None
        self.info = current_dist_info(device)
        self.device = torch.device(device or self.info.device)
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)
        self.vocab_size = int(model_spec.get("vocab_size", 0))
        if self.vocab_size < 1:
            raise ValueError("model_spec.vocab_size must be a positive integer")
        self.splits = check_splits(data, cfg.seq_len, self.vocab_size)
        raw_model = _build_model(model_spec, cfg)
        # The fully resolved config, so a checkpoint rebuilds the same net even if preset
        # defaults change in a later release.
        self.spec = spec_to_plain(raw_model.spec())
        self.num_params = raw_model.num_params()
        if self.adapter is not None:
            self._adapt(raw_model, init_from)
        self.trainable_params = lora.trainable_params(raw_model)
        self.train_step = TrainStep(raw_model, cfg, self.device)
        self.batcher = Batcher(self.device)
        self.batches = TrainBatches(
            self.splits["train"], cfg, self.info, self.batcher, bos_id, infill_ids, cond_slots
        )
        ckpt.seed_rngs(cfg.seed, self.info.rank)
        self.state = ckpt.TrainState()
        self.resumed_from: int | None = None
        self.last_saved_step = -1
        self.last_val: float | None = None
        self.last_val_step = -1
        self.started = time.perf_counter()
        self.window = LossWindow(self.device, self.batches.tokens_per_step)

    def _adapt(self, raw_model: CadenzaModel, base: bytes | None) -> None:
        """Load the base weights and wrap the target layers in LoRA, before the optimizer
        exists: it then holds only the adapter's parameters, and the base stays bit-identical.
        """
        assert self.adapter is not None
        if base is None:
            raise ValueError("a LoRA adapter needs its base checkpoint (init_from)")
        ckpt.load_init_weights(
            raw_model, base, tokenizer_hash=self.tokenizer_hash, vocab_size=self.vocab_size
        )
        lora.apply_lora(raw_model, self.adapter)

    def start(self, latest: bytes | None, init_from: bytes | None) -> None:
        """Resume from `latest` (exactly) or seed a fine-tune from `init_from`, then announce."""
        notes: list[str] = []
        if latest is not None:
            self.state, notes = ckpt.restore(
                latest,
                step=self.train_step,
                batches=self.batches,
                spec=self.spec,
                tokenizer_hash=self.tokenizer_hash,
                seed=self.cfg.seed,
                info=self.info,
            )
            self.resumed_from = self.last_saved_step = self.state.step
        elif init_from is not None and self.adapter is None:  # an adapter's base is loaded
            ckpt.load_init_weights(
                self.train_step.raw_model,
                init_from,
                tokenizer_hash=self.tokenizer_hash,
                vocab_size=self.vocab_size,
            )
        compile_note = self.train_step.wrap(self.info, self.cfg.max_steps - self.state.step)
        self.started = time.perf_counter()
        self.state.last_lr = self.train_step.lr
        self.progress(
            f"resuming at step {self.state.step}/{self.cfg.max_steps}"
            if self.resumed_from is not None
            else f"starting: {self.num_params:,} parameters, "
            f"{self.batches.tokens_per_step:,} tokens per step"
        )
        for note in [*notes, compile_note]:
            self.progress(note)
        self.train_step.model.train()
        self.window.restart()  # throughput counts from the first step, not from set-up

    def elapsed(self) -> float:
        """Seconds of training in this run, earlier attempts included."""
        return self.state.elapsed_before + time.perf_counter() - self.started

    def emit(self, record: dict[str, Any]) -> None:
        if self.info.is_main:
            self.hooks.on_metrics(record)

    def progress(self, message: str) -> None:
        if self.info.is_main:
            self.hooks.on_progress(min(1.0, self.state.step / self.cfg.max_steps), message)

    def stop_requested(self) -> StopReason | None:
        """Cancellation or the time budget (rank 0's) or any rank's drain, shared by every rank.

        Reduced over ranks rather than broadcast from rank 0: on a cluster a node that is not
        rank 0's can be drained (SIGTERM), and every rank must stop at the same step with a
        checkpoint, or that node's processes are killed at the end of their grace period and
        the others hang in the next collective.
        """
        code = 0
        if self.hooks.should_stop():
            code = 3 if self.info.is_main else 1
        elif (
            self.info.is_main
            and self.cfg.time_budget_s is not None
            and self.elapsed() >= self.cfg.time_budget_s
        ):
            code = 2
        code = max_int(code, self.info, str(self.device))
        return _STOP_CODES.get(code)

    def optimisation_step(self) -> float:
        """One step over a global batch; returns the lr it used."""
        lr_used = self.state.last_lr = self.train_step(self.batches(), self.window.loss_acc)
        self.state.step += 1
        self.state.tokens_seen += self.batches.tokens_per_step
        self.window.count_step()
        return lr_used

    def log_train(self, lr_used: float) -> None:
        """Emit the train row for the steps since the last one (stops a diverged run)."""
        mean_loss, rate = self.window.close(self.info)
        step = self.state.step
        if not math.isfinite(mean_loss):
            raise FloatingPointError(
                f"training diverged at step {step} (loss {mean_loss}); lower lr, "
                "raise warmup_steps, or use precision=bf16/fp32"
            )
        self.emit(
            {
                "step": step,
                "split": "train",
                "loss": mean_loss,
                "perplexity": perplexity(mean_loss),
                "lr": lr_used,
                "tokens_per_s": rate,
                "elapsed_s": self.elapsed(),
            }
        )
        self.progress(f"step {step}/{self.cfg.max_steps} train loss {mean_loss:.4f}")
        self.window.restart()

    def score(self, split: str) -> float:
        """Evaluate one split and emit its row."""
        ts = self.train_step
        loss = evaluate(
            ts.eval_model,
            self.splits[split],
            self.cfg,
            self.info,
            self.batcher,
            ts.autocast,
            self.bos_id,
            self.cond_slots,
        )
        self.emit(
            {
                "step": self.state.step,
                "split": split,
                "loss": loss,
                "perplexity": perplexity(loss),
                "lr": self.state.last_lr,
                "tokens_per_s": None,
                "elapsed_s": self.elapsed(),
            }
        )
        return loss

    def validate(self) -> tuple[float, bool]:
        """A periodic validation: (loss, is it the best so far)."""
        self.last_val = self.score("val")
        self.last_val_step = self.state.step
        return self.last_val, self.state.note_val(self.last_val)

    def patience_exhausted(self) -> bool:
        patience = self.cfg.early_stopping_patience
        return patience is not None and self.state.evals_since_best >= patience

    def save(self, val_loss: float | None, is_best: bool) -> None:
        """Checkpoint the full state (a collective; rank 0 hands the payload to the hooks)."""
        payload = ckpt.capture(
            step=self.train_step,
            state=self.state,
            batches=self.batches,
            spec=self.spec,
            tokenizer_hash=self.tokenizer_hash,
            cfg=self.cfg,
            info=self.info,
            elapsed=self.elapsed,
            adapter=self.adapter,
        )
        if payload is not None:
            self.hooks.save_checkpoint(self.state.step, payload, val_loss=val_loss, is_best=is_best)
        self.last_saved_step = self.state.step

    def finish(self, reason: StopReason) -> TrainResult:
        """Make the end resumable and scored: final val (unless cancelled), checkpoint, test."""
        tokens_per_s = self.window.tokens_per_s()
        step, test_loss = self.state.step, None
        if reason in ("cancelled", "drained"):
            # Stop fast: no evaluation, just make sure the work done so far is resumable.
            if self.last_saved_step != step:
                self.save(None, False)
            self.progress(f"{reason} at step {step}/{self.cfg.max_steps}; checkpoint saved")
            return self.result(reason, tokens_per_s, test_loss)
        if self.last_val_step != step:
            self.last_val = self.score("val")
            is_best = self.state.note_val(self.last_val, count_miss=False)
            if self.last_saved_step != step or is_best:
                self.save(self.last_val, is_best)
        elif self.last_saved_step != step:
            self.save(self.last_val, False)
        test_loss = self.score("test") if "test" in self.splits else None
        assert self.last_val is not None
        self.progress(f"{reason} at step {step}/{self.cfg.max_steps}: val loss {self.last_val:.4f}")
        return self.result(reason, tokens_per_s, test_loss)

    def result(
        self, reason: StopReason, tokens_per_s: float, test_loss: float | None
    ) -> TrainResult:
        last_val = self.last_val
        return TrainResult(
            steps=self.state.step,
            stopped_reason=reason,
            best_val_loss=self.state.best_val_loss,
            final_val_loss=last_val,
            final_val_perplexity=None if last_val is None else perplexity(last_val),
            test_loss=test_loss,
            test_perplexity=None if test_loss is None else perplexity(test_loss),
            tokens_per_s=tokens_per_s,
            elapsed_s=self.elapsed(),
            resumed_from_step=self.resumed_from,
            num_params=self.num_params,
            trainable_params=self.trainable_params,
            compiled=self.train_step.compiled,
            compile_s=round(self.train_step.compile_s, 2),
        )


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
    infill_ids: MMMIds | None = None,
    adapter: Mapping[str, Any] | None = None,
    cond_slots: int = 0,
) -> TrainResult:
    """Train (or resume training) one model; return how it ended.

    `model_spec` = {"architecture", "config", "vocab_size"}; `data` = 1-D integer token arrays
    "train", "val" and optionally "test". If `hooks.load_latest_checkpoint()` returns a payload
    the run continues from it exactly (weights, optimizer, schedule, scaler, RNG, data
    position); otherwise `init_from` (any checkpoint payload, weights only) seeds a fine-tune.
    Under torchrun (a process group already initialised) this is one rank of a DDP run.
    `bos_id` (the corpus tokenizer's) is needed only with `cfg.window_grid`, `infill_ids`
    (its MMM structure tokens, `cadenza.tokenize.mmm.MMMIds`) only with `cfg.infill_fraction`.
    `cond_slots` > 0 (an audio-vq corpus with learned tags, needs `bos_id`): every training
    window opens with its file's BOS and that many conditioning ids (`TrainBatches`).
    With `adapter` (resolved LoRA options), `init_from` is the base checkpoint: its weights are
    frozen and only the adapter trains, and every checkpoint holds only the adapter.
    """
    run = _Run(
        model_spec,
        data,
        cfg,
        hooks,
        tokenizer_hash=tokenizer_hash,
        device=device,
        bos_id=bos_id,
        infill_ids=infill_ids,
        adapter=adapter,
        init_from=init_from,
        cond_slots=cond_slots,
    )
    run.start(hooks.load_latest_checkpoint(), init_from)
    state = run.state
    reason: StopReason = "completed"
    while state.step < cfg.max_steps:
        stop = run.stop_requested()
        if stop is not None:
            reason = stop
            break

        lr_used = run.optimisation_step()
        if state.step % cfg.log_interval == 0 or state.step == cfg.max_steps:
            run.log_train(lr_used)

        pause_start = time.perf_counter()  # eval and checkpoint time is not training time
        val_loss, is_best = None, False
        if state.step % cfg.eval_interval == 0 and state.step < cfg.max_steps:
            val_loss, is_best = run.validate()
            if run.patience_exhausted():
                reason = "early_stopping"
        if is_best or state.step % cfg.checkpoint_interval == 0 or reason == "early_stopping":
            run.save(val_loss, is_best)
        run.window.pause(time.perf_counter() - pause_start)
        if reason == "early_stopping":
            break
    return run.finish(reason)
