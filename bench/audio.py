"""Transcription and rendering speed, against basic-pitch's own ``predict`` in the same run.

Piano pieces are generated (seeded), rendered with the FluidR3 soundfont and then transcribed two
ways in the same process, on the same files:

* **basic-pitch**: ``basic_pitch.inference.predict(path, model)`` with one ``Model`` loaded once
  (the fastest way to call it: no reload per file), one file after another;
* **cadenza**: ``cadenza.audio.transcribe.transcribe``, one file at a time (latency) and all
  files in one call (throughput).

Both share the warm-up (model load, numba compilation), which is not timed. Runs alternate
between the two so that load from other processes hits both alike; each figure is the median of
``--repeats`` runs. The notes both produce are compared file by file. Rendering is timed per
engine as seconds of audio per second of wall time.

    .venv/bin/python bench/audio.py               # ~4 min on 2 cores
    .venv/bin/python bench/audio.py --quick       # ~1 min
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

# Python puts this script's folder first on sys.path, where bench/tokenize.py shadows the
# standard library's tokenize (imported by onnxruntime via linecache). Drop the folder before
# importing anything that may need it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np  # noqa: E402
from symusic.core import NoteTick, ScoreSecond, ScoreTick, TempoTick, TrackTick  # noqa: E402

from cadenza.audio.transcribe import transcribe  # noqa: E402
from cadenza.midi.render import (  # noqa: E402
    DEFAULT_SOUNDFONT,
    Engine,
    _choose_engine,
    render_midi,
    symusic_in_tune,
)

README = Path(__file__).with_name("README_audio.md")
T = TypeVar("T")
MUSESCORE = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")  # optional Debian package
RENDER_SETUPS: list[tuple[Path, Engine]] = [
    (DEFAULT_SOUNDFONT, "auto"),
    (DEFAULT_SOUNDFONT, "fluidsynth-cli"),
    (DEFAULT_SOUNDFONT, "symusic"),
    (MUSESCORE, "auto"),
]


def piano_piece(seed: int, seconds: float) -> bytes:
    """A plausible solo-piano piece: a melody in eighths over a left hand of block chords."""
    rng = np.random.default_rng(seed)
    qpm = float(rng.choice([84, 96, 108, 120]))
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=qpm))
    track = TrackTick("Piano", 0, False)
    bars = int(seconds / (4 * 60 / qpm))
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    for bar in range(bars):
        start = bar * 1920
        root = int(rng.choice([48, 53, 55, 57]))
        for beat in (0, 2):
            for pitch in (root, root + 4, root + 7):
                track.notes.append(
                    NoteTick(start + beat * 480, 900, pitch, int(rng.integers(50, 70)))
                )
        for eighth in range(8):
            if rng.random() < 0.15:
                continue  # a rest now and then
            pitch = 60 + int(rng.choice(scale)) + 12 * int(rng.integers(0, 2))
            length = int(rng.choice([200, 230, 460]))
            track.notes.append(
                NoteTick(start + eighth * 240, length, pitch, int(rng.integers(70, 105)))
            )
    score.tracks.append(track)
    return score.dumps_midi()


def audio_seconds(midi: bytes) -> float:
    seconds = ScoreTick.from_midi(midi).to("second")
    assert isinstance(seconds, ScoreSecond)
    return float(seconds.end())


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def notes_of(midi: bytes) -> list[tuple[float, float, int, int]]:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi))
    return sorted(
        (round(n.start, 4), round(n.end, 4), n.pitch, n.velocity)
        for inst in pm.instruments
        for n in inst.notes
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=45.0, help="length of each piece")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 files of 20 s, 1 repeat")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README_audio.md")
    args = parser.parse_args()
    if args.quick:
        args.files, args.seconds, args.repeats = 3, 20.0, 1

    with contextlib.redirect_stderr(io.StringIO()):
        from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
        from basic_pitch.inference import Model, predict
    model = Model(build_icassp_2022_model_path(FilenameSuffix.onnx))

    def bp_predict(path: Path) -> bytes:
        with contextlib.redirect_stdout(io.StringIO()):  # predict prints a line per file
            _out, midi, _events = predict(path, model)
        buffer = io.BytesIO()
        midi.write(buffer)
        return buffer.getvalue()

    def bp_all_files(paths: list[Path]) -> list[bytes]:
        return [bp_predict(p) for p in paths]

    def transcribe_one(path: Path) -> bytes:
        return transcribe([path])[0]

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-") as tmp:
        midis = [piano_piece(seed, args.seconds) for seed in range(args.files)]
        total_audio = sum(audio_seconds(m) for m in midis)

        # Rendering: every piece, per soundfont and engine (warm: soundfont loaded, pitch
        # check done), as the worker would after its first render.
        render_rows = []
        for font, engine in RENDER_SETUPS:
            if not font.is_file():
                continue
            render_midi(midis[0], soundfont=font, engine=engine)
            chosen = _choose_engine(engine, font)
            render = partial(render_midi, soundfont=font, engine=engine)
            seconds = sum(timed(partial(render, m))[0] for m in midis)
            tuned = symusic_in_tune(str(font.resolve())) if chosen == "symusic" else True
            label = f"{font.name} · {engine}" + (f" → {chosen}" if engine == "auto" else "")
            label += "" if tuned else " (out of tune: never chosen by auto)"
            render_rows.append((label, seconds, total_audio / seconds))
        paths = []
        for i, midi in enumerate(midis):
            path = Path(tmp) / f"piece{i}.wav"
            path.write_bytes(render_midi(midi))
            paths.append(path)

        # Warm-up for both (model load, numba compilation): not timed.
        bp_predict(paths[0])
        transcribe([paths[0]])

        per_file_bp: list[list[float]] = [[] for _ in paths]
        per_file_ours: list[list[float]] = [[] for _ in paths]
        batch_bp: list[float] = []
        batch_ours: list[float] = []
        same = 0
        for rep in range(args.repeats):
            for i, path in enumerate(paths):
                order = [("bp", bp_predict), ("ours", transcribe_one)]
                if (rep + i) % 2:
                    order.reverse()
                results: dict[str, bytes] = {}
                for name, fn in order:
                    seconds, results[name] = timed(partial(fn, path))
                    (per_file_bp if name == "bp" else per_file_ours)[i].append(seconds)
                if rep == 0:
                    same += notes_of(results["bp"]) == notes_of(results["ours"])
            runs = [("bp", partial(bp_all_files, paths)), ("ours", partial(transcribe, paths))]
            if rep % 2:
                runs.reverse()
            for name, run in runs:
                seconds, _ = timed(run)
                (batch_bp if name == "bp" else batch_ours).append(seconds)
    load_after = os.getloadavg()

    durations = [audio_seconds(m) for m in midis]
    file_bp = [statistics.median(t) for t in per_file_bp]
    file_ours = [statistics.median(t) for t in per_file_ours]
    file_ratio = [o / b for o, b in zip(file_ours, file_bp, strict=True)]
    bp_all, ours_all = statistics.median(batch_bp), statistics.median(batch_ours)
    cores = len(os.sched_getaffinity(0))

    command = "python bench/audio.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`  ",
        f"Machine: {cpu_model()}, {cores} CPU cores usable, Python {platform.python_version()}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other processes "
        "share these cores, so absolute times vary; ratios come from interleaved runs).  ",
        f"Input: {args.files} generated solo-piano pieces of ~{args.seconds:.0f} s, rendered with "
        f"FluidR3_GM; median of {args.repeats} run(s).",
        "",
        "| transcription | basic-pitch `predict` | cadenza `transcribe` | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for i, (d, b, o, r) in enumerate(zip(durations, file_bp, file_ours, file_ratio, strict=True)):
        lines.append(
            f"| file {i + 1} alone ({d:.0f} s) | {b:.2f} s ({d / b:.1f}× RT) | "
            f"{o:.2f} s ({d / o:.1f}× RT) | time {r:.2f}× | ≤ 1.1× |"
        )
    lines.append(
        f"| all {args.files} files ({total_audio:.0f} s) | {bp_all:.2f} s "
        f"({total_audio / bp_all:.1f}× RT) | {ours_all:.2f} s ({total_audio / ours_all:.1f}× RT) | "
        f"throughput {bp_all / ours_all:.2f}× | ≥ 1.8× |"
    )
    lines.append(f"| identical notes | | | {same}/{args.files} files | all |")
    lines += [
        "",
        "| render, 44.1 kHz stereo WAV (soundfont · engine) | wall, all files | real-time factor "
        "| goal |",
        "|---|---|---|---|",
    ]
    for label, seconds, rtf in render_rows:
        lines.append(f"| {label} | {seconds:.2f} s | {rtf:.0f}× | ≥ 100× |")
    table = "\n".join(lines)
    print(table)
    if not args.no_readme:
        README.write_text(_readme(table))
        print(f"\nwritten to {README}")


def _readme(table: str) -> str:
    return f"""# Audio benchmarks

Written by `bench/audio.py` (rerun it to refresh; `--quick` for a smoke run).

{table}

## Reading the figures

* **file alone** — one file per call, the latency a user waiting on one transcription sees.
  The ratio is cadenza's time over basic-pitch's (below 1 is faster).
* **all files** — one `transcribe` call with every file against basic-pitch's `predict` in a
  loop; the ratio is cadenza's throughput over basic-pitch's. basic-pitch runs one 2-second
  window at a time through an ONNX session that spreads it over all cores, which parallelises
  poorly on small CPUs; cadenza gives the session one thread and runs one window per core
  concurrently, taken from any file, while the next file decodes and the previous one's notes
  are decoded.
* **identical notes** — the MIDI notes (start, end, pitch, velocity) of both, file by file.
* **render** — seconds of audio per second of wall time for every piece, after one warm-up
  render (soundfont loaded, pitch check done), as in a worker that has rendered before. `auto`
  with FluidR3 runs libfluidsynth in the worker process; `fluidsynth-cli` is the command-line
  fallback, which reloads the soundfont on every call. symusic is faster still but plays
  FluidR3_GM out of tune (upstream issue Yikai-Liao/symusic#55), so `auto` uses it only for
  soundfonts that pass its pitch check, such as MuseScore General
  (`apt-get install musescore-general-soundfont-small`, then
  `CADENZA_SOUNDFONT=/usr/share/sounds/sf3/MuseScore_General.sf3`).
"""


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
