"""One training job on two "nodes", started exactly as `cadenza k8s train-job --nodes 2`
renders it: the manifest comes from the real command (which finds the model's training job
through the real API), and each node runs the container's `sh -c` script with the manifest's
env, JOB_COMPLETION_INDEX 0 and 1 (what the Indexed Job sets), and the c10d rendezvous at
127.0.0.1 on a free port instead of pod 0's DNS name. CPU/gloo, on the embedded default; the
API and a CPU worker (tokenize) run as in production, no GPU worker takes the job."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from cadenza.client import Client
from cadenza.config import Settings
from cadenza.db.models import Job
from cadenza.db.session import session_scope
from cadenza.launch.processes import free_port
from cadenza.launch.stack import create_key, launch, migrate

NODES = 2
BIN = Path(sys.executable).parent  # cadenza and torchrun, as on the image's PATH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_nodes(container: dict[str, Any], env: dict[str, str]) -> list[subprocess.Popen[str]]:
    """The container's command once per node, as the Indexed Job's pods run it."""
    manifest_env = {e["name"]: e["value"] for e in container["env"]}
    rdzv = {"RDZV_HOST": "127.0.0.1", "RDZV_PORT": str(_free_port())}
    return [
        subprocess.Popen(
            [*container["command"], *container["args"]],
            env=env | manifest_env | rdzv | {"JOB_COMPLETION_INDEX": str(index)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for index in range(NODES)
    ]


def _wait_nodes(procs: list[subprocess.Popen[str]], timeout: float = 150) -> list[tuple[int, str]]:
    """(exit code, output) of each node; every process group is gone afterwards."""
    results = []
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((p.returncode, out))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return results


def _node_of_rank0(procs: list[subprocess.Popen[str]], data_dir: Path, job_id: str) -> int:
    """Which node's torchrun started the process that claimed the job (global rank 0: the
    c10d rendezvous does not say which node that is)."""
    with session_scope(Settings(data_dir=data_dir).resolved_database_url) as s:
        worker = s.get(Job, job_id).worker  # type: ignore[union-attr]
    pid = int(str(worker).rsplit(":", 1)[1])
    ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    return next(i for i, p in enumerate(procs) if p.pid == ppid)


def test_one_job_on_two_nodes(tmp_path: Path, chorales: list[Path]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")} | {
        "CADENZA_DATA_DIR": str(tmp_path),
        "CADENZA_TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    migrate(env)
    key = create_key(env, "ops")
    port = free_port()
    with (
        # A GPU worker runs too: the job is held for the cluster Job (`cluster_job`), so that
        # worker must never take it, before the drain or after it.
        launch(env, port=port, queues=("cpu", "gpu"), logs=tmp_path / "logs") as stack,
        Client(stack.api_url, key) as api,
    ):
        ds = api.create_dataset("k8s")
        api.upload(ds["id"], chorales[:3])
        tok = api.wait(api.create_corpus(ds["id"], tokenizer="REMI")["id"], timeout=120)
        assert tok["state"] == "succeeded", tok
        train = {"max_steps": 120, "eval_interval": 40, "batch_size": 2, "seq_len": 32}
        job = api.create_model(
            tok["corpus_id"], architecture="gpt", preset="tiny", train=train, cluster_job=True
        )
        assert job["queue"] == "cluster", job
        model_id = api.job(job["id"])["model_id"]
        assert model_id and api.job(job["id"])["state"] == "queued"

        # The operator's command, by model id: the API says which job trains it.
        def k8s(ident: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(BIN / "cadenza"), "k8s", "train-job", ident, "--nodes", str(NODES)],
                env=env
                | {"CADENZA_API_URL": stack.api_url, "CADENZA_API_KEY": key, "COLUMNS": "200"},
                capture_output=True,
                text=True,
                timeout=60,
            )

        render = k8s(model_id)
        assert render.returncode == 0, render.stderr
        assert k8s(job["id"]).stdout == render.stdout  # the job's own id: the same run
        refused = k8s(tok["id"])  # a tokenize job
        assert refused.returncode == 2 and "is a tokenize job, not a training job" in refused.stderr
        docs = [d for d in yaml.safe_load_all(render.stdout) if d]
        (manifest,) = [d for d in docs if d["kind"] == "Job"]
        assert manifest["metadata"]["labels"]["cadenza.dev/job-id"] == job["id"]
        container = manifest["spec"]["template"]["spec"]["containers"][0]

        # A drain of the pod whose torchrun does NOT hold rank 0 (the writer) once the run
        # trains: its ranks' stop flag reaches rank 0 through the loop's all-reduce, so the run
        # still ends with a checkpoint, the job back to queued with no attempt used, and every
        # node exits non-zero, so the Indexed Job would retry all its pods. (A drain of rank
        # 0's own node takes a single worker's path: tests/integration/test_faults_lifecycle.)
        procs = _start_nodes(container, env)
        deadline = time.monotonic() + 120
        while (j := api.job(job["id"]))["progress"] <= 0:
            assert j["state"] in ("queued", "running"), j
            assert all(p.poll() is None for p in procs) and time.monotonic() < deadline
            time.sleep(0.1)
        procs[1 - _node_of_rank0(procs, tmp_path, job["id"])].send_signal(signal.SIGTERM)
        for index, (code, out) in enumerate(_wait_nodes(procs)):
            assert code != 0, f"node {index} exited 0 after the drain:\n{out[-4000:]}"
        drained = api.job(job["id"])
        assert drained["state"] == "queued" and drained["attempts"] == 0, drained
        checkpoints = api.get(f"/v1/models/{model_id}")["checkpoints"]
        assert checkpoints and max(c["step"] for c in checkpoints) < train["max_steps"]

        # The retried pods meet again and resume. --nnodes=2 (min = max): the rendezvous
        # completes only with both nodes, so both exiting 0 means both trained in one world.
        for index, (code, out) in enumerate(_wait_nodes(_start_nodes(container, env))):
            assert code == 0, f"node {index}:\n{out[-4000:]}"

        final = api.job(job["id"])
        assert final["state"] == "succeeded" and final["attempts"] == 1, final
        model = api.get(f"/v1/models/{model_id}")
    assert model["state"] == "ready" and model["summary"]["steps"] == train["max_steps"]
    # One writer (global rank 0): one set of checkpoints and metrics across both runs, no step
    # twice.
    ckpt_steps = [c["step"] for c in model["checkpoints"]]
    assert ckpt_steps and len(ckpt_steps) == len(set(ckpt_steps))
    steps = [(m["step"], m["split"]) for m in model["metrics"]]
    assert len(steps) == len(set(steps))
