"""A worker's liveness file and its drain flag: the two signals a worker process gives off.

Liveness: with the solo pool a worker's main thread runs the job, so nothing answers
`celery inspect ping` for as long as a job runs, and a probe built on it kills every long job.
Instead the worker touches a file (`CADENZA_WORKER_HEARTBEAT_FILE`): the job's lease keeper
does it on every round while a job runs, an idle ticker does it while none does. A worker
that is stopped (SIGSTOP), frozen or dead stops touching it, and `cadenza worker-alive`
reports the file stale.

Drain: on SIGTERM (Celery's warm shutdown, or a Kubernetes training Job being evicted) the
process sets `DRAIN`; the running job sees it through `JobContext.draining()`, a training job
writes a checkpoint and the job goes back to the queue without using up an attempt.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

DRAIN = threading.Event()
_running = threading.Event()  # a job runs in this process (its lease keeper beats)


def beat(path: Path | None) -> None:
    """Mark this process alive now (creates the file, else updates its mtime)."""
    if path is None:
        return
    try:
        path.touch()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def age(path: Path) -> float | None:
    """Seconds since the last beat, or None when there is no heartbeat file."""
    try:
        return max(0.0, time.time() - os.stat(path).st_mtime)
    except FileNotFoundError:
        return None


def job_started() -> None:
    _running.set()


def job_ended() -> None:
    _running.clear()


class IdleTicker(threading.Thread):
    """Beats every `interval` seconds while no job runs (the lease keeper beats otherwise)."""

    def __init__(self, path: Path, interval: float) -> None:
        super().__init__(name="cadenza-heartbeat", daemon=True)
        self.path = path
        self.interval = interval
        self.stop = threading.Event()

    def run(self) -> None:
        beat(self.path)
        while not self.stop.wait(self.interval):
            if not _running.is_set():
                # A full or read-only disk shows up as a stale file, which is what it is.
                with contextlib.suppress(OSError):
                    beat(self.path)
