"""Run the real Cadenza stack (uvicorn API + Celery worker processes) for a test.

Used by the end-to-end tests on both the embedded default (SQLite, local folder, filesystem
broker) and production-like services (PostgreSQL, Redis, SeaweedFS S3).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.services import free_port, wait_for_http


@dataclass(frozen=True)
class Stack:
    api_url: str
    api_key: str
    env: dict[str, str]
    data_dir: Path
    worker: subprocess.Popen[bytes]
    logs: Path

    def other_key(self, owner: str) -> str:
        """A key of another owner (for isolation tests)."""
        return _create_key(self.env, owner)

    def restart_worker(self) -> Stack:
        """Start a fresh worker (after a test killed this one)."""
        worker = _start_worker(self.env, self.logs / "worker2.log")
        return Stack(self.api_url, self.api_key, self.env, self.data_dir, worker, self.logs)


def _create_key(env: dict[str, str], owner: str) -> str:
    res = subprocess.run(
        [sys.executable, "-m", "cadenza.cli", "keys", "create", "--owner", owner],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return res.stdout.strip().splitlines()[-1]


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The same worker command users run (`cadenza worker`), in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "cadenza.cli", "worker", "--queues", "cpu,gpu"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextlib.contextmanager
def run_stack(data_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Migrate, make a key, start API + worker; yield; stop them (logs under data_dir)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")} | {
        "CADENZA_DATA_DIR": str(data_dir),
        "CADENZA_JOB_LEASE_SECONDS": "6",
        "CADENZA_RECONCILE_INTERVAL_SECONDS": "2",
        "CADENZA_TORCH_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    subprocess.run([sys.executable, "-m", "cadenza.cli", "migrate"], env=env, check=True)
    key = _create_key(env, "alice")
    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "cadenza_api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=(logs / "api.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    worker = _start_worker(env, logs / "worker.log")
    stack = Stack(f"http://127.0.0.1:{port}", key, env, data_dir, worker, logs)
    try:
        wait_for_http(f"{stack.api_url}/healthz", timeout=60)
        yield stack
    finally:
        _stop(api)
        _stop(worker)


def print_logs(stack: Stack) -> None:
    """Dump the service logs (called when a test fails, to see why)."""
    for log in sorted(stack.logs.glob("*.log")):
        print(f"===== {log.name} =====")
        print(log.read_text(errors="replace")[-8000:])
