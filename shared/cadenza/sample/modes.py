"""What a model can do besides continuing a piece, and how a request asks for it; torch-free.

Three sampling modes: ``continue`` (every model: write what comes after a primer), ``infill``
(rewrite some bars of some tracks of a source piece, everything else kept) and ``accompany``
(add new tracks, with given programs, to a source piece). The last two need a model trained on
a corpus that can carry fill-in-the-middle examples (the `multitrack` preset) with
``train.infill_fraction`` > 0: :func:`model_modes` says which modes a model has, from its
corpus's tokenizer spec and its training config, and :func:`check_mode` refuses the others
with the way to train a model that can.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cadenza.tokenize.mmm import INFILL_LAYOUTS, InfillLayout, supports_editing

Mode = Literal["continue", "infill", "accompany"]
#: Every mode, in the order `capabilities.modes` lists them.
MODES: tuple[Mode, ...] = ("continue", "infill", "accompany")
#: Bars one request may rewrite (each is sampled on its own, per track).
MAX_INFILL_BARS = 64
#: Tracks one accompaniment request may add.
MAX_NEW_TRACKS = 8


class InfillSpec(BaseModel):
    """Which part of the source an infill rewrites: a range of bars of some of its tracks."""

    model_config = ConfigDict(extra="forbid")

    bars: tuple[int, int] = Field(
        description="first and last bar to rewrite, 1-based and inclusive: [3, 4] is bars 3-4"
    )
    tracks: list[int] | None = Field(
        default=None,
        max_length=128,
        description="indexes (0-based) of the source's tracks with notes to rewrite in those "
        "bars; null = all of them",
    )

    @model_validator(mode="after")
    def _ordered(self) -> InfillSpec:
        first, last = self.bars
        if first < 1:
            raise ValueError("bars: the first bar is 1")
        if last < first:
            raise ValueError(f"bars: the last bar ({last}) comes before the first ({first})")
        if last - first + 1 > MAX_INFILL_BARS:
            raise ValueError(f"bars: at most {MAX_INFILL_BARS} bars per request")
        if self.tracks is not None:
            if not self.tracks:
                raise ValueError("tracks: name at least one track, or leave it out for all")
            if any(k < 0 for k in self.tracks):
                raise ValueError("tracks: indexes start at 0")
        return self


class AccompanySpec(BaseModel):
    """The tracks an accompaniment adds to the source: one per program, plus drums if asked."""

    model_config = ConfigDict(extra="forbid")

    programs: list[int] = Field(
        default_factory=list,
        max_length=MAX_NEW_TRACKS,
        description="General MIDI program (0-127) of each new pitched track, e.g. [33] for a "
        "bass line",
    )
    drums: bool = Field(default=False, description="add a drum track too")

    @model_validator(mode="after")
    def _something(self) -> AccompanySpec:
        if any(not 0 <= p <= 127 for p in self.programs):
            raise ValueError("programs: General MIDI programs are 0..127")
        if not self.programs and not self.drums:
            raise ValueError("programs: name at least one program, or set drums to true")
        if len(self.programs) + self.drums > MAX_NEW_TRACKS:
            raise ValueError(f"programs: at most {MAX_NEW_TRACKS} new tracks per request")
        return self


class EditFields(BaseModel):
    """The fields of a sample request that choose its mode and, to edit, the source piece."""

    mode: Mode = Field(
        default="continue",
        description="continue (default): write what follows the primer; infill: rewrite "
        "`infill.bars` of `infill.tracks` of the source; accompany: add tracks with "
        "`accompany.programs` to the source",
    )
    source_file_id: str | None = Field(
        default=None, max_length=64, description="infill/accompany: the MIDI file to edit"
    )
    source_sample_id: str | None = Field(
        default=None, max_length=64, description="infill/accompany: one of your samples to edit"
    )
    infill: InfillSpec | None = None
    accompany: AccompanySpec | None = None

    @model_validator(mode="after")
    def _mode_fields(self) -> EditFields:
        sources = [n for n in ("source_file_id", "source_sample_id") if getattr(self, n)]
        if self.mode == "continue":
            extra = [n for n in (*sources, "infill", "accompany") if getattr(self, n)]
            if extra:
                raise ValueError(
                    f"{', '.join(extra)}: only for mode infill or accompany (mode is continue)"
                )
            return self
        if len(sources) != 1:
            raise ValueError(
                f"mode {self.mode} edits a piece: give one source_file_id or source_sample_id"
            )
        primers = [
            n
            for n in ("primer_file_id", "primer_sample_id", "primer_tokens", "force_tokens")
            if getattr(self, n, None)
        ]
        if primers:
            raise ValueError(
                f"{', '.join(primers)}: mode {self.mode} edits the source; it takes no primer"
            )
        steering = [n for n in ("controls", "tags") if getattr(self, n, None)]
        if steering:  # the edit writes bars inside the source's own conditioning
            raise ValueError(
                f"{', '.join(steering)}: mode {self.mode} keeps the source's own controls and "
                "tags; steer a continuation (mode continue) instead"
            )
        wanted, other = (
            ("infill", "accompany") if self.mode == "infill" else ("accompany", "infill")
        )
        if getattr(self, wanted) is None:
            example = (
                '{"bars": [3, 4]}' if wanted == "infill" else '{"programs": [33], "drums": false}'
            )
            raise ValueError(f"{wanted}: mode {self.mode} needs it, e.g. {example}")
        if getattr(self, other) is not None:
            raise ValueError(f"{other}: not for mode {self.mode}")
        return self

    @property
    def source_label(self) -> str:
        """The source, for messages: "source file ID" or "source sample ID"."""
        if self.source_file_id:
            return f"source file {self.source_file_id}"
        return f"source sample {self.source_sample_id}"


def model_modes(
    tokenizer_spec: Mapping[str, Any] | None, train_config: Mapping[str, Any] | None
) -> list[str]:
    """The modes a model can sample in: ``continue`` always; ``infill`` and ``accompany`` when
    its corpus can carry fill examples and it was trained on some (``infill_fraction`` > 0)."""
    modes = ["continue"]
    fraction = float((train_config or {}).get("infill_fraction") or 0.0)
    if supports_editing(tokenizer_spec) and fraction > 0:
        modes += ["infill", "accompany"]
    return modes


def model_infill_layout(train_config: Mapping[str, Any] | None) -> InfillLayout:
    """The layout a model's edits are prompted in: the one it was trained with
    (``train.infill_layout``); a training config without one predates the ``spm`` layout, so
    that model learned ``mmm``."""
    got = (train_config or {}).get("infill_layout") or "mmm"
    for style in INFILL_LAYOUTS:
        if got == style:
            return style
    raise ValueError(f"train.infill_layout: unknown layout {got!r}")


def check_mode(mode: str, modes: list[str]) -> None:
    """Refuse a mode the model does not have (InvalidParams naming `mode`), saying how to
    train one that has it."""
    from cadenza.validation import InvalidParams

    if mode in modes:
        return
    raise InvalidParams(
        f"mode: this model cannot {mode} (its modes: {', '.join(modes)}); train a model that "
        "can on a corpus built with the `multitrack` preset (POST /v1/corpora with "
        '"preset": "multitrack", then POST /v1/models; train.infill_fraction defaults to 0.5 '
        "there and must stay above 0)",
        code="mode_not_supported",
        details=[{"field": "mode", "message": f"this model cannot {mode}"}],
    )


__all__ = [
    "MAX_INFILL_BARS",
    "MAX_NEW_TRACKS",
    "MODES",
    "AccompanySpec",
    "EditFields",
    "InfillSpec",
    "Mode",
    "check_mode",
    "model_infill_layout",
    "model_modes",
]
