"""What a corpus build produces (statistics, flat id arrays per split, their ``.npz`` form) and
the two ways a build ends without a corpus (cancelled, or no usable file)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cadenza.atomic import write_atomic
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


@dataclass
class CorpusBuild:
    """A built corpus: the trained tokenizer, flat id arrays per split and what went where."""

    tokenizer: Tokenizer
    splits: dict[str, NDArray[np.int32]]
    file_splits: dict[str, list[str]]
    stats: CorpusStats

    def to_npz_bytes(self) -> bytes:
        """``.npz`` with 1-D int32 ``train_data``, ``val_data``, ``test_data`` (nanoGPT style)."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"{k}_data": v for k, v in self.splits.items()}
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save_npz(self, path: str | Path) -> Path:
        """Write :meth:`to_npz_bytes` to ``path`` atomically (a reader never sees half a file)."""
        return write_atomic(path, self.to_npz_bytes())

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


__all__ = ["CorpusBuild", "CorpusCancelled", "CorpusEmpty", "CorpusStats", "load_npz"]
