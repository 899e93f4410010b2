"""A small "zygote" process that forks one resource-limited child per MIDI file to parse.

Why not ``multiprocessing``: its forkserver and spawn methods re-import the caller's ``__main__``
in every child (a script without a ``__main__`` guard runs again; a CLI entry point pays its
imports per file), and plain ``fork`` from a threaded API process can deadlock the child. The
zygote is started once per process with ``python -c`` (no ``__main__`` to re-run), imports
symusic, and then only forks: one file costs a fork plus a socket round trip (a few ms), not an
interpreter start-up (~150 ms with symusic).

Protocol on a Unix socket, one connection per file:
  client → ``>I`` length + JSON limits (plus ``"mode"``: ``"inspect"``, the default, measures
  the file against the limits; ``"parse"`` only parses it), ``>Q`` length + file bytes
  child  → ``>I`` child pid (so the client can kill it), then ``>I`` length + JSON result.
The zygote exits when its stdin reaches EOF, i.e. when the process that started it is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from typing import Any

from cadenza.midi.limits import MidiLimits, MidiRejected, parse_smf, summarize

_CHILD_CPU_MARGIN_S = 1  # CPU rlimit = ceil(timeout) + margin; the wall timer should fire first

#: Test hook: when this variable is "crash" or "hang" in the zygote's environment, a child given
#: a file that contains :data:`FAULT_MARKER` segfaults or hangs instead of parsing, so tests can
#: show that a parser crash costs one file, never the process that asked.
FAULT_ENV = "CADENZA_TEST_MIDI_PARSER_FAULT"
FAULT_MARKER = b"CADENZA-PARSER-FAULT"


def _injected_fault(smf: bytes) -> None:
    fault = os.environ.get(FAULT_ENV)
    if not fault or FAULT_MARKER not in smf:
        return
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "hang":
        while True:
            signal.pause()


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    """Read exactly ``n`` bytes or raise EOFError (peer closed early)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# zygote side


def _vm_size_bytes() -> int:
    """This process's current address-space size (Linux), 0 when /proc is unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _apply_limits(memory_bytes: int, cpu_s: int) -> None:
    """Cap address space at (what is mapped now + memory_bytes) and CPU time; no core dumps."""
    import resource

    def lower(kind: int, soft: int) -> None:
        _, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(kind, (soft, hard))

    lower(resource.RLIMIT_AS, _vm_size_bytes() + memory_bytes)
    lower(resource.RLIMIT_CPU, cpu_s)
    lower(resource.RLIMIT_CORE, 0)


def _child_serve(conn: socket.socket) -> None:
    """Body of a forked child: read one request, parse under limits, answer, never return."""
    (n,) = struct.unpack(">I", _recv_exact(conn, 4))
    options = json.loads(_recv_exact(conn, n))
    mode = options.pop("mode", "inspect")
    limits = MidiLimits(**options)
    (n,) = struct.unpack(">Q", _recv_exact(conn, 8))
    smf = _recv_exact(conn, n)
    conn.sendall(struct.pack(">I", os.getpid()))
    result: dict[str, Any]
    try:
        _apply_limits(limits.memory_bytes, int(limits.timeout_s + 0.999) + _CHILD_CPU_MARGIN_S)
        _injected_fault(smf)
        score = parse_smf(smf)
        result = {"ok": summarize(score, limits).to_dict() if mode == "inspect" else None}
    except MidiRejected as e:
        result = {"code": e.code, "message": e.message}
    except MemoryError:
        result = {"code": "too_complex", "message": "Parsing the file ran out of memory."}
    except Exception as e:  # noqa: BLE001 - any other failure is the file's, report it as such
        result = {"code": "unparseable", "message": f"The MIDI parser failed ({type(e).__name__})."}
    body = json.dumps(result).encode()
    conn.sendall(struct.pack(">I", len(body)) + body)


def zygote_main(path: str) -> None:
    """Serve forever on ``path``; exit when stdin closes (the owner process ended)."""
    import symusic  # noqa: F401 - imported once here so every forked child has it warm

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps children, no zombies
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(128)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # Nobody reads the pipe after "ready": a child printing to it could fill it and block.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is srv:
                conn, _ = srv.accept()
                pid = os.fork()
                if pid == 0:
                    code = 0
                    try:
                        sel.close()
                        srv.close()
                        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                        _child_serve(conn)
                    except BaseException:  # noqa: BLE001 - a child must never fall back into the loop
                        code = 1
                    finally:
                        os._exit(code)
                conn.close()
            elif not os.read(sys.stdin.fileno(), 4096):
                return


# --------------------------------------------------------------------------------------------
# client side


class SandboxCrashed(Exception):
    """The child ended without an answer (killed by a signal, e.g. a segfault or a CPU limit)."""


class SandboxTimeout(Exception):
    """The child did not answer in time and was killed."""


class Zygote:
    """Owner-side handle: starts the zygote lazily and sends it one file per connection."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._path: str | None = None

    def _start(self) -> str:
        self._dir = tempfile.mkdtemp(prefix="cadenza-zygote-")
        path = os.path.join(self._dir, "s")
        code = "import sys; from cadenza.midi._sandbox import zygote_main; zygote_main(sys.argv[1])"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line != b"ready\n":
            self.close()
            raise RuntimeError("the MIDI sandbox process failed to start")
        self._path = path
        return path

    def path(self) -> str:
        """Socket path of a running zygote, starting (or restarting) it when needed."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._path is None:
                self._close_locked()
                return self._start()
            return self._path

    def close(self) -> None:
        """Stop the zygote (its children finish on their own) and delete its socket folder."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._proc is not None:
            if self._proc.stdin is not None:
                self._proc.stdin.close()
            try:
                self._proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout is not None:
                self._proc.stdout.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._proc = self._dir = self._path = None

    def forget(self) -> None:
        """After fork: the child process must not stop or share its parent's zygote."""
        self._lock = threading.Lock()
        self._proc = None
        self._dir = self._path = None

    def run(self, limits: dict[str, Any], data: bytes, timeout_s: float) -> dict[str, Any]:
        """Parse ``data`` in a fresh child; return its JSON answer or raise Sandbox*."""
        for attempt in (0, 1):
            path = self.path()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                if attempt:
                    raise
                self.close()  # a dead zygote: start a new one and retry once
                continue
            try:
                return self._exchange(sock, limits, data, timeout_s)
            finally:
                sock.close()
        raise AssertionError("unreachable")

    @staticmethod
    def _exchange(
        sock: socket.socket, limits: dict[str, Any], data: bytes, timeout_s: float
    ) -> dict[str, Any]:
        head = json.dumps(limits).encode()
        sock.settimeout(max(timeout_s, 1.0) + 5.0)  # sending/forking is never the slow part
        sock.sendall(struct.pack(">I", len(head)) + head + struct.pack(">Q", len(data)))
        sock.sendall(data)
        try:
            (pid,) = struct.unpack(">I", _recv_exact(sock, 4))
        except EOFError as e:
            raise SandboxCrashed("the sandbox child ended before starting") from e
        sock.settimeout(timeout_s)
        try:
            (n,) = struct.unpack(">I", _recv_exact(sock, 4))
            answer: dict[str, Any] = json.loads(_recv_exact(sock, n))
            return answer
        except TimeoutError as e:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            raise SandboxTimeout from e
        except EOFError as e:
            raise SandboxCrashed("the sandbox child ended without an answer") from e


_zygote = Zygote()
atexit.register(_zygote.close)
os.register_at_fork(after_in_child=_zygote.forget)


def zygote() -> Zygote:
    """The process-wide zygote handle."""
    return _zygote
