"""Faults a deployment meets, injected into real processes: nothing lost, nothing failed.

A worker drained by SIGTERM mid-training, a PostgreSQL outage during training and API
requests, a Redis restart with jobs queued, a stopped (SIGSTOP) worker, and a worker killed
under `cadenza serve`. PostgreSQL and Redis are private instances on free ports, since the
machine's shared servers serve other test runs at the same time and must never be stopped.
Figures (fault, recovery seconds) are printed with the prefix FAULT for the reliability doc.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from cadenza.client import ApiFailure, Client
from cadenza.launch.processes import LOCALHOST, free_port, http_status, wait_for_port
from cadenza.launch.stack import Launched, cadenza_command, create_key, migrate

pytestmark = pytest.mark.integration

TRAIN = {
    "max_steps": 10_000_000,
    "batch_size": 4,
    "seq_len": 64,
    "eval_interval": 10_000_000,
    "log_interval": 5,
}


def _as_postgres(cmd: list[str]) -> list[str]:
    """initdb and pg_ctl refuse to run as root; run them as the `postgres` user then."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class PrivatePostgres:
    """A throw-away PostgreSQL cluster this test may stop and start at will."""

    root: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{LOCALHOST}:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses={LOCALHOST} -c fsync=off"
        ctl = ["pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "pg.log")]
        subprocess.run(_as_postgres([*ctl, "-o", opts, "-w", "start"]), check=True)

    def stop(self) -> None:
        ctl = ["pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(ctl), check=True, capture_output=True)


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    if not shutil.which("initdb"):
        pytest.skip("initdb is not installed")
    root = Path(tempfile.mkdtemp(prefix="cadenza-faults-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    pg = PrivatePostgres(root, free_port())
    initdb = ["initdb", "-D", str(root / "data"), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True)
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class PrivateRedis:
    """A redis-server with an append-only file (as deployed), restartable on its port."""

    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{LOCALHOST}:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", LOCALHOST, "--dir"]
        argv += [str(self.root), "--appendonly", "yes", "--save", "", "--logfile", "redis.log"]
        self.proc = subprocess.Popen(argv, start_new_session=True)
        wait_for_port(LOCALHOST, self.port, timeout=15)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # Redis flushes its append-only file on SIGTERM
            self.proc.wait(timeout=30)


@dataclass
class Faults:
    launched: Launched
    client: Client
    pg: PrivatePostgres
    redis: PrivateRedis
    corpus_id: str
    dataset_id: str
    heartbeats: Path

    def start_worker(self, queue: str) -> subprocess.Popen[bytes]:
        name = f"worker-{queue}-{time.monotonic_ns()}"
        hb = {"CADENZA_WORKER_HEARTBEAT_FILE": str(self.heartbeats / f"{queue}.alive")}
        return self.launched.start_worker(queue, name=name, extra_env=hb)

    def worker(self, queue: str) -> subprocess.Popen[bytes]:
        live = [p for n, p in self.launched.procs.items() if n.startswith(f"worker-{queue}")]
        return next(p for p in reversed(live) if p.poll() is None)

    def alive(self, queue: str, max_age: float) -> bool:
        argv = cadenza_command("worker-alive", "--max-age", str(max_age), "--file")
        argv.append(str(self.heartbeats / f"{queue}.alive"))
        return subprocess.run(argv, capture_output=True).returncode == 0

    def job_row(self, job_id: str) -> dict[str, Any]:
        engine = create_engine(self.pg.url)
        try:
            with engine.connect() as conn:
                sql = "SELECT state, attempts, interruptions, error FROM jobs WHERE id = :id"
                return dict(conn.execute(text(sql), {"id": job_id}).mappings().one())
        finally:
            engine.dispose()

    def train(self, seconds: float, checkpoint_interval: int) -> dict[str, Any]:
        """A training job that ends by its time budget, however fast this machine trains."""
        train = TRAIN | {"time_budget_s": seconds, "checkpoint_interval": checkpoint_interval}
        return self.client.create_model(
            self.corpus_id, architecture="lstm", preset="tiny", train=train
        )


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiFailure, httpx.HTTPError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def figure(fault: str, **values: Any) -> None:
    print(f"FAULT {fault}: " + ", ".join(f"{k}={v}" for k, v in values.items()))


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory, chorales: list[Path]) -> Iterator[Faults]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    work = tmp_path_factory.mktemp("faults")
    with private_postgres() as pg:
        redis = PrivateRedis(work, free_port())
        redis.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")} | {
            "CADENZA_DATA_DIR": str(work / "data"),
            "CADENZA_DATABASE_URL": pg.url,
            "CADENZA_BROKER_URL": redis.url,
            # Longer than the PostgreSQL outage below: a lease is for dead workers only.
            "CADENZA_JOB_LEASE_SECONDS": "60",
            "CADENZA_RECONCILE_INTERVAL_SECONDS": "2",
            "CADENZA_WORKER_HEARTBEAT_INTERVAL_SECONDS": "1",
            "CADENZA_TORCH_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
        launched = Launched(env, logs=work / "logs")
        try:
            migrate(env)
            key = create_key(env, "alice")
            launched.start_api(port=free_port())
            launched.wait_ready()
            f = Faults(launched, Client(launched.api_url, key), pg, redis, "", "", work)
            f.start_worker("cpu")
            f.start_worker("gpu")
            ds = f.client.create_dataset("faults")
            f.client.upload(ds["id"], chorales[:4])
            job = f.client.wait(
                f.client.create_corpus(ds["id"], tokenizer="REMI")["id"], timeout=300
            )
            assert job["state"] == "succeeded", job
            f.corpus_id, f.dataset_id = job["corpus_id"], ds["id"]
            yield f
        finally:
            launched.stop()
            redis.stop()
            for log in sorted((work / "logs").glob("*.log")):
                text_ = log.read_text(errors="replace")
                if "Traceback" in text_:
                    print(f"===== {log.name} =====\n{text_[-6000:]}")


def test_sigterm_drains_training_and_liveness_follows_the_process(faults: Faults) -> None:
    """SIGTERM mid-training: checkpoint, requeue without an attempt, another worker finishes.

    On the way, the heartbeat probe: alive during the long job, stale while SIGSTOPped.
    """
    c = faults.client
    job = faults.train(seconds=16, checkpoint_interval=10_000_000)  # only the drain saves
    wait_for(lambda: c.job(job["id"])["progress"] > 0, 120, "training to start")
    time.sleep(4)  # longer than --max-age: a long job keeps the worker alive
    assert faults.alive("gpu", max_age=3)
    worker = faults.worker("gpu")
    os.killpg(worker.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: not faults.alive("gpu", max_age=3), 20, "a stale heartbeat")
    finally:
        os.killpg(worker.pid, signal.SIGCONT)
    wait_for(lambda: faults.alive("gpu", max_age=3), 20, "a fresh heartbeat")

    t0 = time.monotonic()
    worker.send_signal(signal.SIGTERM)  # what Kubernetes and docker stop send
    assert worker.wait(timeout=60) == 0
    drained_s = time.monotonic() - t0
    row = faults.job_row(job["id"])
    assert (row["state"], row["attempts"], row["interruptions"]) == ("queued", 0, 1), row
    model = c.get(f"/v1/models/{job['model_id']}")
    assert model["checkpoints"], "the drain saved no checkpoint"
    saved = max(ck["step"] for ck in model["checkpoints"])

    faults.start_worker("gpu")
    final = c.wait(job["id"], timeout=300)
    assert final["state"] == "succeeded", final
    assert final["attempts"] == 1 and final["error"] is None
    model = c.get(f"/v1/models/{job['model_id']}")
    assert model["summary"]["resumed_from_step"] == saved
    figure("sigterm-drain", injected=1, lost=0, failed=0, drain_to_exit_s=round(drained_s, 1))


def test_postgres_outage_neither_loses_nor_fails_a_job(faults: Faults) -> None:
    """PostgreSQL stops for 30 s mid-training: the API answers 503 and recovers by itself."""
    c = faults.client
    job = faults.train(seconds=8, checkpoint_interval=100)
    wait_for(
        lambda: c.get(f"/v1/models/{job['model_id']}")["checkpoints"], 180, "a first checkpoint"
    )
    faults.pg.stop()
    t_down = time.monotonic()
    answers: list[httpx.Response] = []
    try:
        while time.monotonic() - t_down < 30:
            with contextlib.suppress(httpx.HTTPError):
                answers.append(c.http.get(f"/v1/jobs/{job['id']}", timeout=15))
            time.sleep(1)
    finally:
        faults.pg.start()
    t_up = time.monotonic()
    assert answers, "the API did not answer during the outage"
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable" and r.headers["Retry-After"]
        assert "SELECT" not in r.text and "postgres" not in r.text.lower()
    wait_for(lambda: c.http.get(f"/v1/jobs/{job['id']}").status_code == 200, 60, "the API")
    api_s = time.monotonic() - t_up
    final = c.wait(job["id"], timeout=300)
    job_s = time.monotonic() - t_up
    row = faults.job_row(job["id"])
    assert final["state"] == "succeeded", (final, row)
    assert final["attempts"] == 1, row  # the outage used up no attempt
    figure(
        "postgres-outage-30s",
        injected=1,
        lost=0,
        failed=0,
        api_503s=len(answers),
        interruptions=row["interruptions"],
        api_recovery_s=round(api_s, 1),
        job_finished_after_s=round(job_s, 1),
    )


def test_redis_restart_with_jobs_queued_loses_none(faults: Faults) -> None:
    """Jobs wait in Redis while no worker runs; Redis restarts; every job still runs."""
    c = faults.client
    worker = faults.worker("cpu")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    jobs = [c.create_corpus(faults.dataset_id, tokenizer="REMI")["id"] for _ in range(3)]
    t0 = time.monotonic()
    faults.redis.stop()
    faults.redis.start()
    restart_s = time.monotonic() - t0
    faults.start_worker("cpu")
    finals = [c.wait(j, timeout=240) for j in jobs]
    assert [f["state"] for f in finals] == ["succeeded"] * 3, finals
    assert all(f["attempts"] == 1 for f in finals), finals
    figure("redis-restart", injected=1, queued=3, lost=0, failed=0, restart_s=round(restart_s, 1))


def _children(pid: int) -> dict[int, str]:
    """Direct children of `pid` and their command lines."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_text().replace("\0", " ")
    return found


def test_serve_restarts_a_killed_worker_and_the_api_stays_up(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
    env |= {"CADENZA_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [*cadenza_command("serve", "--port", str(port))],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://{LOCALHOST}:{port}/healthz"
    try:
        wait_for(lambda: http_status(url, 2) == 200, 120, "cadenza serve")

        def workers() -> list[int]:
            return [p for p, cmd in _children(serve.pid).items() if "celery" in cmd]

        first = wait_for(lambda: len(workers()) == 2 and workers(), 60, "two workers")
        os.killpg(first[0], signal.SIGKILL)  # the OOM killer, a segfault
        t0 = time.monotonic()
        statuses: list[int | None] = []

        def replaced() -> bool:
            statuses.append(http_status(url, 5))
            now = workers()
            return len(now) == 2 and first[0] not in now

        wait_for(replaced, 60, "the killed worker to be restarted")
        restart_s = time.monotonic() - t0
        assert statuses and all(s == 200 for s in statuses), statuses
        assert serve.poll() is None
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
        assert not _children(serve.pid)
        figure(
            "serve-worker-sigkill",
            injected=1,
            restarted=1,
            api_down=0,
            restart_s=round(restart_s, 1),
        )
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        log.close()
        print((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
