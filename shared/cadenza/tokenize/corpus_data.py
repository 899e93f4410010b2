"""What a corpus build produces (statistics, flat id arrays per split, their ``.npz`` form) and
the two ways a build ends without a corpus (cancelled, or no usable file).

The id arrays live in files (raw little-endian int32, one per split) that the build appended
to as it encoded, not in memory: :attr:`CorpusBuild.splits` maps them read-only and
:meth:`CorpusBuild.save_npz` copies them into the ``.npz`` in chunks, so writing a corpus of
any size takes a few MB of memory.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from cadenza.atomic import atomic_path
from cadenza.tokenize.base import Tokenizer


class CorpusCancelled(Exception):
    """``should_stop`` returned True; nothing was produced."""


class CorpusEmpty(ValueError):
    """No file survived loading, cleaning and tokenization; ``skipped`` says why per file."""

    def __init__(self, skipped: dict[str, str]) -> None:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        super().__init__(f"no usable MIDI file in the dataset ({len(skipped)} skipped: {reasons})")
        self.skipped = skipped


@dataclass
class CorpusStats(Mapping[str, Any]):
    """Figures shown on the corpus page. Also a read-only mapping (``dict(stats)``,
    ``stats["skipped"]``) so a job handler can store it as JSON without knowing the fields."""

    files_total: int
    files_used: int
    files_per_split: dict[str, int]
    sequences_per_split: dict[str, int]  # files plus their augmented copies
    tokens_per_split: dict[str, int]  # ids in the arrays, BOS/EOS included
    vocab_size: int
    base_vocab_size: int
    mean_tokens_per_bar: float  # final ids per bar over the original (not augmented) files
    base_tokens_per_bar: float  # the same before subword merges
    compression: float  # base ids / final ids (1.0 without BPE)
    notes: int  # notes tokenized, original files
    skipped: dict[str, str] = field(default_factory=dict)  # file id → reason
    clean_reports: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    workers: int = 1
    tokenizer: dict[str, Any] = field(default_factory=dict)  # Tokenizer.fit_stats()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


_CHUNK = 1 << 20


def write_npz(out: IO[bytes], arrays: Mapping[str, Path]) -> None:
    """An uncompressed ``.npz`` (what ``np.savez`` writes) of raw int32 files, in 1 MiB chunks.

    ``arrays`` maps each member name (without ``.npy``) to a file of little-endian int32.
    """
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, raw in arrays.items():
            n = raw.stat().st_size // 4
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member, open(raw, "rb") as src:
                header = {"descr": "<i4", "fortran_order": False, "shape": (n,)}
                np.lib.format.write_array_header_1_0(member, header)
                shutil.copyfileobj(src, member, _CHUNK)


@dataclass
class CorpusBuild:
    """A built corpus: the trained tokenizer, flat id arrays per split and what went where.

    ``split_files`` are the raw int32 files of the arrays; they live in ``workdir``, which the
    build owns and removes on :meth:`close` (or when the build is garbage-collected).
    """

    tokenizer: Tokenizer
    split_files: dict[str, Path]
    file_splits: dict[str, list[str]]
    stats: CorpusStats
    workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def splits(self) -> dict[str, NDArray[np.int32]]:
        """The id arrays, mapped read-only from their files (pages load as they are read)."""
        out: dict[str, NDArray[np.int32]] = {}
        for k, path in self.split_files.items():
            size = path.stat().st_size
            out[k] = np.memmap(path, dtype="<i4", mode="r") if size else np.zeros(0, dtype=np.int32)
        return out

    def tokens(self) -> int:
        """Ids over all splits (BOS/EOS included)."""
        return sum(p.stat().st_size // 4 for p in self.split_files.values())

    def write_npz(self, out: IO[bytes]) -> None:
        """``.npz`` with 1-D int32 ``train_data``, ``val_data``, ``test_data`` (nanoGPT style)."""
        write_npz(out, {f"{k}_data": v for k, v in self.split_files.items()})

    def to_npz_bytes(self) -> bytes:
        """:meth:`write_npz` into memory (small corpora, tests)."""
        buf = io.BytesIO()
        self.write_npz(buf)
        return buf.getvalue()

    def save_npz(self, path: str | Path) -> Path:
        """Write the ``.npz`` to ``path`` atomically (a reader never sees half a file)."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            self.write_npz(f)
        return Path(path)

    def close(self) -> None:
        """Remove the array files (the build's ``splits`` are unusable afterwards)."""
        if self.workdir is not None:
            self.workdir.cleanup()
            self.workdir = None

    def meta(self) -> dict[str, Any]:
        """What a trainer needs besides the arrays: vocab size, special ids, tokenizer hash."""
        return {
            "tokenizer": self.tokenizer.spec.model_dump(mode="json"),
            "tokenizer_hash": self.tokenizer.hash(),
            "vocab_size": self.tokenizer.vocab_size,
            "special_ids": self.tokenizer.special_ids,
            "tokens_per_split": self.stats.tokens_per_split,
        }


def load_npz(data: bytes | str | Path) -> dict[str, NDArray[np.int32]]:
    """Read a corpus ``.npz`` (bytes or path) into ``{"train": …, "val": …, "test": …}``."""
    src: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(src) as z:
        return {k.removesuffix("_data"): np.asarray(z[k]) for k in z.files}


__all__ = [
    "CorpusBuild",
    "CorpusCancelled",
    "CorpusEmpty",
    "CorpusStats",
    "load_npz",
    "write_npz",
]
