"""Budgets, quotas and rate limits through the running API: each attack from the reliability
issue gets its 4xx naming the limit, and nothing is queued (no job row, no model row).

The figures (status, code, message) are printed for RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from cadenza.client import Client
from cadenza.launch.stack import create_key
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration


def _client(stack: Stack, owner: str, *options: str) -> httpx.Client:
    key = create_key(stack.env, owner, *options)
    return httpx.Client(
        base_url=stack.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def _refused(r: httpx.Response, status: int, code: str, *names: str) -> dict[str, Any]:
    print(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    assert r.status_code == status, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["code"] == code, error
    for name in names:
        assert name in error["message"], error
    return error


def _jobs(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/v1/jobs").json()["jobs"])


def _dataset(http: httpx.Client, paths: list[Path]) -> str:
    ds: str = http.post("/v1/datasets", json={"name": "limits"}).json()["id"]
    files = [("files", (p.name, p.read_bytes(), "audio/midi")) for p in paths]
    r = http.post(f"/v1/datasets/{ds}/files", files=files)
    assert r.status_code == 201, r.text
    return ds


def test_budgets_refuse_before_anything_is_queued(stack: Stack, chorales: list[Path]) -> None:
    owner = f"limits-{stack.data_dir.name}"
    http = _client(stack, owner)
    ds = _dataset(http, chorales[:3])
    corpus_job = http.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"}).json()
    corpus_id = finished(_as_client(http), corpus_job)["corpus_id"]
    before = _jobs(http)

    # The model: 64 layers × 8192 wide (~51 B parameters), batch 4096, 10 M steps.
    huge = {
        "corpus_id": corpus_id,
        "architecture": "gpt",
        "preset": None,
        "config": {"n_layer": 64, "n_embd": 8192, "n_head": 64},
        "train": {"batch_size": 4096, "max_steps": 10_000_000},
    }
    error = _refused(http.post("/v1/models", json=huge), 422, "budget_exceeded", "max_model_params")
    assert "51," in error["message"]  # the parameter count, 51,5xx,xxx,xxx
    tiny = {"corpus_id": corpus_id, "architecture": "music-transformer", "preset": "tiny"}
    too_long = {**tiny, "train": {"batch_size": 4096, "max_steps": 10_000_000}}
    _refused(http.post("/v1/models", json=too_long), 422, "budget_exceeded", "max_train_tokens")
    wide = {
        "corpus_id": corpus_id,
        "architecture": "gpt",
        "preset": None,
        "config": {"n_layer": 8, "n_embd": 1024, "n_head": 16},
        "train": {"batch_size": 4096, "seq_len": 1024, "max_steps": 10, "warmup_steps": 1},
    }
    _refused(http.post("/v1/models", json=wide), 422, "budget_exceeded", "max_train_memory_bytes")
    forever = {**tiny, "train": {"time_budget_s": 30 * 24 * 3600}}
    _refused(
        http.post("/v1/models", json=forever), 422, "budget_exceeded", "train_time_budget_max_s"
    )
    for offsets, code in (
        ([1, -1] * 2500, "invalid_request"),
        (list(range(1, 21)), "invalid_augment"),
    ):
        augment = {"pitch_offsets": offsets}
        r = http.post(
            "/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI", "augment": augment}
        )
        _refused(r, 422, code, "pitch_offsets")
    combos = {
        "octaves": 4,
        "pitch_offsets": list(range(1, 17)),
        "velocity_offsets": [-8, 8],
        "duration_offsets": [0.5],
        "all_combinations": True,
    }
    r = http.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI", "augment": combos})
    _refused(r, 422, "invalid_augment", "copies")
    r = http.post(
        "/v1/corpora",
        json={"dataset_id": ds, "tokenizer": "REMI", "tokenizer_config": {"x": [0] * 5000}},
    )
    _refused(r, 422, "invalid_request", "tokenizer_config.x")
    assert _jobs(http) == before and http.get("/v1/models").json() == []

    # A training request within budget gets the default time budget written on its model.
    ok = {**tiny, "train": {"max_steps": 2, "eval_interval": 2, "batch_size": 2, "seq_len": 32}}
    job = http.post("/v1/models", json=ok).json()
    model = http.get(f"/v1/models/{job['model_id']}").json()
    assert model["train_config"]["time_budget_s"] == 24 * 3600
    final = _as_client(http).wait(job["id"], timeout=600)
    assert final["state"] == "succeeded", final["error"]

    # Per-owner overrides (admin): a storage quota and an upload rate of one.
    admin = _client(stack, f"limits-admin-{stack.data_dir.name}", "--scopes", "admin")
    put = {"overrides": {"max_stored_bytes": 10, "rate_uploads_burst": 1}}
    r = admin.put(f"/v1/admin/owners/{owner}/limits", json=put)
    assert r.status_code == 200, r.text
    assert r.json()["limits"]["max_stored_bytes"] == 10
    bad = admin.put(f"/v1/admin/owners/{owner}/limits", json={"overrides": {"nope": 1}})
    _refused(bad, 422, "unknown_limit", "nope")
    files = [("files", ("b.mid", chorales[4].read_bytes(), "audio/midi"))]
    _refused(
        http.post(f"/v1/datasets/{ds}/files", files=files),
        409,
        "quota_exceeded",
        "max_stored_bytes",
    )
    mine = http.get("/v1/limits").json()
    assert mine["overrides"] == put["overrides"] and mine["usage"]["stored_bytes"] > 10
    admin.put(f"/v1/admin/owners/{owner}/limits", json={"overrides": {"rate_uploads_burst": 1}})
    r = http.post(f"/v1/datasets/{ds}/files", files=files)
    if r.status_code == 201:  # the refused upload above did not spend its token
        r = http.post(f"/v1/datasets/{ds}/files", files=files)
    _refused(r, 429, "rate_limited", "rate_uploads_burst")
    assert int(r.headers["Retry-After"]) >= 1
    assert http.get(f"/v1/datasets/{ds}").json()["file_count"] <= 4


def test_a_burst_of_60_job_submissions_meets_429(stack: Stack, chorales: list[Path]) -> None:
    """Default settings: the burst is cut at `rate_jobs_burst`, each refusal with Retry-After."""
    http = _client(stack, f"burst-{stack.data_dir.name}")
    ds = _dataset(http, chorales[:1])
    statuses: list[int] = []
    retry_after: list[str] = []
    for _ in range(60):
        r = http.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "TSD"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry_after.append(r.headers["Retry-After"])
            last = r
    print({s: statuses.count(s) for s in set(statuses)}, "first 429:", last.text)
    assert set(statuses) == {202, 429} and retry_after and all(int(s) >= 1 for s in retry_after)
    assert statuses.index(429) <= 25 and "rate_jobs_burst" in last.json()["error"]["message"]
    jobs = _jobs(http)
    assert len(jobs) == statuses.count(202)  # a refused submission left no job row
    for job in jobs:  # spare the worker
        if job["state"] in ("queued", "running"):
            http.post(f"/v1/jobs/{job['id']}/cancel")


def _as_client(http: httpx.Client) -> Client:
    client = Client(str(http.base_url), None)
    client.http.headers["Authorization"] = http.headers["Authorization"]
    return client
