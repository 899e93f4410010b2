"""MIDI loading under limits (upload-time validation in a bounded child) and cleaning."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from symusic.core import PedalTick, ScoreTick

from cadenza.midi.clean import CleanOptions, clean_score
from cadenza.midi.load import (
    REJECT_CODES,
    MidiInfo,
    MidiLimits,
    MidiRejected,
    inspect_midi,
    load_score,
    sniff_midi,
)
from tests.support.music import (
    bach_paths,
    make_score,
    many_notes,
    midi_bytes,
    rmid,
    smf,
    track_bomb,
)


@pytest.fixture(scope="session")
def bach_midi() -> list[Path]:
    return bach_paths()


def _code(data: bytes, limits: MidiLimits = MidiLimits()) -> str:
    with pytest.raises(MidiRejected) as err:
        inspect_midi(data, limits)
    assert err.value.code in REJECT_CODES
    assert len(str(err.value)) > 20  # a sentence a person can act on, not a bare code
    return err.value.code


# ---- sniffing and structure ---------------------------------------------------------------


def test_sniff_midi_by_magic_bytes(bach_midi: list[Path]) -> None:
    head = bach_midi[0].read_bytes()[:16]
    assert sniff_midi(head)
    assert sniff_midi(rmid(bach_midi[0].read_bytes())[:16])
    assert not sniff_midi(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    assert not sniff_midi(b"ID3\x03\x00")
    assert not sniff_midi(b"")


def test_real_chorale_is_measured(bach_midi: list[Path]) -> None:
    data = bach_midi[0].read_bytes()
    info = inspect_midi(data)
    score = ScoreTick.from_midi(data)
    assert isinstance(info, MidiInfo)
    assert info.notes == score.note_num() > 100
    assert info.tracks == sum(1 for t in score.tracks if len(t.notes))
    assert info.ticks_per_quarter == score.ticks_per_quarter
    assert 10 < info.duration_s < 600
    assert info.programs and not info.has_drums
    assert info.to_dict()["programs"] == list(info.programs)


def test_rmid_container_is_unwrapped(bach_midi: list[Path]) -> None:
    data = bach_midi[1].read_bytes()
    assert inspect_midi(rmid(data)) == inspect_midi(data)
    assert load_score(rmid(data)).note_num() == ScoreTick.from_midi(data).note_num()


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("empty", "empty"),
        ("text", "not_midi"),
        ("wav", "not_midi"),
        ("truncated", "truncated"),
        ("header_only", "truncated"),
        ("corrupt_events", "unparseable"),
        ("smpte", "unparseable"),
        ("no_tracks", "empty"),
        ("no_notes", "empty"),
        ("rmid_without_data", "not_midi"),
        ("huge", "too_large"),
    ],
)
def test_bad_files_are_rejected_with_their_code(
    name: str, code: str, bach_midi: list[Path]
) -> None:
    real = bach_midi[0].read_bytes()
    cases = {
        "empty": b"",
        "text": b"<html>this is not a MIDI file</html>" * 3,
        "wav": b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 40,
        "truncated": real[: len(real) * 2 // 3],
        "header_only": real[:14],
        # a valid header and chunk, but the events are data bytes with no status byte
        "corrupt_events": smf([b"\x00\x3c\x40" * 10]),
        "smpte": b"MThd" + struct.pack(">IHHH", 6, 0, 1, 0xE728) + real[14:],
        "no_tracks": b"MThd" + struct.pack(">IHHH", 6, 1, 0, 480),
        "no_notes": smf([b"\x00\xff\x51\x03\x07\xa1\x20"]),
        "rmid_without_data": b"RIFF\x0c\x00\x00\x00RMIDLIST\x00\x00\x00\x00",
        "huge": real + b"\x00" * MidiLimits().max_bytes,  # refused before any parsing
    }
    assert _code(cases[name]) == code


def test_size_and_content_limits(bach_midi: list[Path]) -> None:
    data = bach_midi[0].read_bytes()
    assert _code(data, MidiLimits(max_bytes=len(data) - 1)) == "too_large"
    assert _code(data, MidiLimits(max_notes=50)) == "too_many_notes"
    assert _code(data, MidiLimits(max_tracks=1)) == "too_many_tracks"
    assert _code(data, MidiLimits(max_seconds=5.0)) == "too_long"
    assert _code(data, MidiLimits(max_ticks=1000)) == "too_long"
    assert _code(many_notes(20_000), MidiLimits(max_notes=10_000)) == "too_many_notes"


def test_memory_bomb_is_stopped_by_the_child_limit() -> None:
    """~2 MB of file that expands to ~1 GB inside the parser: the child's address-space limit
    stops it and the caller gets a clean rejection, not an OOM-killed server."""
    bomb = track_bomb(88)
    assert len(bomb) < 2_100_000
    assert _code(bomb, MidiLimits(memory_bytes=96 << 20)) == "too_complex"


def test_slow_parse_is_killed_at_the_wall_timeout() -> None:
    """The same file needs about a second of parsing; a 50 ms limit kills the child."""
    bomb = track_bomb(88)
    assert _code(bomb, MidiLimits(timeout_s=0.05, memory_bytes=4 << 30)) == "timeout"


def test_sandbox_keeps_working_after_kills_and_under_threads(bach_midi: list[Path]) -> None:
    _code(track_bomb(40), MidiLimits(timeout_s=0.02, memory_bytes=4 << 30))
    files = [p.read_bytes() for p in bach_midi]
    with ThreadPoolExecutor(4) as pool:
        infos = list(pool.map(inspect_midi, files * 2))
    assert [i.notes for i in infos] == [ScoreTick.from_midi(f).note_num() for f in files * 2]


def test_load_score_turns_parser_errors_into_rejections() -> None:
    with pytest.raises(MidiRejected) as err:
        load_score(smf([b"\x00\x3c\x40" * 10]))
    assert err.value.code == "unparseable"
    with pytest.raises(MidiRejected):
        load_score(b"not midi")


def test_limits_also_apply_in_process(bach_midi: list[Path]) -> None:
    with pytest.raises(MidiRejected) as err:
        load_score(bach_midi[0].read_bytes(), MidiLimits(max_notes=10))
    assert err.value.code == "too_many_notes"


# ---- cleaning ------------------------------------------------------------------------------


def _notes(
    n: int, start: int = 0, step: int = 240, pitch: int = 60
) -> list[tuple[int, int, int, int]]:
    return [(start + i * step, step, pitch + i % 12, 80) for i in range(n)]


def test_clean_drops_drums_and_merges_into_one_piano_track(bach_midi: list[Path]) -> None:
    score = load_score(bach_midi[0].read_bytes())
    assert len(score.tracks) > 1
    drums = [(i * 120, 60, 36, 100) for i in range(20)]
    with_drums = make_score(_notes(30), drum_notes=drums, program=40)
    out, report = clean_score(with_drums, CleanOptions())
    assert out is not None
    assert len(out.tracks) == 1 and out.tracks[0].program == 0 and not out.tracks[0].is_drum
    assert out.note_num() == 30
    assert any("drum" in line for line in report)

    merged, report = clean_score(score, CleanOptions(program=19))
    assert merged is not None and len(merged.tracks) == 1 and merged.tracks[0].program == 19
    assert any(line.startswith("merged") for line in report)
    # doubled parts (same onset and pitch) are kept once
    pairs = {(n.time, n.pitch) for t in score.tracks for n in t.notes}
    assert merged.note_num() == len(pairs)


def test_clean_keeps_tracks_apart_when_asked(bach_midi: list[Path]) -> None:
    score = load_score(bach_midi[0].read_bytes())
    out, _ = clean_score(score, CleanOptions(merge_tracks=False, dedupe=False))
    assert out is not None
    assert len(out.tracks) == sum(1 for t in score.tracks if len(t.notes))
    assert out.note_num() == score.note_num()


def test_clean_keep_programs() -> None:
    score = make_score(_notes(20), program=40)
    out, report = clean_score(score, CleanOptions(keep_programs=[0, 1]))
    assert out is None
    assert report[-1].startswith("skipped:")
    assert any("programs [40]" in line for line in report)


def test_clean_quantizes_to_the_grid() -> None:
    notes = [(i * 240 + (i % 5) * 7 - 14, 230 + (i % 3) * 9, 60 + i % 7, 80) for i in range(1, 40)]
    out, report = clean_score(make_score(notes), CleanOptions(quantize=4))
    assert out is not None
    step = 480 // 4
    assert all(
        n.time % step == 0 and n.duration % step == 0 and n.duration > 0
        for n in out.tracks[0].notes
    )
    assert any(line.startswith("quantized") for line in report)


def test_clean_skips_files_with_too_few_notes() -> None:
    out, report = clean_score(make_score(_notes(5)), CleanOptions(min_notes=8))
    assert out is None and "5 notes" in report[-1]
    out, _ = clean_score(make_score(_notes(5)), CleanOptions(min_notes=5))
    assert out is not None


def test_clean_applies_the_sustain_pedal_when_merging() -> None:
    score = make_score(
        [(0, 100, 60, 80), (480, 100, 64, 80), (2000, 100, 67, 80), (2100, 100, 60, 80)]
        + _notes(8, start=4000)
    )
    score.tracks[0].pedals.append(PedalTick(0, 1000))
    out, report = clean_score(score, CleanOptions())
    assert out is not None
    by = {(n.time, n.pitch): n.duration for n in out.tracks[0].notes}
    assert by[(0, 60)] == 1000 and by[(480, 64)] == 520  # held to the pedal release
    assert by[(2000, 67)] == 100  # after the pedal: unchanged
    assert any("sustain" in line for line in report)
    out2, _ = clean_score(score, CleanOptions(apply_sustain=False))
    assert out2 is not None
    assert {(n.time, n.pitch): n.duration for n in out2.tracks[0].notes}[(0, 60)] == 100


def test_clean_options_are_checked() -> None:
    with pytest.raises(ValueError, match="program"):
        CleanOptions(program=200)
    with pytest.raises(ValueError, match="quantize"):
        CleanOptions(quantize=0)


def test_crafted_midi_helper_round_trips() -> None:
    data = midi_bytes(_notes(12))
    assert inspect_midi(data).notes == 12


def test_export_bach_chorales_caches(tmp_path: Path) -> None:
    from cadenza.datasets import bach_chorale_sources, export_bach_chorales

    assert len(bach_chorale_sources()) >= 400
    (first,) = export_bach_chorales(tmp_path, 1, start=2)
    assert first.suffix == ".mid" and inspect_midi(first.read_bytes()).notes > 50
    stamp = first.stat().st_mtime_ns
    assert export_bach_chorales(tmp_path, 1, start=2) == [first]
    assert first.stat().st_mtime_ns == stamp  # reused, not exported again
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError):
        export_bach_chorales(tmp_path, 1, start=10_000)
