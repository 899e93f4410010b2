"""One optimisation step: precision, AdamW with its lr schedule and grad scaler, and the step.

`TrainStep` owns everything the step mutates (optimizer, scheduler, scaler) and the wrapped
model (torch.compile, DDP), so the loop calls `step(micro_batches)` and the checkpoint code asks
it for `state_dicts()`. Whether to compile (`compile_plan`) and compiling without ever failing
the job (`TrainStep.wrap`) are decided here too.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cadenza.train.config import TrainConfig
from cadenza.train.distributed import DistInfo, all_reduce_sum

if TYPE_CHECKING:
    from cadenza.models import CadenzaModel


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
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


log = logging.getLogger(__name__)

# `compile: "auto"` compiles only where it can pay for itself, the transformer architectures
# (the RNNs run cuDNN/oneDNN recurrent kernels that inductor has nothing to fuse in) on the device
# types below, when at least this many optimizer steps remain. Measured (BENCHMARKS.md,
# "torch.compile"): on CPU it never pays. A 4-layer, 256-wide gpt at batch 4 x 256 in fp32 runs
# its eager step at 92-97 % of the measured matmul peak, so compiling (31 s cold, 0.8 s with a
# warm inductor cache) won 1.05x at the best step and 0.96x at the median; under bf16 autocast
# it adds ~3 % (break-even ~4,000 steps); a compiled music-transformer is at parity (its
# attention kernel stays eager: `relative_attention._train_attention`). On one H200
# (`bench/train.py --gpu-quick`: 8 layers x 512, batch 32 x 1024, bf16) a compiled gpt step was
# 1.24x the eager one at the median after a 20.9 s cold compile: break-even at 3,699 steps, so
# 5,000 leaves a margin for smaller models, which save less per step for about the same compile
# (a 0.9 M gpt spent ~54 s compiling for an 800-step run that then trained in ~8 s). Only gpt
# was measured to pay on CUDA; music-transformer compiles only when asked (`compile: true`).
# On CPU with `precision: bf16` it does pay on a CPU with native bf16 matmuls: on a 2-core Xeon
# with AMX the same gpt ran 1.56x the fp32 reference per step eager in bf16 and 1.70x compiled
# (median of 3 rounds), after an 11.7 s cold compile: break-even at ~2,000 steps (the EPYC
# above: ~4,000), so the same 5,000-step margin applies there. In fp32 it still never pays
# on CPU (1.00x on the Xeon, 0.96x on the EPYC).
AUTO_COMPILE_MIN_STEPS: dict[str, int] = {"cuda": 5000}
AUTO_COMPILE_CPU_BF16_MIN_STEPS = 5000
AUTO_COMPILE_ARCHITECTURES = frozenset({"gpt"})


@dataclass(frozen=True)
class CompilePlan:
    """Whether to try torch.compile for this run, and why (the reason goes into the progress)."""

    compile: bool
    reason: str


def compile_plan(
    cfg: TrainConfig, architecture: str, device: torch.device, remaining: int
) -> CompilePlan:
    """Decide `cfg.compile` ("auto", True or False) for `remaining` optimizer steps.

    True and False are obeyed (True still falls back to eager if compiling fails). "auto"
    compiles a transformer when the device type is in `AUTO_COMPILE_MIN_STEPS` and at least that
    many steps remain: compiling costs seconds to minutes once (a cold inductor cache; well under
    a second when a process compiled the same shapes before) and saves a fraction of every step, so
    a short job (a 30-step smoke run, the tiny preset's 300 steps) finishes sooner eagerly, and
    on CPU in fp32 the step is matmul-bound and compiling never paid; on CPU in bf16 it does,
    from the same 5,000 steps (the figures are above).
    """
    if cfg.compile is False:
        return CompilePlan(False, "compile off")
    if cfg.compile is True:
        return CompilePlan(True, "compile on")
    threshold = AUTO_COMPILE_MIN_STEPS.get(device.type)
    if device.type == "cpu" and resolve_precision(cfg.precision, device) == torch.bfloat16:
        threshold = AUTO_COMPILE_CPU_BF16_MIN_STEPS
    if architecture not in AUTO_COMPILE_ARCHITECTURES:
        return CompilePlan(
            False, f"compile auto: eager ({architecture} was not measured to gain from it)"
        )
    if threshold is None:
        on = f"{device.type} in {cfg.precision}" if device.type == "cpu" else device.type
        return CompilePlan(False, f"compile auto: eager (it does not pay on {on})")
    if remaining < threshold:
        return CompilePlan(
            False,
            f"compile auto: eager ({remaining} steps to go; it pays from {threshold} on "
            f"{device.type})",
        )
    return CompilePlan(True, f"compile auto: compiling ({remaining} steps to go)")


class TrainStep:
    """The model as trained (maybe compiled, maybe DDP-wrapped) and its optimiser state."""

    def __init__(self, raw_model: CadenzaModel, cfg: TrainConfig, device: torch.device) -> None:
        self.raw_model = raw_model
        self.cfg = cfg
        self.device = device
        self.dtype = resolve_precision(cfg.precision, device)
        raw_model.to(device)
        groups = raw_model.optim_groups(cfg.weight_decay)
        # Fused AdamW (one kernel over all parameters) exists for CUDA and, since torch 2.4, CPU;
        # on CPU it makes the optimizer step 3-6x cheaper than the default foreach path.
        fused = True if device.type in ("cuda", "cpu") else None
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, fused=fused)
        # LambdaLR multiplies each group's initial lr, so per-group lr scaling survives.
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda=lambda s: cfg.lr_at(s) / cfg.lr
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.model: nn.Module = raw_model  # what the step calls (compiled and/or DDP)
        # Evaluation runs the eager model: compiling it would be a second graph (no grad, eval
        # mode) plus a recompile for a short last batch, for forward passes that are a few
        # percent of a run's compute.
        self.eval_model: nn.Module = raw_model
        self.distributed = False
        self.compiled = False  # whether training steps run a torch.compile'd model
        self.compile_s = 0.0  # seconds spent compiling (the first step's extra cost)

    def wrap(self, info: DistInfo, remaining_steps: int) -> str:
        """Compile (as `compile_plan` decides) and/or wrap in DDP; return a line for progress.

        Done after any checkpoint was loaded into `raw_model`. torch.compile is lazy, so the
        compiled model runs one forward + backward here on a random batch of the training shape
        (the RNG state is restored after, and the gradients dropped, so a resumed run stays
        exact): compile errors (no C++ compiler, an op inductor cannot lower, a Triton problem)
        surface now and the run falls back to eager with one log line instead of failing, and
        the compile time stays out of the first step's throughput. Under DDP every rank must
        agree, so one rank's failure makes all of them run eagerly.
        """
        plan = compile_plan(self.cfg, self.raw_model.architecture, self.device, remaining_steps)
        note = plan.reason
        if plan.compile:
            compiled, error = self._compile()
            failed = all_reduce_sum([0.0 if error is None else 1.0], info, str(self.device))[0]
            if compiled is not None and failed == 0:
                self.model, self.compiled = compiled, True
                note = f"{plan.reason}; compiled in {self.compile_s:.1f} s"
            else:
                reason = error or "another rank could not compile"
                note = f"{plan.reason}; torch.compile failed ({reason}), training eagerly"
                log.warning("%s", note)
                torch._dynamo.reset()
        if info.is_distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(self.model, device_ids=ids)
            self.distributed = True
        return note

    def _compile(self) -> tuple[nn.Module | None, str | None]:
        """The compiled model after one warm-up forward + backward, or (None, the error)."""
        started = time.perf_counter()
        devices: list[int] = []
        if self.device.type == "cuda":
            index = self.device.index
            devices = [torch.cuda.current_device() if index is None else index]
        compiled: Any = None
        try:
            compiled = torch.compile(self.raw_model)
            with torch.random.fork_rng(devices=devices, device_type=self.device.type):
                shape = (self.cfg.batch_size, self.cfg.seq_len)
                x = torch.randint(0, self.raw_model.vocab_size, shape, device=self.device)
                with self.autocast():
                    _, loss = compiled(x, x)
                loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - any compile failure means: train eagerly
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return None, f"{type(exc).__name__}: {first[:200]}"
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        self.compile_s = time.perf_counter() - started
        return compiled, None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward passes; nothing at fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    @property
    def lr(self) -> float:
        """The learning rate the next optimizer step will use."""
        return float(self.scheduler.get_last_lr()[0])

    def __call__(
        self, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]], loss_acc: torch.Tensor
    ) -> float:
        """Forward/backward each micro-batch, clip, step AdamW and the schedule; return the lr.

        The mean micro-batch loss is added to `loss_acc` on the device, so nothing waits for
        the GPU until the loop logs. Under DDP only the last micro-batch all-reduces gradients.
        """
        ga = self.cfg.grad_accum_steps
        for micro, (x, y) in enumerate(micro_batches):
            sync = micro == ga - 1 or not self.distributed
            context = contextlib.nullcontext() if sync else self.model.no_sync()  # type: ignore[operator]
            with context:
                with self.autocast():
                    _, loss = self.model(x, y)
                    loss = loss / ga
                self.scaler.scale(loss).backward()
            loss_acc += loss.detach().float()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.raw_model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr_used = self.lr
        self.scheduler.step()
        return lr_used

    def state_dicts(self) -> dict[str, Any]:
        """Optimizer, scheduler and (fp16 only) scaler state, keyed as in a checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_state_dicts(self, saved: Mapping[str, Any]) -> None:
        """Inverse of `state_dicts`; entries a checkpoint lacks keep their fresh state."""
        if saved.get("optimizer") is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        if saved.get("scheduler") is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if saved.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(saved["scaler"])
