"""Running ffmpeg/ffprobe safely: located once, always bounded in time, never probing freely.

Every call names the demuxer explicitly (``-f``) from the magic bytes we sniffed, and allows only
the ``file`` and ``pipe`` protocols. Left to itself ffmpeg guesses the container from content and
name, and some containers (HLS playlists, concat lists) open further files or URLs; an upload
must never be able to make a worker read something else.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from typing import Final

#: ffmpeg demuxer for each sniffed kind (``ffmpeg -demuxers``); ``mov`` reads M4A/MP4.
DEMUXERS: Final[dict[str, str]] = {
    "wav": "wav",
    "mp3": "mp3",
    "aac": "aac",
    "m4a": "mov",
    "flac": "flac",
    "ogg": "ogg",
}

#: Options that go before every ``-i``: local files and pipes only (ffmpeg also gets -nostdin).
SAFE_INPUT: Final[tuple[str, ...]] = ("-protocol_whitelist", "file,pipe,fd")


@cache
def tool(name: str) -> str:
    """Absolute path of ``ffmpeg``/``ffprobe``; a missing tool says which package to install."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; install it with `apt-get install ffmpeg`")
    return path


def input_args(path: str, kind: str | None) -> list[str]:
    """``[-f demuxer] -i path`` for ffmpeg/ffprobe, forcing the demuxer when the kind is known."""
    args: list[str] = list(SAFE_INPUT)
    if kind is not None:
        args += ["-f", DEMUXERS[kind]]
    # "file:" stops ffmpeg from reading a protocol out of a path like "http:x.wav".
    return [*args, "-i", f"file:{path}"]


def decode_args(path: str, kind: str | None) -> list[str]:
    """The start of every decoding command: ffmpeg, quiet and non-interactive, reading ``path``
    safely (:func:`input_args`) and keeping only its first audio stream, without metadata (so
    equal audio gives equal bytes). Output options and the output follow."""
    args = [tool("ffmpeg"), "-nostdin", "-v", "error", "-y", *input_args(path, kind)]
    return [*args, "-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1"]


def run(
    args: Sequence[str], *, timeout: float, stdin: bytes | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool with captured output; raises ``subprocess.TimeoutExpired`` after killing it."""
    return subprocess.run(
        list(args),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\] ")


def reason(proc: subprocess.CompletedProcess[bytes], path: object, lines: int = 2) -> str:
    """The last lines of a tool's stderr, fit for a user: without ffmpeg's internal
    ``[demuxer @ 0x…]`` prefixes and without our server-side path."""
    text = proc.stderr.decode("utf-8", "replace")
    kept = []
    for line in text.splitlines():
        line = _LOG_PREFIX.sub("", line.strip())
        line = line.replace(f"file:{path}", "file").replace(str(path), "file")
        if line and not line.startswith("Last message repeated"):
            kept.append(line)
    return "; ".join(kept[-lines:])[:300]
