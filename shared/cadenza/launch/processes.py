"""Ports, readiness waits and process groups for the processes Cadenza's tools start.

Only the standard library is used, so the CLI, the test suite and the benchmarks can import
this without pulling anything into their processes. Everything binds to 127.0.0.1 unless told
otherwise: nothing started for a test or a benchmark is reachable from outside the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Container, Iterable, Iterator
from pathlib import Path

LOCALHOST = "127.0.0.1"


class ServiceUnavailableError(RuntimeError):
    """A service could not be reached or started; the message says why and what to try."""


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is free on `host` right now.

    The kernel picks it (bind to port 0), which avoids collisions between concurrent test runs
    far better than fixed ports. There is an unavoidable window between closing the probe
    socket and the caller binding it; callers that start servers should fail loudly (they do:
    the process exits and its log is reported) rather than silently talk to someone else.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """True when nothing is bound to `port` on `host` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on `host:port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP connection to `host:port` succeeds; raise `TimeoutError` otherwise.

    A listening socket is only the first sign of life (PostgreSQL accepts TCP while still
    starting up), so service helpers follow this with a protocol-level check.
    """
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port, timeout=min(0.5, max(0.05, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted TCP connections on {host}:{port} in {timeout}s")
        time.sleep(0.05)


def wait_until_healthy(
    check: Callable[[], str | None], timeout: float, *, interval: float = 0.05
) -> str | None:
    """Call `check` (None = healthy, else why not) until it is healthy or `timeout` passes.

    Returns None when healthy, else the last reason, so the caller can raise an error that
    says what it started and what the service last said.
    """
    deadline = time.monotonic() + timeout
    reason = check()
    while reason is not None and time.monotonic() < deadline:
        time.sleep(interval)
        reason = check()
    return reason


def http_status(url: str, timeout: float) -> int | None:
    """Status of one GET to `url`, or None when no HTTP answer came (refused, reset, timeout).

    Proxies from the environment are bypassed on purpose: a local server must never be
    reached through (or be confused with) a corporate proxy.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_http(url: str, timeout: float = 10.0, *, accept: Container[int] | None = None) -> int:
    """Block until `url` answers an HTTP GET and return the status code.

    By default any status counts as "up" (an S3 root answers 403 to an unsigned request, which
    still proves the server parses HTTP); pass `accept` (e.g. `{200}` or `range(200, 300)`) to
    wait for a specific answer instead. Raises `TimeoutError` with the last status seen.
    """
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        remaining = deadline - time.monotonic()
        last = http_status(url, timeout=max(0.2, min(2.0, remaining)))
        if last is not None and (accept is None or last in accept):
            return last
        if time.monotonic() >= deadline:
            seen = "no HTTP answer" if last is None else f"last status {last}"
            raise TimeoutError(f"{url} did not answer as expected within {timeout}s ({seen})")
        time.sleep(0.05)


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the whole group (graceful, removes its sockets), SIGKILL if it lingers.

    The group, not just the process: a worker's job may have started children (the sandboxed
    MIDI parser, tokenizer pools) that must not outlive it.
    """
    stop_process_groups([proc], timeout)


def stop_process_groups(procs: Iterable[subprocess.Popen[bytes]], timeout: float) -> None:
    """`stop_process_group` for several children at once: all get SIGTERM first, so they shut
    down in parallel within one `timeout`, and each gets the signal once (a second SIGTERM
    makes some servers log a second shutdown)."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Serialize service start-up across processes on this machine (parallel test runs).

    Two runs that both find Redis down would otherwise both start it and one would fail on the
    port; with the lock the second one re-checks and finds it up.
    """
    path = Path(tempfile.gettempdir()) / f"cadenza-test-{name}.lock"
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def privileged(cmd: list[str]) -> list[str]:
    """Prefix `sudo -n` when not root (CI users), since cluster control needs the owner's rights."""
    if os.geteuid() != 0 and shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    return cmd
