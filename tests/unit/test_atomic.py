"""The one write-then-rename helper: whole files or nothing under the final name."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cadenza.atomic import atomic_path, write_atomic


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "a.bin"
    write_atomic(dest, b"one")
    write_atomic(dest, b"two")
    assert dest.read_bytes() == b"two"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.bin"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed mid-write")
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
