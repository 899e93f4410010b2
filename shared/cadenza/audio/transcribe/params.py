"""The knobs of a transcription, validated by the API before a job is queued.

Only pydantic is imported here: the API process validates requests with
:class:`TranscribeParams` and must not load numpy, ONNX Runtime or basic-pitch to do so.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TranscribeParams(BaseModel):
    """basic-pitch's note-decoding knobs, with its defaults and bounds that keep output sane."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    onset_threshold: float = Field(
        default=0.5,
        ge=0.05,
        le=0.95,
        description="Onset activation needed to start a note; lower = more notes.",
    )
    frame_threshold: float = Field(
        default=0.3, ge=0.05, le=0.95, description="Frame activation needed to sustain a note."
    )
    minimum_note_length_ms: float = Field(
        default=127.7,
        ge=10.0,
        le=2000.0,
        description="Shorter notes are dropped (basic-pitch: 127.7).",
    )
    minimum_frequency: float | None = Field(
        default=None, ge=27.5, le=4186.0, description="Hz; notes below are dropped (None: A0)."
    )
    maximum_frequency: float | None = Field(
        default=None, ge=27.5, le=4186.0, description="Hz; notes above are dropped (None: C8)."
    )
    midi_tempo: float = Field(
        default=120.0, ge=20.0, le=300.0, description="Tempo written into the MIDI file (bpm)."
    )

    @model_validator(mode="after")
    def _band_not_empty(self) -> TranscribeParams:
        """A band with min ≥ max keeps no notes at all: almost certainly swapped values."""
        lo, hi = self.minimum_frequency, self.maximum_frequency
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(
                f"minimum_frequency ({lo} Hz) must be below maximum_frequency ({hi} Hz)"
            )
        return self
