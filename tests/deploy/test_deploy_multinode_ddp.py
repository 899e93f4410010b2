"""Two "nodes" of one training run, started exactly as `cadenza k8s train-job --nodes 2`
renders them: the container's `sh -c` script with the manifest's env, JOB_COMPLETION_INDEX 0
and 1 (what the Indexed Job sets), and the c10d rendezvous at 127.0.0.1 on a free port instead
of pod 0's DNS name. CPU/gloo; the job is real (API on the embedded default, real corpus)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza_api.app import create_app

from .helpers import render_train_job

NODES = 2


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="k8s")
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    yield c


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node_env(container: dict[str, object], base: dict[str, str], index: int) -> dict[str, str]:
    env = {e["name"]: e["value"] for e in container["env"]}  # type: ignore[attr-defined]
    return base | env | {"JOB_COMPLETION_INDEX": str(index)}


def test_one_job_on_two_nodes(client: TestClient, tmp_path: Path, chorales: list[Path]) -> None:
    ds = client.post("/v1/datasets", json={"name": "k8s"}).json()["id"]
    files = [("files", (p.name, p.read_bytes())) for p in chorales[:3]]
    assert client.post(f"/v1/datasets/{ds}/files", files=files).status_code == 201
    tok = client.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"}).json()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
    venv_bin = str(Path(sys.executable).parent)  # torchrun, as on the image's PATH
    base |= {
        "CADENZA_DATA_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PATH": f"{venv_bin}:{base.get('PATH', '/usr/bin:/bin')}",
    }
    cli = [sys.executable, "-m", "cadenza.cli", "train-job", tok["id"]]
    assert subprocess.run(cli, env=base, capture_output=True, timeout=120).returncode == 0
    tok = client.get(f"/v1/jobs/{tok['id']}").json()
    assert tok["state"] == "succeeded", tok

    train = {"max_steps": 6, "eval_interval": 3, "batch_size": 2, "seq_len": 32}
    body = {"corpus_id": tok["corpus_id"], "architecture": "gpt", "preset": "tiny", "train": train}
    job = client.post("/v1/models", json=body).json()

    docs = render_train_job(job["id"], "--gpus", "1", "--nodes", str(NODES))
    (manifest,) = [d for d in docs if d["kind"] == "Job"]
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    rdzv = {"RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(_free_port())}
    procs = [
        subprocess.Popen(
            [*container["command"], *container["args"]],
            env=_node_env(container, base, index) | rdzv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(NODES)
    ]
    outputs = []
    deadline = time.monotonic() + 150
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    # --nnodes=2 (min = max): the rendezvous completes only with both nodes, so both exiting
    # 0 means both trained in one world.
    for index, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {index}:\n{out[-4000:]}"

    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "succeeded" and final["attempts"] == 1, final
    model = client.get(f"/v1/models/{job['model_id']}").json()
    assert model["state"] == "ready" and model["summary"]["steps"] == train["max_steps"]
    # One writer (global rank 0): one set of checkpoints and metrics, no step twice.
    ckpt_steps = [c["step"] for c in model["checkpoints"]]
    assert ckpt_steps and len(ckpt_steps) == len(set(ckpt_steps))
    steps = [(m["step"], m["split"]) for m in model["metrics"]]
    assert len(steps) == len(set(steps))
