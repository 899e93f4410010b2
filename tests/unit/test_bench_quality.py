"""bench/quality.py runs end to end on a tiny corpus and computes every figure it reports.

Only that the numbers exist and are well-formed: quality thresholds belong in BENCHMARKS.md,
measured at a size where they mean something, not in a test of a 5-step model.
"""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What the train stage must run without: the GPU machine it is for has only torch, numpy and
#: pydantic (plus the repository). Blocked in a subprocess, an import of any raises ImportError.
NOT_ON_THE_TRAINING_MACHINE = (
    "miditok",
    "symusic",
    "music21",
    "sqlalchemy",
    "safetensors",
    "pydantic_settings",
    "cadenza.tokenize",
    "cadenza.evaluate",
    "cadenza.sample",
    "cadenza.jobs",
    "cadenza.db",
)
TINY = ["--preset", "tiny", "--model", "", "--seq-len", "32", "--eval-batches", "2"]
SAMPLE = ["--n", "2", "--lengths", "24", "--primed", "1", "--primed-length", "16"]


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
            "--files", "4", "--steps", "3", "--archs", "gpt", "music-transformer", *TINY,
            *SAMPLE, "--sampling", "stop_at_eos=true,resample_empty=0", "",
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
            assert set(unprimed["within_1sd"]) == {"excerpts", "whole"}
            for share in unprimed["within_1sd"].values():
                assert 0.0 <= share <= 1.0
            assert primed["samples"] <= 1


def test_quality_bench_stages_train_without_the_music_libraries(
    chorales: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """corpus here → train in a process where the music and database libraries cannot load →
    sample here, through the folder alone: the path of a run trained on a GPU machine."""
    bench = _load_bench()
    folder = tmp_path / "stages"
    data = ["--data-dir", str(chorales[0].parent)]
    bench.main(["--stage", "corpus", "--out", str(folder), "--files", "4", *data])  # type: ignore[attr-defined]
    block = "".join(f"sys.modules[{name!r}] = None; " for name in NOT_ON_THE_TRAINING_MACHINE)
    train = [
        "--stage", "train", "--from", str(folder), "--steps", "2", "--device", "cpu",
        "--archs", "gpt", "music-transformer", *TINY,
    ]  # fmt: skip
    code = (
        f"import runpy, sys; {block}sys.argv = ['quality.py', *{train!r}]; "
        f"runpy.run_path({str(ROOT / 'bench' / 'quality.py')!r}, run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy(), timeout=300)
    assert {p.name for p in folder.iterdir()} >= {"gpt.pt", "music-transformer.pt", "train.json"}
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 30 * 2**20
    report = bench.main(["--stage", "sample", "--from", str(folder), *SAMPLE, "--sampling", ""])  # type: ignore[attr-defined]
    assert "| architecture |" in capsys.readouterr().out
    assert report["held_out"]["samples"] > 0  # the openings of the val and test pieces
    for arch in report["archs"].values():
        assert arch["step"] == 2 and math.isfinite(arch["val_nll"])
        unprimed = arch["setups"][""]["unprimed"]
        assert unprimed["samples"] == 2 and set(unprimed["within_1sd"]) == {"excerpts", "whole"}
