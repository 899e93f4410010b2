"""The `audio` job's parameters: convert, crop or transcribe a dataset's audio files.

Torch- and ffmpeg-free, so the API refuses a bad request (a cut list that is not times, a tail
longer than the interval) with a 422 before any job is queued, and the handler reads the same
model back. Cut positions given as text (the old tools' "179,500,748" files) are parsed here
into sorted seconds once; the job stores only the numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cadenza.audio.positions import parse_positions
from cadenza.audio.transcribe.params import TranscribeParams

# Cut positions of one crop, as a list or parsed from `positions_text`.
MAX_CUTS = 9999


class ConvertParams(BaseModel):
    """To WAV (16-bit PCM) at `sample_rate`, mixed to mono unless `mono` is false."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(default=16000, ge=4000, le=192_000)
    mono: bool = True


class CropRequest(BaseModel):
    """Cut every `interval_s` (a tail under `min_tail_s` joins the piece before) or at positions.

    Only the bounds of each field are checked on the request itself; cut lists are parsed and
    cross-checked by `CropParams` once the request's files are known to exist, so a request on
    a dataset without audio says that first.
    """

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(default=30.0, gt=0, le=3600)
    min_tail_s: float = Field(default=0.0, ge=0, le=3600)
    positions: list[float] | None = Field(default=None, max_length=MAX_CUTS)
    positions_text: str | None = Field(
        default=None, max_length=100_000, description="comma-separated seconds, e.g. 179,500,748"
    )


class CropParams(CropRequest):
    """A crop the job can run: `positions_text` parsed into sorted seconds, bounds checked."""

    @model_validator(mode="after")
    def _resolve(self) -> CropParams:
        if self.positions_text:
            try:
                self.positions = parse_positions(self.positions_text)
            except ValueError as exc:
                raise ValueError(f"positions_text: {exc}") from exc
            self.positions_text = None
        if self.positions is not None:
            if any(p <= 0 for p in self.positions):
                raise ValueError("positions must be > 0 seconds")
            self.positions = sorted(set(self.positions))
            if len(self.positions) > MAX_CUTS:
                raise ValueError(f"at most {MAX_CUTS} cut positions, got {len(self.positions)}")
        if self.min_tail_s > self.interval_s:
            raise ValueError("min_tail_s must be ≤ interval_s")
        return self


class AudioJobRequest(BaseModel):
    """`POST /v1/datasets/{id}/audio-jobs`: one operation over some (default: all) audio files."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"operation": "transcribe"},
                {"operation": "crop", "crop": {"interval_s": 30, "min_tail_s": 5}},
                {"operation": "convert", "convert": {"sample_rate": 16000, "mono": True}},
            ]
        },
    )

    operation: Literal["convert", "crop", "transcribe"]
    file_ids: list[str] = Field(
        default_factory=list, max_length=10_000, description="audio files; empty = all of them"
    )
    convert: ConvertParams = Field(default_factory=ConvertParams)
    crop: CropRequest = Field(default_factory=CropRequest)
    transcribe: TranscribeParams = Field(default_factory=TranscribeParams)


class AudioParams(AudioJobRequest):
    """What an `audio` job runs with: the request, its dataset and the files it resolved to."""

    dataset_id: str
    file_ids: list[str] = Field(min_length=1, max_length=10_000)
    crop: CropParams = Field(default_factory=CropParams)
