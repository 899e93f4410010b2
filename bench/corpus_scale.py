"""Benchmark: the corpus build at scale — peak memory of a 5,000-file build, and throughput
with 1 and 2 worker processes through the real job path.

    PYTHONPATH=shared:services/api:services/worker:. .venv/bin/python bench/corpus_scale.py \
        [--rss-files 5000] [--files 400] [--shards 4] [--out FILE.md]

The files are Bach chorales from music21's corpus (exported once to ``.cache/bach-midi``) and
transposed / cropped copies of them made with symusic, so every file is distinct; nothing
comes from outside the repository.

- **Memory**: the dataset is uploaded through the API (in-process, embedded SQLite + local
  store); a fresh process then runs the `tokenize` job with ``run_job`` (the worker's code
  path, without Celery) while a thread samples the proportional set size (PSS) of that
  process and all its children (the tokenizer pool, the parse sandbox) every 50 ms. PSS
  counts a page shared by n processes as 1/n in each, so the sum is the tree's real
  footprint; the main process's own peak RSS (VmHWM) is reported too.
- **Throughput**: `cadenza.launch.stack.launch` starts the API and 1, then 2, Celery worker
  processes (embedded default: SQLite, filesystem broker); the dataset is uploaded over HTTP
  and one sharded corpus job is timed from the job's ``started_at`` to ``finished_at``.
  Each worker is pinned to one core (``--pin``, the default: every thread of the worker and
  of the processes it started, such as the parse sandbox, so 2 workers = 2 cores and 1 worker
  = 1 core: the ratio shows what adding a worker buys); ``--no-pin`` leaves every worker its
  default pool over all cores. Each part job's start, end and worker process are printed (from
  the job rows), which shows whether the parts really ran side by side.
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("CADENZA_TEST_CACHE", ROOT / ".cache"))


def make_files(n: int, chorales: int = 24) -> list[tuple[str, bytes]]:
    """`n` distinct MIDI files: chorales, transposed (−5 … +6) and cropped (start bar)."""
    import symusic

    from cadenza.datasets import export_bach_chorales

    bases = [
        symusic.Score.from_file(str(p)) for p in export_bach_chorales(CACHE / "bach-midi", chorales)
    ]
    out: list[tuple[str, bytes]] = []
    for i in range(n):
        base = bases[i % len(bases)]
        k = i // len(bases)
        score = base.shift_pitch((k % 12) - 5)
        start = (k // 12) * base.ticks_per_quarter  # crop one more quarter per round
        if start:
            score = score.clip(start, score.end(), clip_end=True).shift_time(-start)
        out.append((f"f{i:05d}.mid", bytes(score.dumps_midi())))
    return out


def _zips(files: list[tuple[str, bytes]], per_zip: int = 900) -> list[bytes]:
    zips = []
    for lo in range(0, len(files), per_zip):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in files[lo : lo + per_zip]:
                zf.writestr(name, data)
        zips.append(buf.getvalue())
    return zips


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


# -- memory --------------------------------------------------------------------------------
def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            with open(f"/proc/{p}/task/{p}/children", encoding="ascii") as f:
                todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def run_job_measured(job_id: str, data_dir: str) -> None:
    """Child mode: run one job in this process; print peak PSS of the tree and own VmHWM."""
    from cadenza.config import Settings
    from cadenza.jobs.runner import run_job

    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(os.getpid())))

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    state = run_job(job_id, Settings(data_dir=Path(data_dir)))
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    with open("/proc/self/status", encoding="ascii") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    print(json.dumps({"state": state, "peak_pss_kib": peak[0], "vmhwm_kib": hwm, "wall": wall}))


def memory(
    files: list[tuple[str, bytes]], shards: int | None, work: Path, code: Path | None
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from cadenza.config import Settings
    from cadenza.db.migrate import upgrade
    from cadenza.db.repo import create_api_key
    from cadenza.db.session import session_scope
    from cadenza_api.app import create_app

    settings = Settings(data_dir=work)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="bench")
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    ds = c.post("/v1/datasets", json={"name": "scale"}).json()["id"]
    for z in _zips(files):
        r = c.post(f"/v1/datasets/{ds}/files", files=[("files", ("part.zip", z))])
        assert r.status_code == 201, r.text
    body: dict[str, Any] = {"dataset_id": ds, "tokenizer": "REMI"}
    if shards is not None:
        body["shards"] = shards
    child_env = os.environ | {"CADENZA_DATA_DIR": str(work)}
    if code is not None:  # run the job with another checkout's code (the "before" figure)
        roots = ("shared", "services/api", "services/worker")
        child_env["PYTHONPATH"] = ":".join(str(code / r) for r in roots)
    job = c.post("/v1/corpora", json=body).json()["id"]
    if code is not None:  # an older checkout does not know the `shards` field
        from cadenza.db.models import Job

        with session_scope(settings.resolved_database_url) as s:
            row = s.get(Job, job)
            assert row is not None
            row.params = {k: v for k, v in row.params.items() if k != "shards"}
    load_before = load()
    res = subprocess.run(
        [sys.executable, __file__, "--run-job", job, "--data-dir", str(work)],
        capture_output=True,
        text=True,
        check=True,
        env=child_env,
    )
    out = json.loads(res.stdout.strip().splitlines()[-1])
    final = c.get(f"/v1/jobs/{job}").json()
    assert final["state"] == "succeeded", final
    corpus = c.get(f"/v1/corpora/{final['corpus_id']}").json()
    return out | {
        "files": len(files),
        "files_used": corpus["stats"]["files_used"],
        "tokens": sum(corpus["stats"]["tokens_per_split"].values()),
        "shards": shards or "default",
        "load": f"{load_before} → {load()}",
    }


# -- throughput ----------------------------------------------------------------------------
def throughput(
    files: list[tuple[str, bytes]], workers: int, shards: int, pin: bool, work: Path
) -> dict[str, Any]:
    from cadenza.client import Client
    from cadenza.launch.processes import free_port
    from cadenza.launch.stack import create_key, launch, migrate

    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")} | {
        "CADENZA_DATA_DIR": str(work),
        "PYTHONUNBUFFERED": "1",
    }
    migrate(env)
    key = create_key(env, "bench")
    cores = sorted(os.sched_getaffinity(0))
    with launch(env, port=free_port(), queues=("cpu",) * workers, logs=work / "logs") as st:
        if pin:  # every thread of the worker and of what it started (the parse sandbox)
            time.sleep(5)  # let the workers start their children first
            ws = [p for n, p in st.procs.items() if n.startswith("worker")]
            for i, w in enumerate(ws):
                for pid in _tree(w.pid):
                    for tid in os.listdir(f"/proc/{pid}/task"):
                        os.sched_setaffinity(int(tid), {cores[i % len(cores)]})
        client = Client(st.api_url, key)
        ds = client.create_dataset("scale")["id"]
        for z in _zips(files):
            zp = work / "part.zip"
            zp.write_bytes(z)
            client.upload(ds, [zp])
        load_before = load()
        job = client.create_corpus(ds, tokenizer="REMI", shards=shards)
        final = client.wait(job["id"], timeout=3600)
        assert final["state"] == "succeeded", final
        t0 = datetime.fromisoformat(final["started_at"])
        t1 = datetime.fromisoformat(final["finished_at"])
        seconds = (t1 - t0).total_seconds()
        corpus = client.get(f"/v1/corpora/{final['corpus_id']}")
    from sqlalchemy import select

    from cadenza.config import Settings
    from cadenza.db.models import Job
    from cadenza.db.session import session_scope

    with session_scope(Settings(data_dir=work).resolved_database_url) as s:
        start = t0.replace(tzinfo=None)
        parts = s.scalars(select(Job).where(Job.type == "tokenize_shard")).all()
        ran_on = {j.worker for j in parts}
        timeline = sorted(
            (
                round((j.started_at.replace(tzinfo=None) - start).total_seconds(), 1),
                round((j.finished_at.replace(tzinfo=None) - start).total_seconds(), 1),
                j.worker,
            )
            for j in parts
            if j.started_at and j.finished_at
        )
    return {
        "workers": workers,
        "files": len(files),
        "shards": shards,
        "seconds": seconds,
        "files_per_s": len(files) / seconds,
        "tokens": sum(corpus["stats"]["tokens_per_split"].values()),
        "load": f"{load_before} → {load()}",
        "part_workers": len(ran_on),
        "timeline": timeline,
        "merge_s": {k: round(v, 1) for k, v in corpus["stats"]["seconds"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rss-files", type=int, default=5000)
    ap.add_argument("--rss-shards", type=int, help="default: the job's own choice")
    ap.add_argument("--code", type=Path, help="run the memory job with this checkout's code")
    ap.add_argument("--files", type=int, default=400, help="files for the throughput runs")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--skip", choices=["memory", "throughput"], action="append", default=[])
    ap.add_argument("--out", type=Path)
    ap.add_argument("--run-job", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_job:
        run_job_measured(args.run_job, args.data_dir)
        return

    import tempfile

    lines = [f"load average at start {load()}, {len(os.sched_getaffinity(0))} usable cores"]
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-") as tmp:
        if "memory" not in args.skip:
            m = memory(make_files(args.rss_files), args.rss_shards, Path(tmp) / "mem", args.code)
            lines.append(
                f"memory: {m['files']} files ({m['files_used']} used, {m['tokens']:,} tokens), "
                f"{m['shards']} shard(s): peak PSS of the job's process tree "
                f"{m['peak_pss_kib'] / 1024:.0f} MiB, main process peak RSS "
                f"{m['vmhwm_kib'] / 1024:.0f} MiB, {m['wall']:.0f} s, load {m['load']}"
            )
            print(lines[-1], flush=True)
        if "throughput" not in args.skip:
            files = make_files(args.files)
            rows = [
                throughput(files, w, args.shards, args.pin, Path(tmp) / f"w{w}") for w in (1, 2)
            ]
            for r in rows:
                pinned = " pinned, 1 core each" if args.pin else ""
                lines.append(
                    f"throughput: {r['workers']} worker(s){pinned}, "
                    f"{r['files']} files in {r['shards']} shards: {r['seconds']:.1f} s, "
                    f"{r['files_per_s']:.1f} files/s, {r['tokens']:,} tokens, parts ran on "
                    f"{r['part_workers']} process(es), merge {r['merge_s']}, load {r['load']}"
                )
                print(lines[-1], flush=True)
                print("  parts (start s, end s, worker):", r["timeline"], flush=True)
            ratio = rows[1]["files_per_s"] / rows[0]["files_per_s"]
            lines.append(f"ratio 2 workers / 1 worker: {ratio:.2f}×")
            print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
