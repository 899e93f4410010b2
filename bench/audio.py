"""Transcription and rendering speed, against basic-pitch's own ``predict`` in the same run.

Piano pieces are generated (seeded), rendered with the FluidR3 soundfont and then transcribed two
ways in the same process, on the same files:

* **basic-pitch**: ``basic_pitch.inference.predict(path, model)`` with one ``Model`` loaded once
  (the fastest way to call it: no reload per file), one file after another;
* **cadenza**: ``cadenza.audio.transcribe.transcribe``, one file at a time (latency) and all
  files in one call (throughput).

Both share the warm-up (model load, numba compilation), which is not timed. Runs alternate
between the two so that load from other processes hits both alike; each figure is the median of
``--repeats`` runs. The notes both produce are compared file by file. For the all-files runs
the CPU time of each system (this process and its children) is reported too, per second of
audio, with the CPU time other processes took meanwhile: on a shared machine wall times move
with the load, CPU times much less. Rendering is timed per engine as seconds of audio per
second of wall time.

    .venv/bin/python bench/audio.py               # ~4 min on 2 cores
    .venv/bin/python bench/audio.py --quick       # ~1 min
    .venv/bin/python bench/audio.py --only render # the rendering table alone, ~30 s
    .venv/bin/python bench/audio.py --only transcription  # that table alone, ~40 s
    .venv/bin/python bench/audio.py --only engines  # basic-pitch vs transkun, ~4 min on 2 cores

``--only engines`` compares the two transcription engines (``transcribe.engine``) on the same
pieces, with a sustain pedal every bar, rendered by libfluidsynth (which plays the pedal):
note F1 against the source MIDI (mir_eval: onsets only; with offsets as the notes sound, a note
released under a file's own sustain pedal lasting until the pedal lifts; with offsets as the
keys were held), sustain-pedal messages written, and speed (seconds of audio per second of
wall time, models loaded beforehand). One piece is shorter than transkun's
16-second segment, the others longer (transkun's own overlapping segments).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

# Python puts this script's folder first on sys.path, where bench/tokenize.py shadows the
# standard library's tokenize (imported by onnxruntime via linecache). Drop the folder before
# importing anything that may need it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import numpy as np  # noqa: E402
from symusic.core import (  # noqa: E402
    ControlChangeTick,
    NoteTick,
    ScoreSecond,
    ScoreTick,
    TempoTick,
    TrackTick,
)

from cadenza.audio.transcribe import transcribe  # noqa: E402
from cadenza.audio.transcribe.session import shared_model  # noqa: E402
from cadenza.render.audio import DEFAULT_SOUNDFONT, Engine, choose_engine, render_midi  # noqa: E402
from cadenza.render.symusic import symusic_in_tune  # noqa: E402

README = Path(__file__).with_name("README_audio.md")
T = TypeVar("T")
MUSESCORE = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")  # optional Debian package
RENDER_SETUPS: list[tuple[Path, Engine]] = [
    (DEFAULT_SOUNDFONT, "auto"),
    (DEFAULT_SOUNDFONT, "fluidsynth"),
    (DEFAULT_SOUNDFONT, "fluidsynth-cli"),
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


def render_rows(midis: list[bytes], total_audio: float) -> list[tuple[str, float, float]]:
    """(label, wall seconds for every piece, real-time factor) per soundfont and engine, warm:
    soundfont loaded, pitch check done and rewritten copy built, as in a worker that has
    rendered before."""
    rows = []
    for font, engine in RENDER_SETUPS:
        if not font.is_file():
            continue
        render_midi(midis[0], soundfont=font, engine=engine)
        chosen = choose_engine(engine, font)
        render = partial(render_midi, soundfont=font, engine=engine)
        seconds = sum(timed(partial(render, m))[0] for m in midis)
        label = f"{font.name} · {engine}" + (f" → {chosen}" if engine == "auto" else "")
        if chosen == "symusic" and not symusic_in_tune(str(font.resolve())):
            label += " (rewritten copy, see render/soundfont.py)"
        rows.append((label, seconds, total_audio / seconds))
    return rows


def render_table(rows: list[tuple[str, float, float]]) -> list[str]:
    lines = [
        "| render, 44.1 kHz stereo WAV (soundfont · engine) | wall, all files | real-time factor "
        "| goal |",
        "|---|---|---|---|",
    ]
    for label, seconds, rtf in rows:
        lines.append(f"| {label} | {seconds:.2f} s | {rtf:.0f}× | ≥ 100× |")
    return lines


def main_render_only(args: argparse.Namespace) -> None:
    """``--only render``: the rendering table alone (README_audio.md is left as it is)."""
    load_before = os.getloadavg()
    midis = [piano_piece(seed, args.seconds) for seed in range(args.files)]
    total_audio = sum(audio_seconds(m) for m in midis)
    runs = [render_rows(midis, total_audio) for _ in range(args.repeats)]
    medians = [statistics.median(run[i][1] for run in runs) for i in range(len(runs[0]))]
    rows = [(row[0], s, total_audio / s) for row, s in zip(runs[0], medians, strict=True)]
    load_after = os.getloadavg()
    print(
        f"{args.files} pieces, {total_audio:.0f} s of audio, median of {args.repeats} run(s); "
        f"{len(os.sched_getaffinity(0))} CPU cores usable ({cpu_model()}); load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after\n"
    )
    print("\n".join(render_table(rows)))


@dataclass
class Transcription:
    """Timings of both systems on the same files: wall and CPU seconds (this process and its
    children: ffmpeg) per run, and CPU seconds other processes used meanwhile."""

    per_file: dict[str, list[list[float]]]  # system → file → wall seconds, one per repeat
    all_wall: dict[str, list[float]] = field(default_factory=dict)
    all_cpu: dict[str, list[float]] = field(default_factory=dict)
    foreign_cpu: list[float] = field(default_factory=list)
    same: int = 0
    rewritten: bool = False


def cpu_seconds() -> float:
    """CPU time of this process and its finished children."""
    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used since boot (Linux /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def write_wavs(midis: list[bytes], folder: Path) -> list[Path]:
    paths = []
    for i, midi in enumerate(midis):
        path = folder / f"piece{i}.wav"
        path.write_bytes(render_midi(midi))
        paths.append(path)
    return paths


def measure_transcription(paths: list[Path], repeats: int) -> Transcription:
    """basic-pitch's ``predict`` (one ``Model`` loaded once, a file at a time) against
    ``transcribe``: each file alone, then all files, runs interleaved and alternating in order
    so that load from other processes hits both alike."""
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

    # Warm-up for both (model load, numba compilation): not timed.
    bp_predict(paths[0])
    transcribe([paths[0]])
    out = Transcription(per_file={"bp": [[] for _ in paths], "ours": [[] for _ in paths]})
    out.rewritten = shared_model().rewritten
    for rep in range(repeats):
        for i, path in enumerate(paths):
            order = [("bp", bp_predict), ("ours", transcribe_one)]
            if (rep + i) % 2:
                order.reverse()
            results: dict[str, bytes] = {}
            for name, fn in order:
                seconds, results[name] = timed(partial(fn, path))
                out.per_file[name][i].append(seconds)
            if rep == 0:
                out.same += notes_of(results["bp"]) == notes_of(results["ours"])
        runs = [("bp", partial(bp_all_files, paths)), ("ours", partial(transcribe, paths))]
        if rep % 2:
            runs.reverse()
        for name, run in runs:
            cpu, busy = cpu_seconds(), machine_busy_seconds()
            seconds, _ = timed(run)
            cpu = cpu_seconds() - cpu
            out.all_wall.setdefault(name, []).append(seconds)
            out.all_cpu.setdefault(name, []).append(cpu)
            out.foreign_cpu.append(max(0.0, machine_busy_seconds() - busy - cpu))
    return out


def transcription_table(m: Transcription, durations: list[float]) -> list[str]:
    total_audio = sum(durations)
    all_runs = [*m.all_wall["bp"], *m.all_wall["ours"]]
    foreign = statistics.mean(m.foreign_cpu) / statistics.mean(all_runs)
    lines = [
        "| transcription | basic-pitch `predict` | cadenza `transcribe` | ratio | goal |",
        "|---|---|---|---|---|",
    ]
    for i, d in enumerate(durations):
        b, o = (statistics.median(m.per_file[name][i]) for name in ("bp", "ours"))
        lines.append(
            f"| file {i + 1} alone ({d:.0f} s) | {b:.2f} s ({d / b:.1f}× RT) | "
            f"{o:.2f} s ({d / o:.1f}× RT) | time {o / b:.2f}× | ≤ 1.1× |"
        )
    bp_all, ours_all = (statistics.median(m.all_wall[name]) for name in ("bp", "ours"))
    bp_cpu, ours_cpu = (
        1000 * statistics.median(m.all_cpu[name]) / total_audio for name in ("bp", "ours")
    )
    lines += [
        f"| all {len(durations)} files ({total_audio:.0f} s) | {bp_all:.2f} s "
        f"({total_audio / bp_all:.1f}× RT) | {ours_all:.2f} s ({total_audio / ours_all:.1f}× RT) "
        f"| throughput {bp_all / ours_all:.2f}× | ≥ 1.8× |",
        f"| CPU per second of audio, all files | {bp_cpu:.1f} ms | {ours_cpu:.1f} ms | "
        f"CPU {ours_cpu / bp_cpu:.2f}× | |",
        f"| identical notes | | | {m.same}/{len(durations)} files | all |",
        "",
        f"cadenza ran {'the rewritten' if m.rewritten else 'the bundled (NOT rewritten)'} model "
        f"graph. During the all-files runs other processes used {foreign:.0%} of one core on "
        "average.",
    ]
    return lines


def run_header(
    args: argparse.Namespace, load_before: tuple[float, ...], load_after: tuple[float, ...]
) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    command = "python bench/audio.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return [
        f"Command: `{command.strip()}`  ",
        f"Machine: {cpu_model()}, {cores} CPU cores usable, Python {platform.python_version()}; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after (other processes "
        "share these cores, so absolute times vary; ratios come from interleaved runs).  ",
        f"Input: {args.files} generated solo-piano pieces of ~{args.seconds:.0f} s, rendered with "
        f"FluidR3_GM; median of {args.repeats} run(s).",
        "",
    ]


def main_transcription_only(args: argparse.Namespace) -> None:
    """``--only transcription``: the transcription table alone, which replaces the one in
    README_audio.md (header lines included; the rest of the file is left as it is)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-") as tmp:
        midis = [piano_piece(seed, args.seconds) for seed in range(args.files)]
        measured = measure_transcription(write_wavs(midis, Path(tmp)), args.repeats)
    load_after = os.getloadavg()
    block = run_header(args, load_before, load_after)
    block += transcription_table(measured, [audio_seconds(m) for m in midis])
    print("\n".join(block))
    if args.no_readme or not README.is_file():
        return
    old = README.read_text().splitlines()
    start = next(i for i, line in enumerate(old) if line.startswith("Command: "))
    end = next(
        (i for i, line in enumerate(old) if i > start and line.startswith(("| render", "## "))),
        len(old),
    )
    README.write_text("\n".join([*old[:start], *block, "", *old[end:]]) + "\n")
    print(f"\ntranscription table written to {README}")


def pedalled(midi: bytes) -> bytes:
    """The piece with the sustain pedal down through every bar (changed on each downbeat)."""
    score = ScoreTick.from_midi(midi)
    end = score.end()
    for bar_start in range(0, end, 1920):
        score.tracks[0].controls.append(ControlChangeTick(bar_start + 40, 64, 127))
        score.tracks[0].controls.append(ControlChangeTick(min(bar_start + 1900, end), 64, 0))
    return score.dumps_midi()


def main_engines(args: argparse.Namespace) -> None:
    """``--only engines``: basic-pitch and transkun on the same rendered pieces."""
    import pretty_midi

    from cadenza.audio.transcribe import TranscribeParams
    from cadenza.audio.transcribe.piano import shared_piano_model
    from tests.support.music import note_scores

    seconds = [12.0] + [args.seconds] * (args.files - 1)
    midis = [pedalled(piano_piece(seed, s)) for seed, s in enumerate(seconds)]
    durations = [audio_seconds(m) for m in midis]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-") as tmp:
        paths = []
        for i, midi in enumerate(midis):
            paths.append(Path(tmp) / f"piece-{i}.wav")
            paths[-1].write_bytes(render_midi(midi, engine="fluidsynth"))
        shared_model()
        shared_piano_model()
        rows = []
        for engine in ("basic-pitch", "transkun"):
            params = TranscribeParams(engine=engine)  # type: ignore[arg-type]
            for path, midi, duration in zip(paths, midis, durations, strict=True):
                wall, (out,) = timed(partial(transcribe, [path], params))
                scores = note_scores(midi, out)
                pm = pretty_midi.PrettyMIDI(io.BytesIO(out))
                pedal = sum(c.number == 64 for inst in pm.instruments for c in inst.control_changes)
                f1 = (scores["onset"], scores["offset"], scores["offset_keys"])
                rows.append((engine, duration, *f1, pedal, duration / wall))
                print(rows[-1], flush=True)
    load_after = os.getloadavg()
    cores = len(os.sched_getaffinity(0))
    command = "python bench/audio.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        f"Command: `{command.strip()}`  ",
        f"Machine: {cpu_model()}, {cores} CPU cores usable; load average {load_before[0]:.1f} "
        f"before, {load_after[0]:.1f} after.",
        "",
        "| engine | piece (s) | note F1, onsets | with offsets, as sounding | with offsets, "
        "as keys | CC64 messages | speed (× real time) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for engine, duration, onset, offset, keys, pedal, speed in rows:
        lines.append(
            f"| {engine} | {duration:.1f} | {onset:.3f} | {offset:.3f} | {keys:.3f} | {pedal} "
            f"| {speed:.2f} |"
        )
    for engine in ("basic-pitch", "transkun"):
        mine = [r for r in rows if r[0] == engine]
        audio = sum(r[1] for r in mine)
        speed = audio / sum(r[1] / r[6] for r in mine)
        means = " | ".join(f"{statistics.mean(r[k] for r in mine):.3f}" for k in (2, 3, 4))
        lines.append(
            f"| {engine}, mean / all | {audio:.1f} | {means} | {sum(r[5] for r in mine)} "
            f"| {speed:.2f} |"
        )
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=45.0, help="length of each piece")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 files of 20 s, 1 repeat")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite README_audio.md")
    parser.add_argument(
        "--only",
        choices=["render", "transcription", "engines"],
        help="run one section alone (render: README left as it is; transcription: only its "
        "table in README_audio.md is replaced)",
    )
    args = parser.parse_args()
    if args.quick:
        args.files, args.seconds, args.repeats = 3, 20.0, 1
    if args.only == "render":
        main_render_only(args)
        return
    if args.only == "transcription":
        main_transcription_only(args)
        return
    if args.only == "engines":
        if "--files" not in sys.argv:
            args.files = 2
        if "--seconds" not in sys.argv:
            args.seconds = 30.0
        main_engines(args)
        return

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-") as tmp:
        midis = [piano_piece(seed, args.seconds) for seed in range(args.files)]
        total_audio = sum(audio_seconds(m) for m in midis)

        # Rendering: every piece, per soundfont and engine (warm: soundfont loaded, pitch
        # check done), as the worker would after its first render.
        rendered = render_rows(midis, total_audio)
        paths = write_wavs(midis, Path(tmp))
        measured = measure_transcription(paths, args.repeats)
    load_after = os.getloadavg()

    lines = run_header(args, load_before, load_after)
    lines += transcription_table(measured, [audio_seconds(m) for m in midis])
    lines += ["", *render_table(rendered)]
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
  are decoded. It also runs a rewritten graph of the same model (`faster_graph` in
  `cadenza/audio/transcribe/graph.py`: convolutions split into phases so that ONNX Runtime stops
  computing padding channels, constants reshaped so that it broadcasts them in blocks), whose
  outputs are bit-identical to the bundled graph's (checked at load; otherwise the bundled
  graph runs, and the note under the table says so).
* **CPU per second of audio** — CPU time of the benchmark process (and its children) during
  the all-files runs, over the seconds of audio: the work each system does, which other load
  on the machine changes far less than wall time. basic-pitch's figure includes its second
  intra-op thread spinning while it waits.
* **identical notes** — the MIDI notes (start, end, pitch, velocity) of both, file by file.
* **render** — seconds of audio per second of wall time for every piece, after one warm-up
  render (soundfont loaded, pitch check done, rewritten copy built), as in a worker that has
  rendered before (`--only render` runs this table alone). symusic 0.5.9 plays FluidR3_GM
  out of tune (upstream issue Yikai-Liao/symusic#55: it ignores the overriding root key,
  clamps coarse tuning, ignores scale tuning), so `auto` has it play a copy of FluidR3
  rewritten once into the subset it reads correctly (`cadenza/render/soundfont.py`; cached
  under `CADENZA_CACHE_DIR`, default `~/.cache/cadenza`), and renders notes in groups of
  similar velocity to apply fluidsynth's velocity curve, which symusic ignores.
  `fluidsynth` is libfluidsynth in the worker process, the fallback when no copy can be
  written; `fluidsynth-cli` the command line, which reloads the soundfont on every call.
  MuseScore General (`apt-get install musescore-general-soundfont-small`, then
  `CADENZA_SOUNDFONT=/usr/share/sounds/sf3/MuseScore_General.sf3`) is played as it is.
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
