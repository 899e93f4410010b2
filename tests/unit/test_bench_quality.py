"""bench/quality.py runs end to end on a tiny corpus and computes every figure it reports.

Only that the numbers exist and are well-formed: quality thresholds belong in BENCHMARKS.md,
measured at a size where they mean something, not in a test of a 5-step model.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_bench() -> object:
    spec = importlib.util.spec_from_file_location("bench_quality", ROOT / "bench" / "quality.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_quality"] = module
    spec.loader.exec_module(module)
    return module


def test_quality_bench_computes_its_figures(
    chorales: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _load_bench()
    report = bench.main(  # type: ignore[attr-defined]
        [
            "--files", "4", "--steps", "3", "--archs", "gpt", "music-transformer",
            "--preset", "tiny", "--model", "", "--seq-len", "32", "--eval-batches", "2",
            "--n", "2", "--lengths", "24", "--primed", "1", "--primed-length", "16",
            "--sampling", "stop_at_eos=true,resample_empty=0", "",
            "--data-dir", str(chorales[0].parent),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert "| architecture |" in out
    assert set(report["archs"]) == {"gpt", "music-transformer"}
    for arch in report["archs"].values():
        assert arch["val_nll"] is not None and math.isfinite(arch["val_nll"])
        assert set(arch["setups"]) == {"stop_at_eos=true,resample_empty=0", ""}
        for setup in arch["setups"].values():
            unprimed, primed = setup["unprimed"], setup["primed"]
            assert unprimed["samples"] == 2
            assert 0 <= unprimed["near_empty"] <= unprimed["samples"]
            assert len(unprimed["notes"]) == 2
            assert 0.0 <= unprimed["within_1sd"] <= 1.0
            assert primed["samples"] <= 1
