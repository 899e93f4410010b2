"""Cut positions for cropping, parsed from user text: pure Python, safe to import in the API.

Kept apart from :mod:`cadenza.audio.convert` (which needs soundfile and ffmpeg) so the API can
refuse a bad position list with a 422 before a job is queued.
"""

from __future__ import annotations

import re
from typing import Final

#: Upper bound on pieces from one file; 10,000 cuts is already far past any real use.
MAX_SEGMENTS: Final[int] = 10_000

_TIME = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?|\.\d+)$")


def parse_positions(text: str) -> list[float]:
    """Cut positions from user text such as ``"179,500,748"``, sorted ascending.

    Accepts seconds (``179``, ``179.5``) or clock times (``2:59``, ``1:02:03.5``) separated by
    commas, semicolons, spaces or newlines, so a plain text file of one time per line parses
    unchanged.
    """
    tokens = [t for t in re.split(r"[,;\s]+", text.strip()) if t]
    if not tokens:
        raise ValueError("no cut positions given; write seconds separated by commas, e.g. 179,500")
    if len(tokens) >= MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS - 1} cut positions are allowed")
    seen: dict[float, str] = {}
    for i, token in enumerate(tokens, start=1):
        match = _TIME.match(token)
        if match is None:
            raise ValueError(
                f"cut position {i} ({token[:20]!r}) is not a time; write seconds like 179 or "
                "179.5, or minutes like 2:59, separated by commas"
            )
        hours, minutes, seconds = match.groups()
        if minutes is not None and float(seconds) >= 60:
            raise ValueError(f"cut position {i} ({token!r}) has 60 or more seconds after a colon")
        if hours is not None and int(minutes) >= 60:
            raise ValueError(f"cut position {i} ({token!r}) has 60 or more minutes after a colon")
        value = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds)
        if value <= 0:
            raise ValueError(
                f"cut position {i} ({token!r}) is at 0 s; the first piece always starts there"
            )
        if value in seen:
            raise ValueError(f"cut position {token!r} repeats {seen[value]!r}")
        seen[value] = token
    return sorted(seen)


__all__ = ["MAX_SEGMENTS", "parse_positions"]
