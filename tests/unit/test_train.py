"""Training loop, checkpoints, resume, DDP and config validation, on tiny real models (CPU)."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cadenza.models import model_from_safetensors, resolve_config
from cadenza.models.checkpoint import dump_checkpoint, export_safetensors, load_for_inference
from cadenza.train import TrainConfig, TrainResult, train
from cadenza.train import data as data_module
from cadenza.train.checkpoint import (
    capture_rng_state,
    checkpoints_to_prune,
    restore_rng_state,
    unpack,
)
from cadenza.train.data import grid_starts

VOCAB = 24


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread, and other test files may share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pattern_data(period: int = 11, seed: int = 0, n: int = 4000) -> dict[str, np.ndarray]:
    """A repeating random phrase: perfectly predictable after one period, so loss must fall."""
    rng = np.random.default_rng(seed)
    phrase = rng.integers(0, VOCAB, size=period)
    tokens = np.tile(phrase, n // period + 1)[:n].astype(np.int32)
    return {
        "train": tokens[: n // 2],
        "val": tokens[n // 2 : 3 * n // 4],
        "test": tokens[3 * n // 4 :],
    }


def spec(architecture: str = "gpt", **overrides: Any) -> dict[str, Any]:
    """Tiny preset, optionally changed (dropout on makes RNG restoration matter)."""
    return {
        "architecture": architecture,
        "config": resolve_config(architecture, "tiny", overrides),
        "vocab_size": VOCAB,
    }


def config(architecture: str = "gpt", **overrides: Any) -> TrainConfig:
    """Small, fast settings on top of the tiny training preset."""
    values: dict[str, Any] = {
        "max_steps": 12,
        "warmup_steps": 2,
        "seq_len": 16,
        "batch_size": 4,
        "eval_interval": 1000,
        "eval_batches": 2,
        "log_interval": 1,
        "checkpoint_interval": 1000,
        "precision": "fp32",
    }
    values.update(overrides)
    values["warmup_steps"] = min(values["warmup_steps"], values["max_steps"])
    return TrainConfig.from_preset(architecture, "tiny", values)


class MemoryHooks:
    """TrainHooks that keep everything in memory; can cancel or crash on demand."""

    def __init__(
        self,
        *,
        stop_at_poll: int | None = None,
        crash_at_step: int | None = None,
        start_from: bytes | None = None,
    ) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.progress: list[tuple[float, str]] = []
        self.checkpoints: dict[int, bytes] = {}
        self.saves: list[tuple[int, float | None, bool]] = []
        self.polls = 0
        self.stop_at_poll = stop_at_poll
        self.crash_at_step = crash_at_step
        self.start_from = start_from

    def on_metrics(self, record: dict[str, Any]) -> None:
        if record["split"] == "train" and record["step"] == self.crash_at_step:
            raise RuntimeError("simulated worker crash")
        self.metrics.append(record)

    def on_progress(self, fraction: float, message: str) -> None:
        self.progress.append((fraction, message))

    def should_stop(self) -> bool:
        self.polls += 1
        return self.stop_at_poll is not None and self.polls >= self.stop_at_poll

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        self.checkpoints[step] = payload
        self.saves.append((step, val_loss, is_best))

    def load_latest_checkpoint(self) -> bytes | None:
        if self.checkpoints:
            return self.checkpoints[max(self.checkpoints)]
        return self.start_from

    def train_losses(self) -> dict[int, float]:
        return {r["step"]: r["loss"] for r in self.metrics if r["split"] == "train"}


def run(
    hooks: MemoryHooks,
    cfg: TrainConfig | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, np.ndarray] | None = None,
    tokenizer_hash: str = "tok-a",
    init_from: bytes | None = None,
) -> TrainResult:
    return train(
        model or spec(),
        data or pattern_data(),
        cfg or config(),
        hooks,
        tokenizer_hash=tokenizer_hash,
        init_from=init_from,
        device="cpu",
    )


# ----------------------------------------------------------------------------- learning


@pytest.mark.parametrize("architecture", ["gpt", "music-transformer", "gru", "lstm"])
def test_loss_falls_on_a_learnable_sequence(architecture: str) -> None:
    hooks = MemoryHooks()
    cfg = config(architecture, max_steps=40, lr=3e-3, eval_interval=20, log_interval=5)
    result = run(hooks, cfg, spec(architecture))
    losses = hooks.train_losses()
    assert result.stopped_reason == "completed" and result.steps == 40
    assert losses[40] < 0.5 * losses[5]
    # A uniform guess scores ln(VOCAB) ~ 3.18; the phrase is deterministic after 11 tokens.
    assert result.final_val_loss is not None and result.final_val_loss < 0.25 * math.log(VOCAB)
    assert result.test_loss is not None and result.test_loss < 0.25 * math.log(VOCAB)
    assert result.tokens_per_s > 0
    val_rows = [r for r in hooks.metrics if r["split"] == "val"]
    assert [r["step"] for r in val_rows] == [20, 40]
    assert {r["split"] for r in hooks.metrics} == {"train", "val", "test"}
    assert set(hooks.metrics[0]) == {
        "step", "split", "loss", "perplexity", "lr", "tokens_per_s", "elapsed_s",
    }  # fmt: skip
    assert hooks.progress[-1][0] == 1.0


def test_grid_starts_begin_at_each_file_and_every_grid_after_it() -> None:
    arr = np.array([1, 5, 5, 5, 5, 5, 2, 1, 6, 6, 6, 2, 1, 7], dtype=np.int32)
    # files start at the BOS (1) at 0 and 7; the BOS at 12 is past high (no full window there)
    assert grid_starts(arr, bos_id=1, grid=2, high=12).tolist() == [0, 1, 3, 5, 7, 8, 10]
    assert grid_starts(arr, bos_id=1, grid=1, high=7).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert grid_starts(arr, bos_id=9, grid=2, high=12).size == 0


def test_window_grid_starts_every_training_window_on_the_grid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    files = [rng.integers(3, VOCAB, size=4 * int(rng.integers(5, 15))) for _ in range(40)]
    stream = np.concatenate([np.r_[1, f, 2] for f in files]).astype(np.int32)
    data = {"train": stream, "val": stream[:400], "test": stream[:400]}
    seen: list[int] = []
    real = data_module.windows

    def spy(arr: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
        if arr is data["train"]:
            seen.extend(int(s) for s in starts)
        return real(arr, starts, seq_len)

    monkeypatch.setattr(data_module, "windows", spy)
    cfg = config(window_grid=4, max_steps=10)
    result = train(spec(), data, cfg, MemoryHooks(), tokenizer_hash="t", device="cpu", bos_id=1)
    assert result.steps == 10 and len(seen) == 10 * cfg.batch_size
    allowed = set(grid_starts(stream, 1, 4, stream.size - cfg.seq_len).tolist())
    assert set(seen) <= allowed and len(set(seen)) > 5
    with pytest.raises(ValueError, match="BOS"):
        train(spec(), data, cfg, MemoryHooks(), tokenizer_hash="t", device="cpu")


# ----------------------------------------------------------------------------- resume


def test_cancel_then_resume_reproduces_the_uninterrupted_curve() -> None:
    model = spec("music-transformer", dropout=0.2)  # dropout consumes RNG: it must be restored
    cfg = config("music-transformer", eval_interval=4)
    full = MemoryHooks()
    run(full, cfg, model)

    first = MemoryHooks(stop_at_poll=6)  # polled before each step: 5 steps, then cancelled
    stopped = run(first, cfg, model)
    assert stopped.stopped_reason == "cancelled" and stopped.steps == 5
    assert max(first.checkpoints) == 5

    second = MemoryHooks(start_from=first.checkpoints[5])
    resumed = run(second, cfg, model)
    assert resumed.resumed_from_step == 5 and resumed.steps == 12
    expected = full.train_losses()
    got = second.train_losses()
    assert sorted(got) == list(range(6, 13))
    np.testing.assert_allclose([got[s] for s in got], [expected[s] for s in got], rtol=1e-5)
    full_state = unpack(full.checkpoints[12])["model"]
    resumed_state = unpack(second.checkpoints[12])["model"]
    for name, tensor in full_state.items():
        torch.testing.assert_close(resumed_state[name], tensor, rtol=1e-5, atol=1e-6)


def test_crash_inside_a_hook_resumes_from_the_last_checkpoint() -> None:
    model = spec("gru", dropout=0.0)
    cfg = config("gru", checkpoint_interval=3)
    full = MemoryHooks()
    run(full, cfg, model)

    crashed = MemoryHooks(crash_at_step=8)
    with pytest.raises(RuntimeError, match="simulated worker crash"):
        run(crashed, cfg, model)
    assert sorted(crashed.checkpoints) == [3, 6]

    again = MemoryHooks(start_from=crashed.checkpoints[6])
    result = run(again, cfg, model)
    assert result.resumed_from_step == 6 and result.stopped_reason == "completed"
    expected = full.train_losses()
    got = again.train_losses()
    np.testing.assert_allclose([got[s] for s in range(7, 13)], [expected[s] for s in range(7, 13)])
    assert result.final_val_loss == pytest.approx(
        next(r["loss"] for r in full.metrics if r["split"] == "val"), rel=1e-5
    )


def test_cancel_stops_before_the_next_step_and_leaves_a_checkpoint() -> None:
    hooks = MemoryHooks(stop_at_poll=3)
    result = run(hooks, config(max_steps=1000))
    assert result.stopped_reason == "cancelled"
    assert result.steps == 2 and hooks.polls == 3
    assert [s for s, _, _ in hooks.saves] == [2]
    assert result.test_loss is None  # no slow evaluation once cancelled
    state = unpack(hooks.checkpoints[2])
    assert state["step"] == 2
    assert "cancelled" in hooks.progress[-1][1]


def test_early_stopping_when_validation_stops_improving() -> None:
    train_part = pattern_data(period=11, seed=0)["train"]
    other = pattern_data(period=7, seed=1)  # val phrase unrelated to train: it gets worse
    data = {"train": train_part, "val": other["val"]}
    hooks = MemoryHooks()
    cfg = config(max_steps=400, lr=3e-3, eval_interval=5, early_stopping_patience=2)
    result = run(hooks, cfg, data=data)
    assert result.stopped_reason == "early_stopping"
    assert result.steps < 400
    val = [r["loss"] for r in hooks.metrics if r["split"] == "val"]
    assert result.best_val_loss == pytest.approx(min(val))
    assert min(val[-3:-1]) >= result.best_val_loss  # the last `patience` evals did not improve
    assert result.test_loss is None  # no test split given
    assert max(hooks.checkpoints) == result.steps


def test_time_budget_ends_the_run_with_final_metrics() -> None:
    hooks = MemoryHooks()
    result = run(hooks, config(max_steps=10_000, time_budget_s=1e-6))
    assert result.stopped_reason == "time_budget"
    assert result.steps < 10_000
    assert result.final_val_loss is not None and result.test_loss is not None
    assert max(hooks.checkpoints) == result.steps


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_is_weights_only_and_exports_to_safetensors() -> None:
    hooks = MemoryHooks()
    run(hooks, config(max_steps=4), spec("gpt"))
    payload = hooks.checkpoints[4]
    raw = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "data_generators", "train_config"):
        assert key in raw
    assert raw["tokenizer_hash"] == "tok-a" and raw["step"] == 4
    assert len(raw["data_generators"]) == 1 and len(raw["rng"]) == 1

    model, info = load_for_inference(payload, "cpu")
    assert info["tokenizer_hash"] == "tok-a" and info["architecture"] == "gpt"
    served = model_from_safetensors(export_safetensors(payload))
    idx = torch.arange(16).view(1, 16) % VOCAB
    torch.testing.assert_close(served(idx)[0], model(idx)[0])


def test_unpack_refuses_pickled_code() -> None:
    buffer = io.BytesIO()
    torch.save({"format": 1, "model": {}, "evil": Path("/tmp")}, buffer)
    with pytest.raises(ValueError, match="weights-only"):
        unpack(buffer.getvalue())


def test_unpack_refuses_a_newer_format() -> None:
    payload = dump_checkpoint(
        {"format": 2, "model": {}, "step": 1, "tokenizer_hash": "t", "model_spec": {}}
    )
    with pytest.raises(ValueError, match="format 2 is not supported"):
        unpack(payload)


def test_pruning_rule_imports_without_torch() -> None:
    """The hooks that prune (SQL, files) may run where torch is not loaded."""
    code = "import sys, cadenza.train.checkpoint; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rng_state_round_trip() -> None:
    state = capture_rng_state()
    first = (torch.rand(3), np.random.rand(3), __import__("random").random())
    restore_rng_state(state)
    second = (torch.rand(3), np.random.rand(3), __import__("random").random())
    torch.testing.assert_close(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_checkpoints_to_prune_keeps_newest_and_protected() -> None:
    assert checkpoints_to_prune([1, 2, 3, 4, 5], keep_last_n=2, protect=[1]) == [2, 3]
    assert checkpoints_to_prune([7], keep_last_n=3) == []
    with pytest.raises(ValueError, match="keep_last_n"):
        checkpoints_to_prune([1], keep_last_n=0)


def test_fine_tune_needs_the_same_tokenizer() -> None:
    source = MemoryHooks()
    trained = run(source, config(max_steps=40, lr=3e-3))
    payload = source.checkpoints[40]
    with pytest.raises(ValueError, match="tokenizer"):
        run(MemoryHooks(), config(max_steps=2), init_from=payload, tokenizer_hash="tok-b")
    with pytest.raises(ValueError, match="tokenizer"):
        run(MemoryHooks(start_from=payload), config(max_steps=50), tokenizer_hash="tok-b")

    tuned = run(MemoryHooks(), config(max_steps=1, lr=1e-6), init_from=payload)
    scratch = run(MemoryHooks(), config(max_steps=1, lr=1e-6))
    assert tuned.final_val_loss is not None and scratch.final_val_loss is not None
    assert tuned.final_val_loss == pytest.approx(trained.final_val_loss, rel=0.05)
    assert tuned.final_val_loss < 0.7 * scratch.final_val_loss


def test_fine_tune_refuses_a_different_model_shape() -> None:
    source = MemoryHooks()
    run(source, config(max_steps=1))
    with pytest.raises(ValueError, match="do not fit"):
        run(
            MemoryHooks(),
            config(max_steps=1),
            spec("gpt", n_embd=32),
            init_from=source.checkpoints[1],
        )


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": 3.0}, "lr"),
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "fp8"}, "precision"),
        ({"betas": (0.9, 1.5)}, "betas"),
        ({"grad_accum_steps": 0}, "grad_accum_steps"),
        ({"min_lr_ratio": 2.0}, "min_lr_ratio"),
        ({"warmup_steps": 50, "max_steps": 10}, "warmup_steps"),
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"time_budget_s": 0}, "time_budget_s"),
    ],
)
def test_bad_config_values_name_the_field(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        TrainConfig(**values)
    assert field in str(info.value)


def test_from_preset_uses_train_presets_and_block_size() -> None:
    cfg = TrainConfig.from_preset("gpt", "tiny")
    assert cfg.lr == 1e-3 and cfg.warmup_steps == 20 and cfg.seq_len == 128
    short = TrainConfig.from_preset("gpt", "tiny", {"max_steps": 5})
    assert short.warmup_steps == 5  # the preset warm-up is clamped to the shorter run
    assert TrainConfig.from_preset("gru", "keras-chord").grad_clip is None
    with pytest.raises(ValueError, match="preset"):
        TrainConfig.from_preset("gpt", "huge")


def test_lr_schedule_warms_up_then_decays_to_the_floor() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr_ratio=0.1, warmup_steps=10, max_steps=110)
    assert cfg.lr_at(0) < cfg.lr_at(5) < cfg.lr_at(9) <= cfg.lr
    assert cfg.lr_at(10) == pytest.approx(1e-3)
    assert cfg.lr_at(60) == pytest.approx(0.55e-3)
    assert cfg.lr_at(110) == pytest.approx(1e-4)


def test_short_or_bad_data_is_refused_with_a_fix() -> None:
    data = pattern_data()
    with pytest.raises(ValueError, match="add more data.*lower seq_len"):
        run(MemoryHooks(), data={"train": data["train"], "val": data["val"][:16]})
    with pytest.raises(ValueError, match="vocab_size"):
        run(MemoryHooks(), data={"train": data["train"] + VOCAB, "val": data["val"]})
    with pytest.raises(ValueError, match="seq_len"):
        run(MemoryHooks(), config(seq_len=256))  # tiny block_size is 128
    with pytest.raises(ValueError, match="fp16"):
        run(MemoryHooks(), config(precision="fp16"))


# ----------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ddp_rank(rank: int, out_dir: str) -> None:
    """One gloo rank: the same train() call as single-process, joined via init_distributed()."""
    from cadenza.train.distributed import cleanup_distributed, init_distributed

    torch.set_num_threads(1)
    info = init_distributed()
    assert info.world_size == 2 and info.rank == rank and info.device == "cpu"
    hooks = MemoryHooks()
    try:
        result = run(hooks, config(max_steps=6, eval_interval=3, grad_accum_steps=1))
    finally:
        cleanup_distributed()
    record = {
        "losses": hooks.train_losses(),
        "saved": sorted(hooks.checkpoints),
        "metric_rows": len(hooks.metrics),
        "val": result.final_val_loss,
    }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    if hooks.checkpoints:
        Path(out_dir, f"rank{rank}.pt").write_bytes(hooks.checkpoints[max(hooks.checkpoints)])


def _rank_env(rank: int, port: int) -> dict[str, str]:
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "WORLD_SIZE": "2",
        "LOCAL_RANK": str(rank),
    }


def _spawned_rank(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(_rank_env(rank, port))
    _ddp_rank(rank, out_dir)


def test_ddp_on_two_gloo_ranks_matches_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch.multiprocessing as mp

    # Rank 1 is a spawned process; rank 0 runs here (torch is already imported and warm,
    # which halves the start-up cost of the test on a 2-core machine).
    port = _free_port()
    child = mp.get_context("spawn").Process(
        target=_spawned_rank, args=(1, port, str(tmp_path)), daemon=True
    )
    child.start()
    for key, value in _rank_env(0, port).items():
        monkeypatch.setenv(key, value)
    try:
        _ddp_rank(0, str(tmp_path))
    finally:
        child.join(timeout=300)
        if child.is_alive():
            child.kill()
            child.join()
    for key in _rank_env(0, port):
        monkeypatch.delenv(key)
    assert child.exitcode == 0
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank1["metric_rows"] == 0 and rank1["saved"] == []  # only rank 0 writes
    assert rank0["saved"] == [3, 6]

    single = MemoryHooks()
    # Same global batch: 2 ranks x 4 rows x 1 accumulation == 1 rank x 4 rows x 2 accumulation.
    result = run(single, config(max_steps=6, eval_interval=3, grad_accum_steps=2))
    expected = single.train_losses()
    np.testing.assert_allclose(
        [rank0["losses"][str(s)] for s in range(1, 7)], [expected[s] for s in range(1, 7)],
        rtol=1e-4,
    )  # fmt: skip
    assert rank0["val"] == pytest.approx(result.final_val_loss, rel=1e-4)
    ddp_state = unpack((tmp_path / "rank0.pt").read_bytes())
    assert len(ddp_state["rng"]) == 2 and len(ddp_state["data_generators"]) == 2
    single_state = unpack(single.checkpoints[6])["model"]
    for name, tensor in single_state.items():
        torch.testing.assert_close(ddp_state["model"][name], tensor, rtol=1e-4, atol=1e-5)

    # The DDP checkpoint resumes in one process with the same 2 micro-batch slots per step.
    longer = config(max_steps=8, eval_interval=3, grad_accum_steps=2)
    from_ddp = MemoryHooks(start_from=(tmp_path / "rank0.pt").read_bytes())
    from_single = MemoryHooks(start_from=single.checkpoints[6])
    assert run(from_ddp, longer).resumed_from_step == 6
    run(from_single, longer)
    np.testing.assert_allclose(
        [from_ddp.train_losses()[s] for s in (7, 8)],
        [from_single.train_losses()[s] for s in (7, 8)],
        rtol=1e-4,
    )


# ----------------------------------------------------------------------------- run_local


def test_run_local_trains_resumes_and_prunes(tmp_path: Path) -> None:
    from cadenza.train.run_local import main

    data = pattern_data()
    npz = tmp_path / "corpus.npz"
    np.savez(npz, train_data=data["train"], val_data=data["val"], vocab_size=np.int64(VOCAB))
    out = tmp_path / "run"
    common = [
        "--data", str(npz), "--architecture", "lstm", "--preset", "tiny", "--out", str(out),
        "--set", "seq_len=16", "--set", "batch_size=4", "--set", "checkpoint_interval=2",
        "--set", "keep_last_n=2", "--set", "eval_interval=3", "--set", "log_interval=1",
        "--device", "cpu",
    ]  # fmt: skip
    first = main([*common, "--set", "max_steps=6"])
    assert first.steps == 6 and first.resumed_from_step is None
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-000000004.pt",
        "step-000000006.pt",
    ]
    second = main([*common, "--set", "max_steps=8", "--export-safetensors"])
    assert second.resumed_from_step == 6 and second.steps == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 9))
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 8 and result["stopped_reason"] == "completed"
    assert (out / "best.pt").exists() and (out / "model.safetensors").exists()
    model_from_safetensors((out / "model.safetensors").read_bytes())


# ----------------------------------------------------------------------------- torch.compile


def test_compile_plan_compiles_transformers_only_when_the_run_is_long_enough() -> None:
    from cadenza.train.step import (
        AUTO_COMPILE_CPU_BF16_MIN_STEPS,
        AUTO_COMPILE_MIN_STEPS,
        compile_plan,
    )

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    auto = config(max_steps=12)
    assert auto.compile == "auto"
    enough = AUTO_COMPILE_MIN_STEPS["cuda"]
    assert compile_plan(auto, "gpt", cuda, enough).compile
    assert not compile_plan(auto, "gpt", cuda, enough - 1).compile  # a short job stays eager
    assert not compile_plan(auto, "gru", cuda, 10**6).compile
    assert not compile_plan(auto, "gpt", torch.device("mps"), 10**6).compile
    assert not compile_plan(auto, "music-transformer", cuda, enough).compile  # not measured
    assert not compile_plan(auto, "gpt", cpu, 10**6).compile  # measured: never pays on CPU
    # ... in fp32; in bf16 (native bf16 matmuls) it pays on a long run, as on CUDA
    bf16 = config(compile="auto", precision="bf16")
    assert compile_plan(bf16, "gpt", cpu, AUTO_COMPILE_CPU_BF16_MIN_STEPS).compile
    assert not compile_plan(bf16, "gpt", cpu, AUTO_COMPILE_CPU_BF16_MIN_STEPS - 1).compile
    assert not compile_plan(bf16, "music-transformer", cpu, 10**6).compile
    assert compile_plan(config(compile=True), "gru", cpu, 1).compile  # true is obeyed
    assert not compile_plan(config(compile=False), "gpt", cuda, 10**6).compile
    with pytest.raises(ValidationError, match="compile"):
        config(compile="sometimes")


def test_compiled_training_matches_eager_and_saves_plain_checkpoints() -> None:
    # Bounded: one compile of the 2-layer tiny model at seq 16 (tens of seconds on 2 cores).
    cfg = config("music-transformer", max_steps=3, compile=True)
    eager_hooks, compiled_hooks = MemoryHooks(), MemoryHooks()
    run(eager_hooks, cfg.model_copy(update={"compile": False}), spec("music-transformer"))
    result = run(compiled_hooks, cfg, spec("music-transformer"))
    assert result.compiled and result.compile_s > 0
    assert any("compiled in" in message for _, message in compiled_hooks.progress)
    eager, compiled = eager_hooks.train_losses(), compiled_hooks.train_losses()
    np.testing.assert_allclose([compiled[s] for s in (1, 2, 3)], [eager[s] for s in (1, 2, 3)],
                               rtol=1e-4)  # fmt: skip
    state = unpack(compiled_hooks.checkpoints[3])["model"]
    assert not any(name.startswith("_orig_mod.") for name in state)
    load_for_inference(compiled_hooks.checkpoints[3])


def test_a_failed_compile_trains_eagerly_instead_of_failing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(model: Any, **_: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: no working C++ compiler found")

        return call

    eager_hooks, hooks = MemoryHooks(), MemoryHooks()
    run(eager_hooks, config(max_steps=4, compile=False))
    monkeypatch.setattr(torch, "compile", broken)
    result = run(hooks, config(max_steps=4, compile=True))
    assert not result.compiled and result.steps == 4
    assert any("training eagerly" in message for _, message in hooks.progress)
    # The failed attempt consumed no RNG and left no gradients: the run is the eager one.
    assert hooks.train_losses() == eager_hooks.train_losses()
