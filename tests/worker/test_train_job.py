"""`cadenza train-job` and `torchrun -m cadenza.jobs.train_job`: the Kubernetes training path.

The API queues the jobs (no Celery worker runs here); the jobs are then run the way a k8s Job
runs them, including a 2-process DDP run (gloo on CPU) of one training job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza_api.app import create_app


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
    return base | {"CADENZA_DATA_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="k8s")
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    yield c


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def test_training_job_runs_under_torchrun(
    client: TestClient, env: dict[str, str], chorales: list[Path]
) -> None:
    ds = client.post("/v1/datasets", json={"name": "k8s"}).json()["id"]
    files = [("files", (p.name, p.read_bytes())) for p in chorales[:3]]
    assert client.post(f"/v1/datasets/{ds}/files", files=files).status_code == 201
    tok = client.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"}).json()
    cli = [sys.executable, "-m", "cadenza.cli", "train-job"]
    assert run([*cli, tok["id"]], env).returncode == 0
    tok = client.get(f"/v1/jobs/{tok['id']}").json()
    assert tok["state"] == "succeeded", tok

    train = {"max_steps": 12, "eval_interval": 6, "batch_size": 2, "seq_len": 32}
    job = client.post(
        "/v1/models",
        json={
            "corpus_id": tok["corpus_id"],
            "architecture": "gpt",
            "preset": "tiny",
            "train": train,
        },
    ).json()
    torchrun = Path(sys.executable).with_name("torchrun")
    res = run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "cadenza.jobs.train_job",
            job["id"],
        ],
        env,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "succeeded" and final["attempts"] == 1, final
    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert model["state"] == "ready" and model["summary"]["steps"] == 12
    # The summary reports training throughput; 12 steps are too few for compile "auto".
    assert model["summary"]["tokens_per_s"] > 0 and model["summary"]["compiled"] is False
    assert model["checkpoints"]
    # One writer: every metric row is rank 0's (no duplicated steps).
    steps = [(m["step"], m["split"]) for m in model["metrics"]]
    assert len(steps) == len(set(steps))

    # A second run of the same job does nothing: the claim refuses it.
    again = run([*cli, job["id"]], env)
    assert again.returncode == 0 and "not claimed" in again.stderr + again.stdout
    assert client.get(f"/v1/jobs/{job['id']}").json()["attempts"] == 1
