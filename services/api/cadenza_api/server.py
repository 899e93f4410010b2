"""The API server (`python -m cadenza_api`): uvicorn on the app factory in `api_processes`
processes on one port.

Why a module of its own rather than uvicorn's command line: the process count is a setting
(`CADENZA_API_PROCESSES`), read here from the server's own environment, the same way each
process then reads it to size its share of the database slots (`cadenza_api.deps.Database`).
`cadenza.launch.stack.api_command` is the one place that starts it.

Why not `uvicorn --workers N`: its processes share one listening socket, and whichever wakes
first accepts, so long-lived keep-alive connections pile onto one process (64 wrk connections
split 54 / 10 between two processes, and the busy one set the p99). Here each process binds
its own socket with SO_REUSEPORT, and the kernel spreads new connections across them by a hash
of their addresses. If one process exits, the others are stopped and the server exits with
its code, like a one-process server that dies: what supervises it (`cadenza serve`,
Kubernetes) restarts it whole.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from typing import Any

import uvicorn

from cadenza.config import get_settings

APP = "cadenza_api.app:create_app"
GC_THRESHOLDS = (20_000, 50, 1000)
"""Allocations between young collections, and the ratios of the older ones (Python's default:
700, 10, 10). Why: a poll (GET /v1/jobs/{id}) allocates a few thousand objects (ORM row,
Pydantic model, JSON, ASGI scopes), so at the default a young collection ran every request or
two and a full one every few hundred, each scanning every object the app imported (the
routes, models and OpenAPI schema: hundreds of thousands). Measured with `bench/api_load.py
--workloads poll` on the embedded default, 2 processes on 2 cores, the same run: p99 79-84 ms
before, 41-45 ms with these thresholds and `gc.freeze()` after the app loads, 0.74 -> 0.63-0.69
ms of CPU per request (BENCHMARKS.md, "the API under load"). Cycles are still collected,
less often; what the app holds at start-up is never scanned again."""
# Seconds a process gets to finish its requests after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cadenza_api", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--processes", type=int, default=None, help="default: api_processes")
    args = ap.parse_args(argv)
    if args.processes is not None:
        if args.processes < 1:
            ap.error("--processes must be at least 1")
        # The processes size their database slots by it (they read the same setting).
        os.environ["CADENZA_API_PROCESSES"] = str(args.processes)
        get_settings.cache_clear()
    processes = get_settings().api_processes
    if processes == 1:  # in this process (no supervisor): its pid is the server's
        uvicorn.run(APP, factory=True, host=args.host, port=args.port, log_level=args.log_level)
        return
    sys.exit(_supervise(processes, args.host, args.port, args.log_level))


def _serve(host: str, port: int, log_level: str) -> None:
    """One API process: its own SO_REUSEPORT socket on the shared port, uvicorn on it."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    config = uvicorn.Config(APP, factory=True, host=host, port=port, log_level=log_level)
    config.load()  # import and build the app now, so that tune_gc freezes it
    tune_gc()
    uvicorn.Server(config).run(sockets=[sock])


def tune_gc() -> None:
    """Move everything alive now out of the collector's sight and collect less often
    (`GC_THRESHOLDS`): an API process's start-up objects live as long as it does."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _supervise(n: int, host: str, port: int, log_level: str) -> int:
    """Run `n` API processes until a signal stops them or one of them exits; its exit code."""
    ctx = multiprocessing.get_context("spawn")
    children: list[BaseProcess] = []
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in range(n):
        child = ctx.Process(target=_serve, args=(host, port, log_level), daemon=False)
        child.start()
        children.append(child)
    code = 0
    while not stopping:
        ended = [c for c in children if not c.is_alive()]
        if ended:
            exitcode = ended[0].exitcode or 0
            code = exitcode if exitcode >= 0 else 128 - exitcode  # killed by a signal: 128 + it
            print(f"API process {ended[0].pid} exited with {code}: stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()
    return code


if __name__ == "__main__":
    main()
