"""Run the real Cadenza stack (uvicorn API + Celery worker processes) for a test.

Used by the end-to-end tests on both the embedded default (SQLite, local folder, filesystem
broker) and production-like services (PostgreSQL, Redis, SeaweedFS S3). The processes are
started by `cadenza.launch.stack`, the same code behind `cadenza serve`.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadenza.launch.processes import free_port
from cadenza.launch.stack import Launched, create_key, launch, migrate

if TYPE_CHECKING:
    from cadenza.client import Client


@dataclass
class Stack:
    api_url: str
    api_key: str
    env: dict[str, str]
    data_dir: Path
    logs: Path
    launched: Launched

    def other_key(self, owner: str) -> str:
        """A key of another owner (for isolation tests)."""
        return create_key(self.env, owner)

    def start_worker(self) -> None:
        self.launched.start_worker()

    def kill_workers(self) -> None:
        """SIGKILL every worker process (the way a node dies: no cleanup, no ack)."""
        for name, w in self.launched.procs.items():
            if name.startswith("worker"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGKILL)
                w.wait()


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
    migrate(env)
    key = create_key(env, "alice")
    with launch(env, port=free_port(), logs=logs) as launched:
        yield Stack(launched.api_url, key, env, data_dir, logs, launched)


def print_logs(stack: Stack) -> None:
    """Dump the service logs (called when a test fails, to see why)."""
    for log in sorted(stack.logs.glob("*.log")):
        print(f"===== {log.name} =====")
        print(log.read_text(errors="replace")[-8000:])


def finished(client: Client, job: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
    """Wait for `job` through the API and assert it succeeded (the job row says why if not)."""
    final = client.wait(job["id"], timeout=timeout)
    assert final["state"] == "succeeded", final
    return final
