"""API throughput under concurrency: does the server keep answering, and as fast, at any load?

Starts its own API process (uvicorn, no worker: submitted jobs stay queued) on the embedded
default (SQLite + filesystem broker) and, with `--backends embedded,postgres`, on a fresh
PostgreSQL database + an unused Redis db on this machine. For each workload it runs `wrk` at
4, 12, 24, 64 and 256 connections, then 4 again two seconds later (the "after overload" row
catches a server that stays wedged), and prints a markdown table: requests/s, p50, p99,
non-2xx and socket errors, and the API process's CPU milliseconds per request (a figure
that other load on a shared machine disturbs far less than requests/s).

Workloads: `GET /v1/datasets/{id}` (by id), `GET /v1/jobs` (list), `POST /v1/corpora` (job
submit), and `sse`: N idle SSE subscribers on a queued job (N = the level) held open while
`GET /v1/datasets/{id}` runs at 4 connections; the row says how many subscribers got 200.

`poll` is the target workload of issue 16: 64 connections polling one job
(`GET /v1/jobs/{id}`) for `--poll-seconds` (20), and beside them a second wrk submitting jobs
(`POST /v1/corpora`) on 2 connections, each waiting 100 ms between its requests (about 20
submits/s, what users do while they poll), whose p99 is the submit latency under load. The
job rate limits and the active-job cap are lifted for this server so that every submit is
a real one (a 429 would be a cheap answer, not a submit).

    .venv/bin/python bench/api_load.py [--backends embedded,postgres] [--seconds 2]
        [--workloads get,list,submit,sse,poll] [--poll-seconds 20] [--processes N]
        [--code /path/to/another/checkout]

CADENZA_DB_* and CADENZA_API_* variables pass through to the server (to compare pool sizes);
`--processes N` sets CADENZA_API_PROCESSES (API processes on one socket; unset: the default).
`--code` runs the server from another checkout's `shared/` and `services/api/` (to measure
the code before a change); `--code /old/checkout,.` measures both, one after the other, in
one run (a checkout from before `python -m cadenza_api` runs as one uvicorn process). Needs
`wrk` (Debian package). Loopback only; bounded: every level runs `--seconds` (the poll
workload `--poll-seconds`), wrk's own timeout is 2 s per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import secrets
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cadenza.launch.postgres import fresh_postgres_database
from cadenza.launch.processes import free_port
from cadenza.launch.redis import fresh_redis_url
from cadenza.launch.stack import api_command, create_key, migrate

HOST = "127.0.0.1"
LEVELS = (4, 12, 24, 64, 256)
ROOT = Path(__file__).resolve().parent.parent

# wrk prints one machine-readable line at the end (status errors are non-2xx/3xx answers).
WRK_LUA = """
{setup}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %.3f %.3f\\n", summary.requests, e.status,
    e.connect + e.read + e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


@dataclass
class Row:
    workload: str
    level: str
    rps: float
    p50_ms: float
    p99_ms: float
    non2xx: int
    socket_errors: str  # 'socket errors + timeouts (over 2 s)'
    cpu_ms_per_req: float
    note: str = ""


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _tiny_midi() -> bytes:
    """A valid one-track MIDI file of eight quarter notes (no MIDI library needed)."""
    events = b""
    for i in range(8):
        events += bytes([0x00, 0x90, 60 + i, 80, 0x83, 0x60, 0x80, 60 + i, 0])
    events += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480)
    return header + b"MTrk" + struct.pack(">I", len(events)) + events


def _http(method: str, url: str, key: str, body: bytes | None = None, ctype: str = "") -> dict:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if ctype:
        req.add_header("Content-Type", ctype)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _multipart(name: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = secrets.token_hex(8)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: audio/midi\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


class Server:
    """One API process on a free loopback port, with a key, a dataset and a queued job."""

    def __init__(self, env: dict[str, str], workdir: Path, code: Path = ROOT) -> None:
        self.env = env
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        migrate(env)
        self.key = create_key(env, "bench")
        self.log = (workdir / "api.log").open("ab")
        argv = api_command(host=HOST, port=self.port, log_level="warning")
        if not (code / "services" / "api" / "cadenza_api" / "__main__.py").exists():
            # A checkout from before `python -m cadenza_api`: uvicorn itself, one process.
            argv = [sys.executable, "-m", "uvicorn", "cadenza_api.app:create_app", "--factory"]
            argv += ["--host", HOST, "--port", str(self.port), "--log-level", "warning"]
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_up()
        self.dataset = _http(
            "POST", f"{self.url}/v1/datasets", self.key, b'{"name":"b"}', "application/json"
        )["id"]
        body, ctype = _multipart("files", "a.mid", _tiny_midi())
        _http("POST", f"{self.url}/v1/datasets/{self.dataset}/files", self.key, body, ctype)
        self.submit_body = json.dumps({"dataset_id": self.dataset, "tokenizer": "REMI"})
        self.job = _http(
            "POST",
            f"{self.url}/v1/corpora",
            self.key,
            self.submit_body.encode(),
            "application/json",
        )["id"]

    def _wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}; see {self.log.name}")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{self.url}/healthz", timeout=1).close()
                return
            time.sleep(0.2)
        raise TimeoutError(f"API did not answer on {self.url} within {timeout}s")

    def cpu_seconds(self) -> float:
        """CPU seconds of the API: the server process and its children (several processes)."""
        return sum(_cpu_seconds(pid) for pid in _tree(self.proc.pid))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited
        return []


def _cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def _tree(root: int) -> list[int]:
    """`root` and its descendants (uvicorn's worker processes, their spawn helpers)."""
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (fields := _stat(int(d.name))):
            parents.setdefault(int(fields[1]), []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += parents.get(pid, [])
    return out


def _wrk(
    server: Server, path: str, conns: int, seconds: int, setup: str, threads: int = 2
) -> tuple[list[float], int, str]:
    """(requests/s, p50 ms, p99 ms), non-2xx count, 'socket errors + timeouts', for one run."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA.format(setup=setup))
    try:
        cmd = [f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--timeout", "2s", "-s", f.name]
        cmd = ["wrk", *cmd]
        cmd += ["-H", f"Authorization: Bearer {server.key}", server.url + path]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    finally:
        os.unlink(f.name)
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+) ([\d.]+) ([\d.]+)", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output: {out[-500:]}")
    n, status, sock, tmo, p50, p99 = m.groups()
    return [int(n) / seconds, float(p50), float(p99)], int(status), f"{sock} + {tmo}"


def _measure(
    server: Server, workload: str, level: str, conns: int, seconds: int, path: str, setup: str
) -> Row:
    before = server.cpu_seconds()
    (rps, p50, p99), non2xx, sock = _wrk(server, path, conns, seconds, setup)
    done = rps * seconds
    cpu = (server.cpu_seconds() - before) * 1000 / done if done else float("nan")
    return Row(workload, level, rps, p50, p99, non2xx, sock, cpu, "" if rps else "STALLED")


async def _open_subscribers(
    server: Server, job: str, n: int
) -> tuple[int, list[asyncio.StreamWriter]]:
    """Open `n` SSE streams; return how many answered 200, and the open writers."""
    request = (
        f"GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: {HOST}\r\n"
        f"Authorization: Bearer {server.key}\r\nAccept: text/event-stream\r\n\r\n"
    ).encode()

    async def one() -> tuple[bool, asyncio.StreamWriter | None]:
        try:
            reader, writer = await asyncio.open_connection(HOST, server.port)
            writer.write(request)
            line = await asyncio.wait_for(reader.readline(), timeout=15)
            return b" 200 " in line, writer
        except (TimeoutError, OSError):
            return False, None

    results = await asyncio.gather(*(one() for _ in range(n)))
    return sum(ok for ok, _ in results), [w for _, w in results if w is not None]


def _sse_level(server: Server, n: int, seconds: int, get_path: str) -> Row:
    loop = asyncio.new_event_loop()
    try:
        ok, writers = loop.run_until_complete(_open_subscribers(server, server.job, n))
        row = _measure(server, "sse + GET by id", f"{n} subscribers", 4, seconds, get_path, "")
        row.note = f"{ok}/{n} streams 200"
        for w in writers:
            w.close()
        return row
    finally:
        loop.close()


POLLERS = 64
SUBMITTERS = 2
SUBMIT_GAP_MS = 100


def _poll_level(server: Server, seconds: int, post: str) -> list[Row]:
    """64 connections on `GET /v1/jobs/{id}` with a paced submitter beside them, same window."""
    before = server.cpu_seconds()
    submits: list[tuple[list[float], int, int]] = []
    paced = f"{post}\ndelay = function() return {SUBMIT_GAP_MS} end"
    submitter = threading.Thread(
        target=lambda: submits.append(
            _wrk(server, "/v1/corpora", SUBMITTERS, seconds, paced, threads=1)
        )
    )
    submitter.start()
    (rps, p50, p99), non2xx, sock = _wrk(server, f"/v1/jobs/{server.job}", POLLERS, seconds, "")
    submitter.join()
    cpu = server.cpu_seconds() - before
    (s_rps, s_p50, s_p99), s_non2xx, s_sock = submits[0]
    done = (rps + s_rps) * seconds
    per_req = cpu * 1000 / done if done else float("nan")
    load = os.getloadavg()[0]
    return [
        Row(
            "poll GET /v1/jobs/{id}",
            str(POLLERS),
            rps,
            p50,
            p99,
            non2xx,
            sock,
            per_req,
            f"load {load:.1f}; CPU {cpu / seconds:.2f} cores" + ("" if rps else "; STALLED"),
        ),
        Row(
            "submit beside the pollers",
            f"{SUBMITTERS}, {SUBMIT_GAP_MS} ms apart",
            s_rps,
            s_p50,
            s_p99,
            s_non2xx,
            s_sock,
            per_req,
            "CPU/req: both workloads together",
        ),
    ]


def run_backend(
    server: Server, workloads: list[str], seconds: int, poll_seconds: int = 20
) -> list[Row]:
    get_path = f"/v1/datasets/{server.dataset}"
    post = (
        f"wrk.method = 'POST'\nwrk.body = '{server.submit_body}'\n"
        "wrk.headers['Content-Type'] = 'application/json'"
    )
    plans = {
        "get": ("GET by id", get_path, ""),
        "list": ("list jobs", "/v1/jobs?limit=20", ""),
        "submit": ("POST /v1/corpora", "/v1/corpora", post),
    }
    rows: list[Row] = []
    for workload in workloads:
        if workload == "sse":
            rows += [_sse_level(server, n, seconds, get_path) for n in (64, 256)]
            continue
        if workload == "poll":
            rows += _poll_level(server, poll_seconds, post)
            continue
        name, path, setup = plans[workload]
        for conns in LEVELS:
            rows.append(_measure(server, name, str(conns), conns, seconds, path, setup))
        time.sleep(2)
        rows.append(_measure(server, name, "4 (2 s after)", 4, seconds, path, setup))
    return rows


@contextlib.contextmanager
def _postgres_and_redis() -> Iterator[dict[str, str]]:
    """A fresh database on 127.0.0.1:5432 and an unused Redis db on :6379, removed afterwards."""
    with (
        fresh_postgres_database("cadenza_bench") as db_url,
        fresh_redis_url() as broker_url,
    ):
        yield {"CADENZA_DATABASE_URL": db_url, "CADENZA_BROKER_URL": broker_url}


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.2f}"  # NaN: no request completed


def _table(title: str, rows: list[Row]) -> str:
    lines = [
        f"**{title}**",
        "",
        "| workload | connections | req/s | p50 ms | p99 ms | non-2xx | socket errors + timeouts "
        "| API CPU ms/req | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r.workload} | {r.level} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} "
            f"| {r.non2xx} | {r.socket_errors} | {_ms(r.cpu_ms_per_req)} | {r.note} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="embedded", help="embedded,postgres")
    ap.add_argument("--workloads", default="get,list,submit,sse,poll")
    ap.add_argument("--seconds", type=int, default=2, help="per level (1 to 10)")
    ap.add_argument("--poll-seconds", type=int, default=20, help="of the poll workload")
    ap.add_argument("--processes", type=int, default=0, help="API processes (0: default)")
    ap.add_argument(
        "--code", default=str(ROOT), help="checkout(s) whose server code runs, comma-separated"
    )
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/api_load.py needs wrk: apt-get install wrk (make bench installs it)")
    seconds = min(max(args.seconds, 1), 10)
    codes = [Path(c).resolve() for c in args.code.split(",")]
    # Tuning knobs (CADENZA_DB_POOL_SIZE, CADENZA_API_THREADS, ...) pass through; the rest of
    # CADENZA_* would point the server at someone else's data.
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CADENZA_") or k.startswith(("CADENZA_DB_", "CADENZA_API_"))
    }
    # Every submit a real one (see the module docstring): no rate or active-job refusals.
    base |= {
        "CADENZA_RATE_JOBS_BURST": "1000000",
        "CADENZA_RATE_JOBS_PER_MINUTE": "1000000",
        "CADENZA_MAX_ACTIVE_JOBS_PER_QUEUE": "1000000",
    }
    if args.processes:
        base["CADENZA_API_PROCESSES"] = str(args.processes)
    print(f"machine: {_cpu_model()}, nproc {os.cpu_count()}; {seconds:g} s/level")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for backend in args.backends.split(","):
        for code in codes:
            paths = [code / "shared", code / "services" / "api", code / "services" / "worker"]
            env = base | {"PYTHONPATH": os.pathsep.join(str(p) for p in paths)}
            rows = _run_one(env, backend, code, args.workloads.split(","), seconds, args)
            kind = "SQLite + filesystem broker" if backend == "embedded" else "PostgreSQL + Redis"
            print(f"\n{_table(f'{backend}: {kind}; code: {code}', rows)}")


def _run_one(
    env: dict[str, str],
    backend: str,
    code: Path,
    workloads: list[str],
    seconds: int,
    args: argparse.Namespace,
) -> list[Row]:
    with (
        tempfile.TemporaryDirectory(prefix="cadenza-load-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        env = env | {"CADENZA_DATA_DIR": tmp}
        if backend == "postgres":
            env |= stack.enter_context(_postgres_and_redis())
        elif backend != "embedded":
            raise SystemExit(f"unknown backend {backend!r}")
        server = Server(env, Path(tmp), code)
        try:
            return run_backend(server, workloads, seconds, args.poll_seconds)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
