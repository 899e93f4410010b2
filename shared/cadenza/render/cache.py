"""Rendered audio and piano-roll pictures of MIDI, cached in the store by content hash.

Rendering runs on workers (the sample job renders its outputs; a `render` audio job renders
any other MIDI file on request), never in the API process. Keys derive from the MIDI's sha256,
so equal MIDI renders once and a rerun overwrites the same objects.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from cadenza.audio.probe import AUDIO_KINDS
from cadenza.storage import ObjectStore, check_key

log = logging.getLogger(__name__)

RENDER_FORMATS: Final[tuple[str, ...]] = ("mp3", "wav", "png")

#: The media type of every format Cadenza serves a stored file in, by format name: MIDI, the
#: audio kinds an upload may have (listed once, in :data:`cadenza.audio.probe.AUDIO_KINDS`;
#: "opus" is Ogg), and the renders. One table, so a format has the same type on every route.
MEDIA_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {"mid": "audio/midi", **AUDIO_KINDS, "opus": "audio/ogg", "png": "image/png"}
)
assert set(RENDER_FORMATS) <= MEDIA_TYPES.keys()


def render_key(sha256: str, fmt: str) -> str:
    """Where the `fmt` rendering of the MIDI with this content hash lives."""
    if fmt not in RENDER_FORMATS:
        raise ValueError(f"unknown render format {fmt!r}")
    return check_key(f"renders/{sha256[:2]}/{sha256}.{fmt}")


def render_all(store: ObjectStore, midi: bytes, sha256: str) -> dict[str, str]:
    """Render MP3, WAV and a piano roll; returns {format: error} for the ones that failed.

    A failed rendering (say, no soundfont installed) never fails the caller: the MIDI is the
    product, audio and pictures are views of it.
    """
    from cadenza.render.audio import render_midi
    from cadenza.render.pianoroll import pianoroll_png

    errors: dict[str, str] = {}
    for fmt in RENDER_FORMATS:
        key = render_key(sha256, fmt)
        if store.exists(key):
            continue
        try:
            data = pianoroll_png(midi) if fmt == "png" else render_midi(midi, fmt=fmt)  # type: ignore[arg-type]
        except Exception as exc:  # report per format; the other formats may still work
            log.warning("rendering %s as %s failed: %s", sha256[:12], fmt, exc)
            errors[fmt] = f"{type(exc).__name__}: {exc}"[:500]
            continue
        store.put(key, data)
    return errors
