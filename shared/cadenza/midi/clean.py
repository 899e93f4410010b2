"""Normalise a parsed score before tokenization, and say per file what was changed.

Pipelines Cadenza replaces each did part of this implicitly: the minGPT "midichar" idea generator
dropped drums and merged everything into one piano track, and a nanoGPT pipeline over MidiTok
REMI silently kept track 0 only. Here it is one explicit, reported step so a user can see why a
file got shorter or was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from symusic.core import NoteTickList, ScoreTick, TrackTick


@dataclass
class CleanOptions:
    """What :func:`clean_score` does; the defaults suit single-stream piano-style models."""

    drop_drums: bool = True  # drum hits are not pitches; mixed in they read as random notes
    merge_tracks: bool = True  # our models are single-stream: one track in, one track out
    program: int = 0  # GM program of the merged track (0 = Acoustic Grand Piano, as in midichar)
    keep_programs: list[int] | None = None  # keep only these programs (None = all)
    quantize: int | None = None  # grid divisions per quarter note (4 = 16ths); None = as is
    min_notes: int = 8  # fewer notes than this is not music a model can learn from
    apply_sustain: bool = True  # when merging, lengthen notes held by the sustain pedal
    dedupe: bool = True  # drop notes doubled at the same onset and pitch (unisons of parts)
    trim_overlaps: bool = True  # end a note where the same pitch starts again (as a piano does)
    keep_tracks: list[int] | None = field(default=None)  # keep only these track indexes

    def __post_init__(self) -> None:
        if not 0 <= self.program <= 127:
            raise ValueError(f"program must be 0..127, got {self.program}")
        if self.quantize is not None and self.quantize < 1:
            raise ValueError(f"quantize must be ≥ 1 divisions per quarter, got {self.quantize}")
        if self.min_notes < 0:
            raise ValueError(f"min_notes must be ≥ 0, got {self.min_notes}")


def _notes_arrays(track: TrackTick) -> dict[str, NDArray[np.int64]]:
    """A track's notes as int64 arrays (symusic gives int8 pitches that overflow in arithmetic)."""
    soa = track.notes.numpy()
    return {k: np.asarray(v, dtype=np.int64) for k, v in soa.items()}


def _apply_sustain(arr: dict[str, NDArray[np.int64]], track: TrackTick) -> int:
    """Extend notes that end under a held sustain pedal to the pedal's release; return count.

    A note is never extended past the next onset of the same pitch, which a piano would re-strike.
    """
    if len(track.pedals) == 0 or arr["time"].size == 0:
        return 0
    ped = track.pedals.numpy()
    p_start = np.asarray(ped["time"], dtype=np.int64)
    p_end = p_start + np.asarray(ped["duration"], dtype=np.int64)
    order = np.argsort(p_start)
    p_start, p_end = p_start[order], p_end[order]
    end = arr["time"] + arr["duration"]
    idx = np.searchsorted(p_start, end, side="right") - 1
    held = (idx >= 0) & (end < p_end[np.clip(idx, 0, None)])
    new_end = np.where(held, p_end[np.clip(idx, 0, None)], end)
    # clip at the next onset of the same pitch
    order = np.lexsort((arr["time"], arr["pitch"]))
    nxt = np.full(end.shape, np.iinfo(np.int64).max)
    same = arr["pitch"][order][1:] == arr["pitch"][order][:-1]
    nxt_sorted = np.where(same, arr["time"][order][1:], np.iinfo(np.int64).max)
    nxt[order[:-1]] = nxt_sorted
    new_end = np.minimum(new_end, np.maximum(nxt, end))
    changed = int(np.count_nonzero(new_end > end))
    arr["duration"] = new_end - arr["time"]
    return changed


def _make_track(
    arr: dict[str, NDArray[np.int64]], name: str, program: int, is_drum: bool
) -> TrackTick:
    """A symusic track from note arrays, sorted by (time, pitch)."""
    order = np.lexsort((arr["pitch"], arr["time"]))
    track = TrackTick(name, program, is_drum)
    track.notes = notes_from_arrays(
        arr["time"][order], arr["duration"][order], arr["pitch"][order], arr["velocity"][order]
    )
    return track


def notes_from_arrays(
    time: NDArray[Any], duration: NDArray[Any], pitch: NDArray[Any], velocity: NDArray[Any]
) -> NoteTickList:
    """A symusic note list from arrays (any int dtype; clipped to MIDI's ranges)."""
    return NoteTickList.from_numpy(
        np.ascontiguousarray(time, dtype=np.int32),
        np.ascontiguousarray(np.maximum(duration, 0), dtype=np.int32),
        np.ascontiguousarray(np.clip(pitch, 0, 127), dtype=np.int8),
        np.ascontiguousarray(np.clip(velocity, 0, 127), dtype=np.int8),
    )


def _concat(arrs: list[dict[str, NDArray[np.int64]]]) -> dict[str, NDArray[np.int64]]:
    keys = ("time", "duration", "pitch", "velocity")
    if not arrs:
        return {k: np.zeros(0, dtype=np.int64) for k in keys}
    return {k: np.concatenate([a[k] for a in arrs]) for k in keys}


def _dedupe(arr: dict[str, NDArray[np.int64]]) -> int:
    """Keep one note per (onset, pitch) — the longest, then loudest; return how many dropped."""
    n = arr["time"].size
    if n < 2:
        return 0
    order = np.lexsort((-arr["velocity"], -arr["duration"], arr["pitch"], arr["time"]))
    t, p = arr["time"][order], arr["pitch"][order]
    first = np.ones(n, dtype=bool)
    first[1:] = (t[1:] != t[:-1]) | (p[1:] != p[:-1])
    keep = order[first]
    for k in arr:
        arr[k] = arr[k][keep]
    return n - keep.size


def _trim_overlaps(arr: dict[str, NDArray[np.int64]]) -> int:
    """Shorten notes that still sound when the same pitch starts again; return how many.

    Merged parts often hold a pitch that another part re-strikes. NoteOn/NoteOff encodings
    (MIDILike, BEAT) cannot represent that overlap and pair the offs wrongly.
    """
    n = arr["time"].size
    if n < 2:
        return 0
    order = np.lexsort((arr["time"], arr["pitch"]))
    t = arr["time"][order]
    p = arr["pitch"][order]
    end = t + arr["duration"][order]
    nxt_same = np.r_[p[1:] == p[:-1], False]
    nxt_t = np.r_[t[1:], 0]
    cut = nxt_same & (end > nxt_t) & (nxt_t > t)
    if not cut.any():
        return 0
    dur = arr["duration"].copy()
    dur[order[cut]] = (nxt_t - t)[cut]
    arr["duration"] = dur
    return int(cut.sum())


def _quantize(arr: dict[str, NDArray[np.int64]], step: int) -> tuple[float, float]:
    """Snap onsets and ends to the grid (a note never shrinks below one step); mean shifts."""
    t0 = arr["time"]
    e0 = t0 + arr["duration"]
    t = np.round(t0 / step).astype(np.int64) * step
    e = np.round(e0 / step).astype(np.int64) * step
    e = np.maximum(e, t + step)
    arr["time"], arr["duration"] = t, e - t
    if t0.size == 0:
        return 0.0, 0.0
    return float(np.abs(t - t0).mean()), float(np.abs((e - t) - (e0 - t0)).mean())


_Group = tuple[str, int, bool, list[TrackTick]]  # (name, program, is_drum, source tracks)


@dataclass
class _Tally:
    """What cleaning changed, summed over the output tracks, for the report."""

    sustained: int = 0
    deduped: int = 0
    trimmed: int = 0
    dropped_bends: int = 0
    dropped_controls: int = 0
    shifts: list[tuple[float, float]] = field(default_factory=list)  # (onset, duration) per track


def clean_score(
    score: ScoreTick, opts: CleanOptions | None = None
) -> tuple[ScoreTick | None, list[str]]:
    """Apply ``opts`` to a copy of ``score``; return (score or None to skip, report lines).

    The report lists every change in words a user can read on the corpus page, and when the
    result is None its last line starts with ``skipped:`` and says why.
    """
    opts = opts or CleanOptions()
    report: list[str] = []
    tracks = _select_tracks(score, opts, report)

    out = ScoreTick(int(score.ticks_per_quarter))
    out.tempos = score.tempos.copy()
    out.time_signatures = score.time_signatures.copy()
    out.key_signatures = score.key_signatures.copy()
    step = None
    if opts.quantize is not None:
        step = max(1, round(int(score.ticks_per_quarter) / opts.quantize))

    tally = _Tally()
    for group in _group_tracks(tracks, opts, report):
        out.tracks.append(_clean_group(group, opts, step, tally))
    _report_tally(tally, opts, step, report)

    total = sum(len(t.notes) for t in out.tracks)
    if total < max(1, opts.min_notes):
        report.append(f"skipped: {total} notes left after cleaning, fewer than {opts.min_notes}")
        return None, report
    return out, report


def _select_tracks(score: ScoreTick, opts: CleanOptions, report: list[str]) -> list[TrackTick]:
    """The tracks ``opts`` keeps (by index, with notes, not drums, by program), reported."""
    tracks = list(score.tracks)
    if opts.keep_tracks is not None:
        keep = set(opts.keep_tracks)
        dropped = [i for i in range(len(tracks)) if i not in keep]
        if dropped:
            report.append(
                f"kept tracks {sorted(keep & set(range(len(tracks))))}, dropped {len(dropped)}"
            )
        tracks = [t for i, t in enumerate(tracks) if i in keep]
    empty = [t for t in tracks if len(t.notes) == 0]
    tracks = [t for t in tracks if len(t.notes) > 0]
    if empty:
        report.append(f"dropped {len(empty)} track(s) without notes")
    if opts.drop_drums:
        drums = [t for t in tracks if t.is_drum]
        if drums:
            n = sum(len(t.notes) for t in drums)
            report.append(f"dropped {len(drums)} drum track(s) ({n} notes)")
            tracks = [t for t in tracks if not t.is_drum]
    if opts.keep_programs is not None:
        allowed = set(opts.keep_programs)
        gone = [t for t in tracks if not t.is_drum and int(t.program) not in allowed]
        if gone:
            progs = sorted({int(t.program) for t in gone})
            n = sum(len(t.notes) for t in gone)
            report.append(f"dropped {len(gone)} track(s) with programs {progs} ({n} notes)")
            tracks = [t for t in tracks if t.is_drum or int(t.program) in allowed]
    return tracks


def _group_tracks(tracks: list[TrackTick], opts: CleanOptions, report: list[str]) -> list[_Group]:
    """One group per output track: with ``merge_tracks``, the pitched tracks and the drum
    tracks each become one; otherwise every track stays itself."""
    if not (opts.merge_tracks and len(tracks) > 0):
        return [(t.name, int(t.program), bool(t.is_drum), [t]) for t in tracks]
    non_drum = [t for t in tracks if not t.is_drum]
    groups: list[_Group] = []
    if non_drum:
        groups.append(("merged", opts.program, False, non_drum))
    drum_tracks = [t for t in tracks if t.is_drum]
    if drum_tracks:
        groups.append(("drums", 0, True, drum_tracks))
    if len(tracks) > 1:
        report.append(f"merged {len(tracks)} tracks into {len(groups)} (program {opts.program})")
    else:
        report.append(f"set program to {opts.program}")
    return groups


def _clean_group(group: _Group, opts: CleanOptions, step: int | None, tally: _Tally) -> TrackTick:
    """The cleaned output track of one group; what changed is added to ``tally``."""
    name, program, is_drum, members = group
    arrs = []
    for t in members:
        a = _notes_arrays(t)
        if opts.apply_sustain and opts.merge_tracks:
            tally.sustained += _apply_sustain(a, t)
        arrs.append(a)
    arr = _concat(arrs)
    bad = arr["duration"] <= 0
    if bad.any():
        arr["duration"] = np.where(bad, 1, arr["duration"])
    if step is not None:
        tally.shifts.append(_quantize(arr, step))
    if opts.dedupe:
        tally.deduped += _dedupe(arr)
    if opts.trim_overlaps and not is_drum:
        tally.trimmed += _trim_overlaps(arr)
    track = _make_track(arr, name, program, is_drum)
    if len(members) == 1 and not (opts.merge_tracks and opts.apply_sustain):
        src = members[0]
        track.controls = src.controls.copy()
        track.pitch_bends = src.pitch_bends.copy()
        track.pedals = src.pedals.copy()
    else:
        # neutral bends (value 0, which music21 writes everywhere) change nothing
        tally.dropped_bends += sum(sum(1 for b in t.pitch_bends if b.value != 0) for t in members)
        applied = 64 if opts.apply_sustain and opts.merge_tracks else -1
        tally.dropped_controls += sum(
            sum(1 for c in t.controls if c.number != applied) for t in members
        )
    return track


def _report_tally(tally: _Tally, opts: CleanOptions, step: int | None, report: list[str]) -> None:
    if tally.sustained:
        report.append(f"lengthened {tally.sustained} notes held by the sustain pedal")
    if tally.dropped_bends or tally.dropped_controls:
        report.append(
            f"dropped {tally.dropped_controls} control changes and {tally.dropped_bends} pitch "
            "bends (they do not survive merging tracks)"
        )
    if tally.deduped:
        report.append(f"removed {tally.deduped} doubled notes (same onset and pitch)")
    if tally.trimmed:
        report.append(f"shortened {tally.trimmed} notes overlapped by the same pitch")
    if step is not None and tally.shifts:
        on = max(s[0] for s in tally.shifts)
        du = max(s[1] for s in tally.shifts)
        report.append(
            f"quantized to 1/{opts.quantize} quarter ({step} ticks): mean onset shift "
            f"{on:.1f} ticks, mean duration change {du:.1f} ticks"
        )


__all__ = ["CleanOptions", "clean_score"]
