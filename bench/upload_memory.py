"""How much resident memory does one upload request cost the API process?

Starts its own API process (uvicorn, no worker) on the embedded default (SQLite + local object
store) and sends, one request at a time, the uploads that once ballooned it:

* `two_bombs`: two 3.3 MiB zips, each unpacking to ~570 MiB (one member, ~170:1, under the
  per-member ratio cap): the per-request unpacked cap refuses it from the zips' directories.
* `one_bomb`: one such zip, within every count and size cap: its member is unpacked to disk
  (never to memory), then the audio size limit refuses it.
* `parts`: 60 parts of 8 MiB (WAV), 480 MiB in all, under `max_upload_bytes`: stored.
* `normal`: a zip of 200 small MIDI files, 20 MIDI parts and a 40 MiB WAV: stored.

While a request runs, the API's VmRSS is sampled every 10 ms; a row reports the status, the
RSS before and the growth at the peak. `--code` runs the server from another checkout's
`shared/` and `services/api/` (to measure the code before a change).

    .venv/bin/python bench/upload_memory.py [--cases two_bombs,one_bomb,parts,normal]
        [--code /path/to/another/checkout]

Needs ~2.5 GB of free disk under the temp folder; bounded (every request times out at 600 s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import struct
import tempfile
import threading
import time
import wave
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx

from cadenza.launch.processes import free_port
from cadenza.launch.stack import create_key, launch, migrate
from tests.support.music import midi_bytes

MiB = 1024 * 1024
BLOCK = 64 * 1024
NOISE = 380  # random bytes per 64 KiB block: deflate gets ~170:1, under the 200:1 bomb cap

Files = list[tuple[str, tuple[str, IO[bytes]]]]


def wav_header(data_bytes: int, rate: int = 44100, channels: int = 2) -> bytes:
    """A 16-bit PCM WAV header for `data_bytes` of samples."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"")
    head = bytearray(buf.getvalue())
    struct.pack_into("<I", head, 4, 36 + data_bytes)
    struct.pack_into("<I", head, 40, data_bytes)
    return bytes(head)


def bomb_zip(path: Path, unpacked: int) -> Path:
    """A zip with one WAV member of `unpacked` bytes that compresses ~170:1, written in blocks."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf,
        zf.open("take.wav", "w", force_zip64=True) as out,
    ):
        out.write(wav_header(unpacked - 44))
        left = unpacked - 44
        while left > 0:
            n = min(BLOCK, left)
            out.write((os.urandom(NOISE) + bytes(BLOCK))[:n])
            left -= n
    print(f"bomb zip: {path.stat().st_size / MiB:.1f} MiB, unpacks to {unpacked / MiB:.0f} MiB")
    return path


def wav_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.write(wav_header(size - 44))
        for _ in range((size - 44) // BLOCK):
            f.write(os.urandom(BLOCK))
        f.write(os.urandom((size - 44) % BLOCK))
    return path


def song(i: int) -> bytes:
    return midi_bytes([(t * 240, 240, 48 + (t * 7 + i) % 36, 80) for t in range(64 + i % 50)])


def build_cases(tmp: Path) -> dict[str, Callable[[], Files]]:
    """Each case as a function returning the multipart files (open file objects, streamed)."""
    made: dict[str, Path] = {}

    def bomb() -> Path:
        if "bomb" not in made:
            made["bomb"] = bomb_zip(tmp / "bomb.zip", 570 * MiB)
        return made["bomb"]

    def two_bombs() -> Files:
        return [("files", (f"b{i}.zip", bomb().open("rb"))) for i in range(2)]

    def one_bomb() -> Files:
        return [("files", ("b.zip", bomb().open("rb")))]

    def parts() -> Files:
        part = made.get("part") or wav_file(tmp / "part.wav", 8 * MiB)
        made["part"] = part
        return [("files", (f"p{i}.wav", part.open("rb"))) for i in range(60)]

    def normal() -> Files:
        z = tmp / "songs.zip"
        if not z.exists():
            with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
                for i in range(200):
                    zf.writestr(f"songs/{i:03}.mid", song(i))
        big = made.get("wav") or wav_file(tmp / "take.wav", 40 * MiB)
        made["wav"] = big
        files: Files = [
            ("files", ("songs.zip", z.open("rb"))),
            ("files", ("take.wav", big.open("rb"))),
        ]
        files += [("files", (f"s{i}.mid", io.BytesIO(song(1000 + i)))) for i in range(20)]
        return files

    return {"two_bombs": two_bombs, "one_bomb": one_bomb, "parts": parts, "normal": normal}


def rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} for {pid}")


@contextlib.contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """Sample VmRSS every 10 ms while the block runs; yields [baseline, peak] (peak at exit)."""
    out = [rss(pid), rss(pid)]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            out[1] = max(out[1], rss(pid))
            time.sleep(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        out[1] = max(out[1], rss(pid))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default="two_bombs,one_bomb,parts,normal")
    ap.add_argument("--code", type=Path, help="run the API from this checkout instead")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="upload-memory-") as td:
        tmp = Path(td)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
        env |= {"CADENZA_DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"}
        if args.code:
            code = args.code.resolve()
            env["PYTHONPATH"] = f"{code}/shared:{code}/services/api:{env.get('PYTHONPATH', '')}"
        migrate(env)
        key = create_key(env, "alice")
        cases = build_cases(tmp)
        print(
            f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
            f"python {platform.python_version()}; API code: {args.code or 'this checkout'}"
        )
        with launch(env, port=free_port(), queues=(), logs=tmp) as launched:
            pid = launched.procs["api"].pid
            http = httpx.Client(
                base_url=launched.api_url, headers={"Authorization": f"Bearer {key}"}, timeout=600
            )
            ds = http.post("/v1/datasets", json={"name": "bench"}).json()["id"]
            warm = http.post(f"/v1/datasets/{ds}/files", files=[("files", ("w.mid", song(0)))])
            assert warm.status_code == 201, warm.text
            print(f"API RSS after start-up and one upload: {rss(pid) / MiB:.0f} MiB\n")
            print("| case | status | RSS before (MiB) | peak growth (MiB) | answer |")
            print("|---|---|---|---|---|")
            for name in args.cases.split(","):
                files = cases[name]()
                try:
                    with peak_rss(pid) as mem:
                        r = http.post(f"/v1/datasets/{ds}/files", files=files)
                finally:
                    for _, (_, fh) in files:
                        fh.close()
                body = r.json()
                answer = (
                    f"{len(body['files'])} files stored"
                    if r.status_code == 201
                    else f"{body['error']['code']}: {body['error']['message'][:90]}"
                )
                print(
                    f"| {name} | {r.status_code} | {mem[0] / MiB:.0f} | "
                    f"{(mem[1] - mem[0]) / MiB:.0f} | {answer} |",
                    flush=True,
                )
            print(f"\nAPI VmHWM (lifetime peak RSS): {rss(pid, 'VmHWM') / MiB:.0f} MiB")


if __name__ == "__main__":
    main()
