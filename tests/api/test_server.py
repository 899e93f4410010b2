"""`python -m cadenza_api` with several processes: each binds the port itself (SO_REUSEPORT),
and one that dies takes the server down with its code, the others stopped, for whatever
supervises the server to restart it whole (no half-capacity server left running)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cadenza.launch.processes import free_port, http_status
from cadenza_api import server as api_server


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _api_children(pid: int) -> list[int]:
    """The spawned API processes (not multiprocessing's resource tracker)."""
    found = []
    for child in _children(pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:
            found.append(child)
    return found


def test_two_processes_serve_and_one_dying_stops_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = os.environ | {"CADENZA_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "cadenza_api", "--port", str(port), "--processes", "2"]
    server = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    try:
        deadline = time.monotonic() + 90
        while http_status(f"http://127.0.0.1:{port}/healthz", timeout=2.0) != 200:
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.3)
        apis = _api_children(server.pid)
        assert len(apis) == 2
        os.kill(apis[0], signal.SIGKILL)
        assert server.wait(timeout=60) == 128 + signal.SIGKILL
        assert not Path(f"/proc/{apis[1]}").exists() or _children(server.pid) == []
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_an_api_process_freezes_its_start_up_objects_and_collects_less_often() -> None:
    before = gc.get_threshold()
    try:
        api_server.tune_gc()
        assert gc.get_threshold() == api_server.GC_THRESHOLDS
        assert gc.get_freeze_count() > 10_000  # torch-free, but FastAPI, SQLAlchemy, pydantic
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
