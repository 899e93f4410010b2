"""A piano-roll picture of a MIDI file, for ``GET /v1/samples/{id}/pianoroll.png``.

Notes are drawn at their real time in seconds (tempo changes included); the bottom axis is
labelled in bars, the way musicians count, and the top axis in minutes:seconds, the way players
show time. Rows of black keys are shaded and every C is named, so pitches can be read off
without counting. One colour per track, and the legend names each track's General MIDI program.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global figure state), so it is
safe in worker threads and never needs a display.
"""

from __future__ import annotations

import io
from typing import Final, cast

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator
from symusic.core import ScoreSecond, ScoreTick

from cadenza.midi.load import parse_midi, time_signature_map

#: General MIDI Level 1 program names, by program number 0..127.
GM_PROGRAMS: Final[tuple[str, ...]] = (
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone",
    "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ",
    "Reed Organ", "Accordion", "Harmonica", "Tango Accordion",
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)",
    "Electric Guitar (clean)", "Electric Guitar (muted)", "Overdriven Guitar",
    "Distortion Guitar", "Guitar Harmonics",
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass",
    "Slap Bass 1", "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    "Violin", "Viola", "Cello", "Contrabass",
    "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2",
    "Choir Aahs", "Voice Oohs", "Synth Voice", "Orchestra Hit",
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet",
    "French Horn", "Brass Section", "Synth Brass 1", "Synth Brass 2",
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax",
    "Oboe", "English Horn", "Bassoon", "Clarinet",
    "Piccolo", "Flute", "Recorder", "Pan Flute",
    "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)",
    "Lead 5 (charang)", "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)",
    "Pad 5 (bowed)", "Pad 6 (metallic)", "Pad 7 (halo)", "Pad 8 (sweep)",
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)",
    "FX 5 (brightness)", "FX 6 (goblin)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    "Sitar", "Banjo", "Shamisen", "Koto",
    "Kalimba", "Bagpipe", "Fiddle", "Shanai",
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock",
    "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet",
    "Telephone Ring", "Helicopter", "Applause", "Gunshot",
)  # fmt: skip

_NAMES: Final[tuple[str, ...]] = ("C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B")
_BLACK: Final[frozenset[int]] = frozenset({1, 3, 6, 8, 10})
_DPI: Final[int] = 100
_MAX_BARS: Final[int] = 20_000  # bar lines for ~10 h of 4/4 at 120 bpm; beyond, stop drawing


def pitch_name(pitch: int) -> str:
    """Scientific pitch name: 60 → C4, 61 → C♯4."""
    return f"{_NAMES[pitch % 12]}{pitch // 12 - 1}"


def program_name(program: int, is_drum: bool = False) -> str:
    """General MIDI name of a program number; channel-10 tracks are drum kits, not programs."""
    if is_drum:
        return "Drum kit"
    return GM_PROGRAMS[program] if 0 <= program < 128 else f"Program {program}"


def pianoroll_png(
    midi_bytes: bytes,
    *,
    width_px: int = 1600,
    height_px: int | None = None,
    title: str | None = None,
) -> bytes:
    """Draw the notes of a Standard MIDI File as a PNG of exactly ``width_px`` × ``height_px``
    pixels (height defaults to half the width)."""
    height_px = height_px if height_px is not None else width_px // 2
    if not (200 <= width_px <= 8000 and 150 <= height_px <= 8000):
        raise ValueError(f"picture size {width_px}×{height_px} px is outside 200..8000×150..8000")
    score = parse_midi(midi_bytes)
    seconds = cast(ScoreSecond, score.to("second"))
    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()

    tracks = [(t, s) for t, s in zip(score.tracks, seconds.tracks, strict=True) if len(t.notes)]
    end_s = max((float(seconds.end()), 1.0)) if tracks else 1.0
    pitches = np.concatenate([s.notes.numpy()["pitch"] for _, s in tracks]) if tracks else None
    low, high = _pitch_range(pitches)
    _shade_keys(ax, low, high, end_s)

    colours = _colours(len(tracks))
    handles = []
    for (track, timed), colour in zip(tracks, colours, strict=True):
        notes = timed.notes.numpy()
        ax.add_collection(_note_boxes(notes, colour))
        label = program_name(track.program, track.is_drum)
        if track.name.strip() and track.name.strip() != label:
            label = f"{track.name.strip()[:30]} — {label}"
        handles.append(Patch(facecolor=colour, edgecolor="black", linewidth=0.5, label=label))

    ax.set_xlim(0, end_s * 1.01)  # a sliver of room after the last note-off
    ax.set_ylim(low - 0.5, high + 0.5)
    _pitch_axis(ax, low, high)
    _time_axes(ax, score, end_s, width_px)
    ax.set_title(title if title is not None else _summary(score, len(tracks), end_s))
    if handles:
        fontsize = 9 if len(handles) <= 8 else 7
        ncols = 1 if len(handles) <= 16 else 2
        fig.legend(handles=handles, loc="outside right upper", fontsize=fontsize, ncols=ncols)
    else:
        ax.text(0.5, 0.5, "no notes", transform=ax.transAxes, ha="center", va="center")

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)  # no bbox_inches: the size must stay exact
    return buffer.getvalue()


def _pitch_range(pitches: npt.NDArray[np.integer] | None) -> tuple[int, int]:
    """Rows to show: the notes' range plus a margin, at least two octaves around middle C."""
    if pitches is None or len(pitches) == 0:
        return 48, 72
    low, high = int(pitches.min()) - 2, int(pitches.max()) + 2
    if high - low < 24:
        centre = (low + high) // 2
        low, high = centre - 12, centre + 12
    return max(low, 0), min(high, 127)


def _shade_keys(ax: Axes, low: int, high: int, end_s: float) -> None:
    """Grey bands on black-key rows and a line under every C, like a keyboard turned sideways."""
    for pitch in range(low, high + 1):
        if pitch % 12 in _BLACK:
            ax.axhspan(pitch - 0.5, pitch + 0.5, color="#eeeeee", zorder=0, linewidth=0)
        if pitch % 12 == 0:
            ax.axhline(pitch - 0.5, color="#bbbbbb", linewidth=0.6, zorder=0.5)


def _note_boxes(
    notes: dict[str, np.ndarray], colour: tuple[float, float, float, float]
) -> PolyCollection:
    """One rectangle per note (a single collection: fast even for 100k notes); louder notes are
    more opaque."""
    start = notes["time"].astype(np.float64)
    end = start + np.maximum(notes["duration"].astype(np.float64), 1e-3)
    pitch = notes["pitch"].astype(np.float64)
    boxes = np.stack(
        [
            np.column_stack([start, pitch - 0.4]),
            np.column_stack([end, pitch - 0.4]),
            np.column_stack([end, pitch + 0.4]),
            np.column_stack([start, pitch + 0.4]),
        ],
        axis=1,
    )  # (n, 4, 2)
    alpha = 0.45 + 0.55 * np.clip(notes["velocity"].astype(np.float64) / 127.0, 0, 1)
    faces = np.tile(np.asarray(colour[:3]), (len(start), 1))
    faces = np.column_stack([faces, alpha])
    return PolyCollection(
        list(boxes), facecolors=faces, edgecolors=(0, 0, 0, 0.5), linewidths=0.3, zorder=2
    )


def _pitch_axis(ax: Axes, low: int, high: int) -> None:
    """Name every C; in a narrow range every white key, in a middling one every C and G."""
    span = high - low
    if span <= 30:
        named = {0, 2, 4, 5, 7, 9, 11}
    elif span <= 60:
        named = {0, 7}
    else:
        named = {0}
    wanted = [p for p in range(low, high + 1) if p % 12 in named]
    ax.set_yticks(wanted, [pitch_name(p) for p in wanted])
    ax.set_ylabel("pitch")
    ax.tick_params(axis="y", labelsize=8 if span <= 48 else 9)


def _time_axes(ax: Axes, score: ScoreTick, end_s: float, width_px: int) -> None:
    """Bottom axis: bar numbers at bar lines; top axis: minutes:seconds."""
    bars_s = _bar_starts_seconds(score, end_s)
    for i, t in enumerate(bars_s):
        ax.axvline(t, color="#999999" if i % 4 == 0 else "#dddddd", linewidth=0.6, zorder=1)
    max_labels = max(4, width_px // 60)
    step = 1
    while len(bars_s) / step > max_labels:
        step *= 2
    shown = list(range(0, len(bars_s), step))
    ax.set_xticks([bars_s[i] for i in shown], [str(i + 1) for i in shown])
    ax.set_xlabel("bar")
    top = ax.secondary_xaxis("top")
    top.xaxis.set_major_locator(MaxNLocator(nbins=max(4, width_px // 120), steps=[1, 2, 5, 10]))
    top.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: _clock(x)))
    top.set_xlabel("time (m:ss)")


def _bar_starts_seconds(score: ScoreTick, end_s: float) -> list[float]:
    """Where bars begin, in seconds: bar lengths follow the time signatures (4/4 until the
    first one), seconds follow the tempo map."""
    tpq = max(int(score.ticks_per_quarter), 1)
    end_tick = max(int(score.end()), 1)
    signatures = time_signature_map(score)
    bars: list[float] = []
    for i, (start, num, den) in enumerate(signatures):
        stop = signatures[i + 1][0] if i + 1 < len(signatures) else end_tick
        length = tpq * 4 * num / den
        tick = float(start)
        while tick < stop and len(bars) < _MAX_BARS:
            bars.append(tick)
            tick += length
    times = _ticks_to_seconds(np.asarray(bars), score, tpq)
    return [float(t) for t in times if t <= end_s]


def _ticks_to_seconds(ticks: npt.NDArray[np.float64], score: ScoreTick, tpq: int) -> np.ndarray:
    """The tempo map applied to arbitrary tick positions (120 bpm before the first tempo)."""
    tempos = sorted((int(t.time), int(t.mspq)) for t in score.tempos if t.mspq > 0)
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, 500_000))
    starts = np.array([t for t, _ in tempos], dtype=np.float64)
    sec_per_tick = np.array([m for _, m in tempos], dtype=np.float64) / 1e6 / tpq
    offsets = np.concatenate([[0.0], np.cumsum(np.diff(starts) * sec_per_tick[:-1])])
    idx = np.searchsorted(starts, ticks, side="right") - 1
    return offsets[idx] + (ticks - starts[idx]) * sec_per_tick[idx]


def _colours(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _summary(score: ScoreTick, n_tracks: int, end_s: float) -> str:
    notes = score.note_num()
    return f"{notes} notes · {n_tracks} track{'s' if n_tracks != 1 else ''} · {_clock(end_s)}"


def _clock(seconds: float) -> str:
    """m:ss, with a tenth of a second only when the value is not whole (short pieces)."""
    seconds = max(seconds, 0.0)
    if abs(seconds - round(seconds)) < 0.05:
        whole_min, whole_sec = divmod(int(round(seconds)), 60)
        return f"{whole_min}:{whole_sec:02d}"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}"
