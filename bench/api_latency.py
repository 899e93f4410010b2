"""REST job-submit latency on loopback: p50/p99 of `POST /v1/corpora` over 200 requests.

Runs the real API process (uvicorn) on the embedded default, or on PostgreSQL + Redis with
`--production`. No worker runs, so every submitted job stays queued and the figure is the
API's own cost: validation, owner checks, the SQL commit and the broker publish. The
reference in the same run is `GET /healthz` (no DB, no broker) on the same server.

    .venv/bin/python bench/api_latency.py [--requests 200] [--production]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.launch.processes import free_port
from cadenza.launch.redis import ensure_redis, fresh_redis_url
from cadenza.launch.stack import create_key, launch, migrate


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(env: dict[str, str], n: int, midi: bytes) -> dict[str, list[float]]:
    migrate(env)
    key = create_key(env, "bench")
    with launch(env, port=free_port(), queues=()) as api:
        with httpx.Client(base_url=api.api_url, headers={"Authorization": f"Bearer {key}"}) as c:
            ds = c.post("/v1/datasets", json={"name": "bench"}).json()["id"]
            c.post(
                f"/v1/datasets/{ds}/files", files=[("files", ("a.mid", midi))]
            ).raise_for_status()
            times: dict[str, list[float]] = {"submit": [], "healthz": []}
            for _ in range(10):  # warm-up
                c.get("/healthz")
                c.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"})
            for _ in range(n):
                t = time.perf_counter()
                r = c.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"})
                times["submit"].append(time.perf_counter() - t)
                assert r.status_code == 202, r.text
                t = time.perf_counter()
                c.get("/healthz")
                times["healthz"].append(time.perf_counter() - t)
        return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--production", action="store_true", help="PostgreSQL + Redis")
    args = ap.parse_args()
    import symusic

    score = symusic.Score(480)
    track = symusic.Track(program=0)
    for i in range(32):
        track.notes.append(symusic.Note(i * 240, 240, 60 + i % 12, 80))
    score.tracks.append(track)
    midi = bytes(score.dumps_midi())
    base = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
    with tempfile.TemporaryDirectory() as tmp:
        env = base | {"CADENZA_DATA_DIR": tmp}
        if args.production:
            ensure_postgres()
            ensure_redis()
            with fresh_postgres_database() as db, fresh_redis_url() as redis:
                env |= {"CADENZA_DATABASE_URL": db, "CADENZA_BROKER_URL": redis}
                times = run(env, args.requests, midi)
            mode = "PostgreSQL + Redis + local store"
        else:
            times = run(env, args.requests, midi)
            mode = "embedded (SQLite + filesystem broker + local store)"
    sub, ref = times["submit"], times["healthz"]
    print(f"command: python bench/api_latency.py{' --production' if args.production else ''}")
    print(f"machine: {_cpu()}, {os.cpu_count()} cores; mode: {mode}; {args.requests} requests")
    print("| request | p50 ms | p99 ms | mean ms |")
    print("| --- | --- | --- | --- |")
    for name, xs in (("POST /v1/corpora (submit)", sub), ("GET /healthz (reference)", ref)):
        print(
            f"| {name} | {_pct(xs, 0.5) * 1e3:.2f} | {_pct(xs, 0.99) * 1e3:.2f} "
            f"| {statistics.mean(xs) * 1e3:.2f} |"
        )
    print(f"ratio submit/reference p50: {_pct(sub, 0.5) / _pct(ref, 0.5):.1f}x")


if __name__ == "__main__":
    main()
