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
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.services import _stop_process_group, free_port, wait_for_http


@dataclass
class Stack:
    api_url: str
    api_key: str
    env: dict[str, str]
    data_dir: Path
    logs: Path
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def other_key(self, owner: str) -> str:
        """A key of another owner (for isolation tests)."""
        return _create_key(self.env, owner)

    def start_worker(self) -> None:
        self.workers.append(_start_worker(self.env, self.logs / f"worker{len(self.workers)}.log"))

    def kill_workers(self) -> None:
        """SIGKILL every worker process (the way a node dies: no cleanup, no ack)."""
        for w in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, signal.SIGKILL)
            w.wait()


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
    stack = Stack(f"http://127.0.0.1:{port}", key, env, data_dir, logs)
    stack.start_worker()
    try:
        wait_for_http(f"{stack.api_url}/healthz", timeout=60)
        yield stack
    finally:
        _stop_process_group(api, 20)
        for w in stack.workers:
            _stop_process_group(w, 20)


def print_logs(stack: Stack) -> None:
    """Dump the service logs (called when a test fails, to see why)."""
    for log in sorted(stack.logs.glob("*.log")):
        print(f"===== {log.name} =====")
        print(log.read_text(errors="replace")[-8000:])
