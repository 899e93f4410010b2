"""The `render` job's parameters: which MIDI objects to render to MP3, WAV and a piano roll.

Renderings are cached by the MIDI's content hash, so a target is its hash plus the store key
of its bytes; the API fills both from a stored file or sample, never from client text.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class RenderTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    key: str = Field(min_length=1, max_length=1024)


class RenderParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    targets: list[RenderTarget] = Field(min_length=1, max_length=1000)
