"""Write-then-rename for local files: a reader sees the old file or the whole new one.

Every local file Cadenza writes that another process may read (cached soundfonts, converted
audio, exported chorales, corpus arrays, local checkpoints) goes through here, so a crash or a
kill mid-write never leaves a torn file under the final name.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(dest: str | Path, *, suffix: str = ".tmp", mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it replaces `dest`, else it is removed.

    The temporary file lives in the same folder so the final `os.replace` is a rename on one
    filesystem (atomic on POSIX). `mode` is applied before the rename because `mkstemp` makes
    files only their owner can read. The caller may write the path itself or hand it to a tool
    (ffmpeg, music21) that writes it.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(dest: str | Path, data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to `dest` atomically (see `atomic_path`); returns `dest` as a Path."""
    with atomic_path(dest, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(dest)
