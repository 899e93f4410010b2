"""The knobs of a transcription, validated by the API before a job is queued.

Only pydantic is imported here: the API process validates requests with
:class:`TranscribeParams` and must not load numpy, ONNX Runtime, torch or a model to do so.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: What each engine is for; the README's table says the same.
Engine = Literal["basic-pitch", "transkun"]

#: Knobs of basic-pitch's note decoding. transkun decodes notes with its own CRF and has no
#: thresholds, so setting one of these with ``engine="transkun"`` is refused, not ignored.
BASIC_PITCH_ONLY: Final = ("onset_threshold", "frame_threshold", "minimum_note_length_ms")


class TranscribeParams(BaseModel):
    """The engine, basic-pitch's note-decoding knobs (its defaults, bounds that keep output
    sane) and the knobs every engine honours (frequency band, MIDI tempo)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Engine = Field(
        default="basic-pitch",
        description=(
            "basic-pitch: any pitched instrument, no velocities or pedal. transkun: solo piano "
            "only, with velocities and sustain/soft pedal (CC64/CC67); ~0.1-0.3x real time on "
            "CPU, uses a GPU when the worker has one."
        ),
    )
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
    def _knobs_fit_engine(self) -> TranscribeParams:
        """A threshold sent with transkun would silently do nothing: say so instead. Values
        are compared with the defaults, not with the fields given, because a stored job's
        parameters are validated again with every field present."""
        if self.engine != "basic-pitch":
            fields = type(self).model_fields
            given = [k for k in BASIC_PITCH_ONLY if getattr(self, k) != fields[k].default]
            if given:
                raise ValueError(
                    f"{', '.join(given)} tune basic-pitch's note decoding; engine "
                    f"{self.engine!r} has no such knob (drop them or use engine 'basic-pitch')"
                )
        return self

    @model_validator(mode="after")
    def _band_not_empty(self) -> TranscribeParams:
        """A band with min ≥ max keeps no notes at all: almost certainly swapped values."""
        lo, hi = self.minimum_frequency, self.maximum_frequency
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(
                f"minimum_frequency ({lo} Hz) must be below maximum_frequency ({hi} Hz)"
            )
        return self
