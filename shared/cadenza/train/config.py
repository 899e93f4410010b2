"""Training hyper-parameters: one validated, serialisable object per run.

`TrainConfig` travels inside every checkpoint (as plain JSON-able values), so a requeued job
resumes with exactly the settings it started with, and a user sees which field was wrong before
any GPU time is spent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cadenza.models.presets import PRESETS
from cadenza.train.presets import train_preset

Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: `cadenza.tokenize.mmm.InfillLayout`, spelled here so that a training run (a GPU stage without
#: the music libraries) never imports the tokenize package; a unit test keeps the two equal.
InfillLayout = Literal["spm", "mmm"]
AudioPrior = Literal["flat", "pair"]


def audio_prior(train_config: dict[str, Any] | None) -> AudioPrior:
    """The `audio_prior` a model's stored train config says: `pair`, or `flat` (also every
    model trained before the option existed, whose config lacks it)."""
    return "pair" if (train_config or {}).get("audio_prior") == "pair" else "flat"


class TrainConfig(BaseModel):
    """Everything the loop needs besides the model and the data.

    Limits are generous but finite: they exist to turn typos (lr=3 instead of 3e-4, batch 10^6)
    into a 422 naming the field instead of a diverged or out-of-memory job an hour later.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(default=6e-4, gt=0.0, le=1.0, description="peak learning rate after warm-up")
    # Cosine decays to lr * min_lr_ratio; 0.1 is the nanoGPT/Chinchilla habit.
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    warmup_steps: int = Field(default=100, ge=0, le=10_000_000)
    max_steps: int = Field(default=5000, ge=1, le=10_000_000)
    batch_size: int = Field(
        default=16, ge=1, le=4096, description="sequences per micro-batch per rank"
    )
    seq_len: int = Field(default=256, ge=1, le=65_536, description="tokens per training window")
    window_grid: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="start training windows only at a file's BOS or a multiple of this many "
        "tokens after it, so every window begins on the same grid (16 for quarter-vq corpora, "
        "one quarter's codes, so each window starts on a quarter); None starts them anywhere",
    )
    infill_fraction: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="fraction of training windows turned into fill-in-the-middle examples "
        "(bars or a whole track of a piece cut out and written by the model, laid out as "
        "`infill_layout` says), so the model learns to infill and accompany as well as to "
        "continue; needs a corpus built with the `multitrack` preset, where it defaults to 0.5",
    )
    infill_layout: InfillLayout = Field(
        default="spm",
        description="how a fill-in-the-middle example is laid out (and so how the model's "
        "edits are prompted): spm (default) shows the other tracks and the bars after the "
        "hole first, then writes the hole's bars right after the bars before it, as a "
        "continuation would; mmm leaves placeholders in the piece and writes the bars after "
        "its end (the Multi-Track Music Machine's scheme, and what models trained before spm "
        "existed use). spm measured lower infill NLL on the same model: BENCHMARKS.md",
    )
    audio_prior: AudioPrior = Field(
        default="flat",
        description="an audio-vq corpus's model: flat (default) is one prior over the "
        "flattened codes (each coarse code, then its fine codes); pair trains a prior over the "
        "coarse codes alone, then an upsampler that writes the fine codes seeing the coarse "
        "codes on both sides (Jukebox's layout; 6-12 % fewer bits per second of validation "
        "audio measured, BENCHMARKS.md; no style tags)",
    )
    upsampler_steps: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        description="with audio_prior pair: the upsampler's optimizer steps (default: max_steps)",
    )
    upsampler_width: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="with audio_prior pair: the upsampler's width (default: the prior's n_embd)",
    )
    upsampler_layers: int = Field(
        default=1, ge=1, le=12, description="with audio_prior pair: the upsampler's layers"
    )
    grad_accum_steps: int = Field(default=1, ge=1, le=1024)
    weight_decay: float = Field(default=0.1, ge=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.95)
    # Max global grad norm; None (or 0) disables clipping. 1.0 is nanoGPT's and minGPT's default.
    grad_clip: float | None = Field(default=1.0, ge=0.0, le=1e6)
    eval_interval: int = Field(default=250, ge=1, le=10_000_000)
    eval_batches: int = Field(default=20, ge=1, le=100_000)
    precision: Precision = "auto"
    compile: bool | Literal["auto"] = Field(
        default="auto",
        description="torch.compile the training model: true, false, or auto (compile a "
        "transformer on CUDA when at least 5000 steps remain, never on CPU, where it was "
        "measured not to pay; see cadenza.train.step.compile_plan). A failed compile falls "
        "back to eager, never fails the job",
    )
    early_stopping_patience: int | None = Field(default=None, ge=1, le=100_000)
    # Counts training time across resumes (stored in checkpoints), not just this attempt.
    time_budget_s: float | None = Field(default=None, gt=0.0, le=30 * 24 * 3600.0)
    seed: int = Field(default=1337, ge=0, le=2**31 - 1)
    keep_last_n: int = Field(default=3, ge=1, le=1000)
    checkpoint_interval: int = Field(default=1000, ge=1, le=10_000_000)
    log_interval: int = Field(default=10, ge=1, le=10_000_000)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        """Adam diverges or stalls silently outside [0, 1); say so up front."""
        for beta in value:
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"each beta must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _warmup_fits(self) -> TrainConfig:
        """A warm-up longer than the run never reaches the peak lr: almost surely a typo."""
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps ({self.warmup_steps}) must not exceed max_steps ({self.max_steps}); "
                "lower warmup_steps or raise max_steps"
            )
        return self

    @model_validator(mode="after")
    def _upsampler_needs_pair(self) -> TrainConfig:
        """An upsampler option on a flat prior would be ignored: say so instead."""
        given = [f for f in ("upsampler_steps", "upsampler_width") if getattr(self, f) is not None]
        given += ["upsampler_layers"] if self.upsampler_layers != 1 else []
        if self.audio_prior != "pair" and given:
            raise ValueError(
                f"{', '.join(given)} only apply with audio_prior pair; set audio_prior to pair "
                "or leave them out"
            )
        return self

    @property
    def min_lr(self) -> float:
        """The floor of the cosine schedule."""
        return self.lr * self.min_lr_ratio

    def lr_at(self, step: int) -> float:
        """Linear warm-up then cosine decay to `min_lr`; `step` counts finished optimizer steps.

        A pure function of the step so a resumed run gets the same rate without trusting any
        scheduler object that might change between torch versions.
        """
        import math

        if self.warmup_steps > 0 and step < self.warmup_steps:
            return self.lr * (step + 1) / (self.warmup_steps + 1)
        if step >= self.max_steps:
            return self.min_lr
        span = max(1, self.max_steps - self.warmup_steps)
        progress = (step - self.warmup_steps) / span
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + coeff * (self.lr - self.min_lr)

    @classmethod
    def from_preset(
        cls, architecture: str, preset: str, overrides: dict[str, Any] | None = None
    ) -> TrainConfig:
        """Start from the training preset (`cadenza.train.presets`), then apply `overrides`.

        `preset` may be a current name or an old alias. seq_len defaults to the preset model's
        block_size: the context it was sized for (the `base` music-transformer trains on full
        1024-token windows). Unknown override keys are rejected by `extra="forbid"`, so a
        misspelt field never goes unnoticed.
        """
        values: dict[str, Any] = train_preset(architecture, preset)  # checks both names
        block_size = PRESETS[architecture][preset].get("block_size")
        if isinstance(block_size, int):
            values["seq_len"] = block_size
        given = dict(overrides or {})
        # A short override of max_steps should not trip over the preset's longer warm-up: the
        # user only asked for fewer steps, so the warm-up is clamped rather than rejected.
        if "max_steps" in given and "warmup_steps" not in given:
            warmup = values.get("warmup_steps")
            if isinstance(warmup, int) and isinstance(given["max_steps"], int):
                values["warmup_steps"] = min(warmup, given["max_steps"])
        values.update(given)
        return cls.model_validate(values)
