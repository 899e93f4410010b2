"""Media types of every format Cadenza stores or serves, by file extension (one table)."""

from __future__ import annotations

from typing import Final

MEDIA_TYPES: Final[dict[str, str]] = {
    "mid": "audio/midi",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "flac": "audio/flac",
    "ogg": "audio/ogg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "m4a": "audio/mp4",
    "png": "image/png",
}


def media_type(fmt: str) -> str:
    """The media type of format `fmt`, or a generic binary type for anything unknown."""
    return MEDIA_TYPES.get(fmt, "application/octet-stream")
