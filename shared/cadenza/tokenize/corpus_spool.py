"""Per-file tokenization results on disk: what lets a corpus build stream and shard.

A build tokenizes files in any order (processes, shard jobs on other machines) and must then
group them by split in seeded order, learn the vocabulary from the training files and encode.
Keeping every file's symbols in memory until then would make memory grow with the dataset, so
each result is appended to a *spool* file as it arrives, and only a small record per file
(:class:`SpoolEntry`: id, split counts, where its bytes are) stays in memory. A shard job's
output is exactly one spool, uploaded to the object store; the merge reads several spools
the same way a single build reads its own, which is why a sharded build equals a single one.

The format is plain on purpose (no pickle: a spool travels through the object store): per file
one JSON header line, then each variant's ``symbols`` and ``word_starts`` as little-endian
int32. The header carries what the build needs without reading the arrays.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from cadenza.tokenize.base import Symbols
from cadenza.tokenize.corpus_workers import FileResult

_I4 = np.dtype("<i4")


@dataclass
class SpoolEntry:
    """One file of a spool, without its symbols: what grouping and statistics need."""

    index: int
    file_id: str
    notes: int
    report: list[str]
    skipped: str | None
    variants: int  # sequences kept for this file (original first, then augmented copies)
    base_tokens: int  # symbols of the original
    bars: int  # bars of the original
    path: Path
    offset: int  # where the header line starts


class SpoolWriter:
    """Appends :class:`FileResult` records to a spool file and remembers their entries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[bytes] = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.entries: list[SpoolEntry] = []

    def write(self, r: FileResult) -> None:
        offset = self._f.tell()
        head = {
            "index": r.index,
            "file_id": r.file_id,
            "notes": r.notes,
            "report": r.report,
            "skipped": r.skipped,
            "variants": [
                [int(v.symbols.size), int(v.word_starts.size), v.bars] for v in r.variants
            ],
        }
        self._f.write(json.dumps(head, separators=(",", ":")).encode() + b"\n")
        for v in r.variants:
            self._f.write(np.ascontiguousarray(v.symbols, _I4).tobytes())
            self._f.write(np.ascontiguousarray(v.word_starts, _I4).tobytes())
        first = r.variants[0] if r.variants else None
        self.entries.append(
            SpoolEntry(
                r.index,
                r.file_id,
                r.notes,
                r.report,
                r.skipped,
                len(r.variants),
                int(first.symbols.size) if first else 0,
                first.bars if first else 0,
                self.path,
                offset,
            )
        )

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> SpoolWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_record(f: IO[bytes]) -> tuple[dict[str, object], list[Symbols]] | None:
    line = f.readline()
    if not line:
        return None
    head = json.loads(line)
    variants: list[Symbols] = []
    for n_sym, n_starts, bars in head["variants"]:
        sym = np.frombuffer(f.read(4 * n_sym), _I4).astype(np.int32)
        starts = np.frombuffer(f.read(4 * n_starts), _I4).astype(np.int32)
        if sym.size != n_sym or starts.size != n_starts:
            raise ValueError(f"spool {getattr(f, 'name', '?')} is truncated")
        variants.append(Symbols(sym, starts, int(bars)))
    return head, variants


def scan_spool(path: Path) -> list[SpoolEntry]:
    """The entries of a spool file written elsewhere (a shard job's output), read in one pass
    that keeps one record's arrays in memory at a time."""
    entries: list[SpoolEntry] = []
    with open(path, "rb") as f:
        while True:
            offset = f.tell()
            rec = _read_record(f)
            if rec is None:
                return entries
            head, variants = rec
            first = variants[0] if variants else None
            entries.append(
                SpoolEntry(
                    int(head["index"]),  # type: ignore[call-overload]
                    str(head["file_id"]),
                    int(head["notes"]),  # type: ignore[call-overload]
                    list(head["report"]),  # type: ignore[call-overload]
                    None if head["skipped"] is None else str(head["skipped"]),
                    len(variants),
                    int(first.symbols.size) if first else 0,
                    first.bars if first else 0,
                    path,
                    offset,
                )
            )


class SpoolReader:
    """Random access to the symbols of spooled files (one open handle per spool file)."""

    def __init__(self) -> None:
        self._files: dict[Path, IO[bytes]] = {}

    def variants(self, e: SpoolEntry) -> list[Symbols]:
        """The entry's kept sequences (the first ``e.variants`` of what was spooled)."""
        f = self._files.get(e.path)
        if f is None:
            f = self._files[e.path] = open(e.path, "rb")  # noqa: SIM115 - closed by close()
        f.seek(e.offset)
        rec = _read_record(f)
        if rec is None:
            raise ValueError(f"no record at {e.offset} in spool {e.path}")
        return rec[1][: e.variants]

    def iter_variants(self, entries: list[SpoolEntry]) -> Iterator[Symbols]:
        for e in entries:
            yield from self.variants(e)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["SpoolEntry", "SpoolReader", "SpoolWriter", "scan_spool"]
