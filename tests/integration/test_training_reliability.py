"""Training survives a killed worker and stops promptly on cancel, through a real worker."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from cadenza.client import Client
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def corpus(c: Client, chorales: list[Path]) -> dict[str, Any]:
    ds = c.create_dataset("reliability")
    c.upload(ds["id"], chorales[:4])
    job = c.wait(c.create_corpus(ds["id"], tokenizer="REMI")["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return dict(c.get(f"/v1/corpora/{job['corpus_id']}"))


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_worker_resumes_from_checkpoint(stack: Stack, chorales: list[Path]) -> None:
    c = Client(stack.api_url, stack.api_key)
    cor = corpus(c, chorales)
    train = {
        "max_steps": 160,
        "checkpoint_interval": 20,
        "eval_interval": 40,
        "batch_size": 4,
        "seq_len": 64,
        "keep_last_n": 2,
    }
    job = c.create_model(cor["id"], architecture="gpt", preset="tiny", train=train)
    model_id = job["model_id"]
    wait_for(
        lambda: any(ck["step"] >= 40 for ck in c.get(f"/v1/models/{model_id}")["checkpoints"]),
        300,
        "a checkpoint at step ≥ 40",
    )
    stack.kill_workers()
    killed_at = max(ck["step"] for ck in c.get(f"/v1/models/{model_id}")["checkpoints"])
    assert c.job(job["id"])["state"] == "running"  # nobody told the database
    stack.start_worker()
    final = c.wait(job["id"], timeout=600)
    assert final["state"] == "succeeded", final
    assert final["attempts"] == 2
    model = c.get(f"/v1/models/{model_id}")
    assert model["state"] == "ready"
    resumed = model["summary"]["resumed_from_step"]
    assert resumed is not None and resumed >= 40 and resumed <= killed_at + 20
    assert model["summary"]["steps"] == 160
    assert len(model["checkpoints"]) <= 3  # keep-last-2 plus the best one


def test_cancel_training_keeps_last_checkpoint(stack: Stack, chorales: list[Path]) -> None:
    c = Client(stack.api_url, stack.api_key)
    cor = corpus(c, chorales)
    job = c.create_model(
        cor["id"],
        architecture="lstm",
        preset="tiny",
        train={"max_steps": 100_000, "checkpoint_interval": 1000, "batch_size": 4, "seq_len": 64},
    )
    wait_for(lambda: c.job(job["id"])["progress"] > 0, 300, "training to start")
    c.cancel(job["id"])
    t0 = time.monotonic()
    final = c.wait(job["id"], timeout=120)
    assert final["state"] == "cancelled", final
    assert time.monotonic() - t0 < 30
    model = c.get(f"/v1/models/{job['model_id']}")
    assert model["state"] == "cancelled"
    assert model["checkpoints"], "cancel must keep the last checkpoint"
    # The kept checkpoint can be sampled.
    sample = c.wait(c.sample(model["id"], max_new_tokens=16, seed=1)["id"], timeout=300)
    assert sample["state"] == "succeeded", sample
