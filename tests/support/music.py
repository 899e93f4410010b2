"""The one place tests build music: real chorales, crafted scores and MIDI files, note tables.

Every test that needs MIDI bytes or a score builds it here (from (time, duration, pitch,
velocity) tuples in ticks, or raw track events for malformed files), so a change in how
symusic writes files is absorbed once.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from symusic.core import (
    ControlChangeTick,
    ScoreSecond,
    ScoreTick,
    TempoTick,
    TimeSignatureTick,
    TrackTick,
)

from cadenza.midi.clean import notes_from_arrays

# Same folder as the repository's shared `chorales` fixture, so files are exported only once.
CACHE = Path(os.environ.get("CADENZA_TEST_CACHE", Path(__file__).parents[2] / ".cache"))
N_CHORALES = 6  # enough for splits with val and test; the first 8 are cached by tests/conftest


@functools.cache
def bach_paths() -> list[Path]:
    """The first few Bach chorales from music21's corpus as .mid files (exported once)."""
    from cadenza.datasets import export_bach_chorales

    return export_bach_chorales(CACHE / "bach-midi", N_CHORALES)


def bach_pairs() -> list[tuple[str, bytes]]:
    """(file id, bytes) pairs of :func:`bach_paths`, the shape build_corpus takes."""
    return [(p.stem, p.read_bytes()) for p in bach_paths()]


#: Programs given to a chorale's parts, in track order, by :func:`multitrack_pairs`: flute,
#: clarinet, cello, electric bass (and a fifth part, when there is one, on piano).
PART_PROGRAMS = (73, 71, 42, 33, 0)


def multitrack_chorale(data: bytes) -> bytes:
    """A chorale's MIDI with each part (track) on its own program (:data:`PART_PROGRAMS`) and
    empty tracks dropped: real multi-track music, as a band's file would have it."""
    from symusic import Score

    score = Score.from_midi(data)
    kept = [t for t in score.tracks if len(t.notes) > 0]
    for k, track in enumerate(kept):
        track.program = PART_PROGRAMS[k % len(PART_PROGRAMS)]
    score.tracks = type(score.tracks)(kept)
    out: bytes = score.dumps_midi()
    return out


def multitrack_pairs() -> list[tuple[str, bytes]]:
    """:func:`bach_pairs` with every part on its own program (:func:`multitrack_chorale`)."""
    return [(name, multitrack_chorale(data)) for name, data in bach_pairs()]


Note = tuple[int, int, int, int]  # time, duration, pitch, velocity (ticks)


def make_score(
    notes: Iterable[Note],
    *,
    tpq: int = 480,
    qpm: float = 120.0,
    program: int = 0,
    drum_notes: Iterable[Note] = (),
    ts: tuple[int, int] = (4, 4),
    tracks: int = 1,
    pedals: Iterable[tuple[int, int]] = (),
) -> ScoreTick:
    """A score from (time, duration, pitch, velocity) in ticks: the notes on `tracks` piano
    tracks (programs `program`, `program + 1`, …) plus an optional drum track. A track with no
    notes is left out. `pedals` are (down, up) ticks of the sustain pedal (CC64 127 / 0) on the
    first track."""
    score = ScoreTick(tpq)
    score.tempos.append(TempoTick(0, qpm))
    score.time_signatures.append(TimeSignatureTick(0, ts[0], ts[1]))
    pitched = list(notes)
    parts = [("piano", program + k, False, pitched) for k in range(tracks)]
    for name, prog, drum, ns in (*parts, ("drums", 0, True, drum_notes)):
        arr = np.asarray(list(ns), dtype=np.int64).reshape(-1, 4)
        if arr.size == 0:
            continue
        track = TrackTick(name, prog, drum)
        track.notes = notes_from_arrays(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
        score.tracks.append(track)
    for down, up in pedals:
        score.tracks[0].controls.append(ControlChangeTick(down, 64, 127))
        score.tracks[0].controls.append(ControlChangeTick(up, 64, 0))
    return score


def midi_bytes(notes: Iterable[Note], **kw: object) -> bytes:
    """:func:`make_score` written as a MIDI file."""
    data: bytes = make_score(notes, **kw).dumps_midi()  # type: ignore[arg-type]
    return data


def _mtrk(events: bytes) -> bytes:
    body = events + b"\x00\xff\x2f\x00"
    return b"MTrk" + struct.pack(">I", len(body)) + body


def smf(tracks: Sequence[bytes], *, fmt: int = 1, division: int = 480) -> bytes:
    """A Standard MIDI File from raw track event bytes (end-of-track added)."""
    head = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks), division)
    return head + b"".join(_mtrk(t) for t in tracks)


def track_bomb(chunks: int) -> bytes:
    """A small file that makes symusic allocate a lot: every chunk uses all 16 channels × 128
    programs, and symusic creates one track per (chunk, channel, program). 88 chunks ≈ 2 MB of
    file become ~180,000 tracks and ~1 GB of memory, taking about a second to parse."""
    ev = bytearray()
    for ch in range(16):
        for prog in range(128):
            ev += bytes([0, 0xC0 | ch, prog, 0, 0x90 | ch, 60, 64, 1, 0x80 | ch, 60, 0])
    return smf([bytes(ev)] * chunks)


def many_notes(n: int) -> bytes:
    """One track with ``n`` one-tick notes in running status (6 bytes per note)."""
    ev = b"\x00\x90\x3c\x40\x01\x3c\x00" + b"\x00\x3c\x40\x01\x3c\x00" * (n - 1)
    return smf([ev], fmt=0)


def rmid(smf_bytes: bytes) -> bytes:
    """Wrap a Standard MIDI File in a RIFF RMID container."""
    pad = b"\x00" if len(smf_bytes) % 2 else b""
    data = b"data" + struct.pack("<I", len(smf_bytes)) + smf_bytes + pad
    return b"RIFF" + struct.pack("<I", 4 + len(data)) + b"RMID" + data


def notes_in_quarters(score: ScoreTick) -> np.ndarray:
    """All pitched notes as rows (onset, duration, pitch) in quarter notes, sorted."""
    tpq = float(score.ticks_per_quarter)
    rows = [
        (n.time / tpq, n.duration / tpq, n.pitch)
        for t in score.tracks
        if not t.is_drum
        for n in t.notes
    ]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 3)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))] if arr.size else arr


def notes_in_seconds(score: ScoreTick) -> np.ndarray:
    """All pitched notes as rows (onset s, duration s, pitch, velocity), sorted."""
    sec = score.to("second")
    assert isinstance(sec, ScoreSecond)
    rows = [
        (n.time, n.duration, n.pitch, n.velocity)
        for t in sec.tracks
        if not t.is_drum
        for n in t.notes
    ]
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))] if arr.size else arr


@functools.cache
def chorale_recordings(seconds: float = 20.0, sample_rate: int = 16000) -> list[Path]:
    """:func:`bach_paths` rendered with the project's renderer (General MIDI soundfont) to
    16-bit WAV at ``sample_rate``, each cut to its first ``seconds``: "recordings" for the
    audio tests (cached beside the MIDI, so rendered once per machine)."""
    from symusic import Score

    from cadenza.render.audio import render_midi

    out_dir = CACHE / f"bach-wav-{int(seconds)}s-{sample_rate}"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for src in bach_paths():
        dst = out_dir / f"{src.stem}.wav"
        if not dst.exists():
            score = Score.from_midi(src.read_bytes())
            cut = score.to("second").clip(0.0, seconds).to("tick")
            wav = render_midi(cut.dumps_midi(), fmt="wav", sample_rate=sample_rate)
            tmp = dst.with_suffix(".tmp")
            tmp.write_bytes(wav)
            tmp.replace(dst)
        paths.append(dst)
    return paths


def note_scores(reference: bytes, estimate: bytes) -> dict[str, float]:
    """mir_eval's note F1s (the MIREX measures: onsets within 50 ms; offsets within 20 % of the
    note or 50 ms): ``onset``; ``offset``, notes as they sound (a note released while its
    file's sustain pedal is down lasts until the pedal lifts, in reference and estimate alike);
    ``offset_keys``, notes as the keys were held (pedal ignored)."""
    import mir_eval

    score = mir_eval.transcription.precision_recall_f1_overlap
    ref, est = _notes(reference, sustain=True), _notes(estimate, sustain=True)
    ref_keys, est_keys = _notes(reference), _notes(estimate)
    return {
        "onset": score(*ref, *est, offset_ratio=None)[2],
        "offset": score(*ref, *est)[2],
        "offset_keys": score(*ref_keys, *est_keys)[2],
    }


def _notes(midi: bytes, *, sustain: bool = False) -> tuple[np.ndarray, np.ndarray]:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(midi))
    notes = [n for i in pm.instruments for n in i.notes]
    pedal = [c for i in pm.instruments for c in i.control_changes if c.number == 64]
    downs = [(d.time, u.time) for d, u in zip(pedal[::2], pedal[1::2], strict=True)]
    intervals = np.array([[n.start, n.end] for n in notes]).reshape(-1, 2)
    if sustain:
        for row in intervals:
            row[1] = max([row[1]] + [up for down, up in downs if down <= row[1] < up])
    return intervals, np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])
