"""The seeded, per-file train/val/test split of a corpus.

The split is by file, never by sequence, so no piece (or augmented copy of it) is in two splits;
it is seeded, and it depends only on the file ids, not on their order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

SPLITS = ("train", "val", "test")


def file_rank(seed: int, file_id: str) -> bytes:
    """A file's seeded position: splits and the order of files inside them follow it."""
    return hashlib.sha256(f"{seed}\0{file_id}".encode()).digest()


def assign_splits(
    file_ids: Sequence[str], split: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """File id → "train" | "val" | "test", seeded and independent of the input order.

    Files are ranked by sha256(seed, id); the first ``round(n·val)`` go to val, the next
    ``round(n·test)`` to test, the rest to train. With ≥ 2 files val gets at least one and train
    always keeps one. Adding files moves few existing ones (ranks are per file, not a shuffle).
    """
    if (
        len(split) != 3
        or any(s < 0 for s in split)
        or not math.isclose(sum(split), 1.0, abs_tol=1e-6)
    ):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {split}")
    if split[0] <= 0:
        raise ValueError("the train fraction must be positive")
    if len(set(file_ids)) != len(file_ids):
        raise ValueError("file ids must be unique")
    ranked = sorted(file_ids, key=lambda f: file_rank(seed, f))
    n = len(ranked)
    n_val = round(n * split[1])
    n_test = round(n * split[2])
    if n >= 2 and split[1] > 0:
        n_val = max(n_val, 1)
    while n_val + n_test > n - 1 and n > 0:  # train keeps at least one file
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    out = {f: "val" for f in ranked[:n_val]}
    out.update({f: "test" for f in ranked[n_val : n_val + n_test]})
    out.update({f: "train" for f in ranked[n_val + n_test :]})
    return out


__all__ = ["SPLITS", "assign_splits", "file_rank"]
