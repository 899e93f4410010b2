"""Objective metrics: exact values on music built here, odd files, the summary maths, and
agreement with muspy (the reference implementation) and with slow dense re-implementations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from itertools import combinations
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symusic.core import ScoreTick, TrackTick

from cadenza.evaluate import (
    GROOVE_GRID,
    METRICS,
    compare,
    corpus_metrics,
    excerpt_metrics,
    midi_metrics,
    score_metrics,
    summarize,
)
from cadenza.midi import MidiRejected
from tests.support.music import Note, make_score, midi_bytes, smf

Q = 480  # ticks per quarter in the hand-built files
C_MAJOR = (60, 62, 64, 65, 67, 69, 71)


def quarters(pitches: Sequence[int], *, start: int = 0, length: int = Q) -> list[Note]:
    """One note per quarter from quarter ``start`` on, each ``length`` ticks long."""
    return [((start + i) * Q, length, p, 80) for i, p in enumerate(pitches)]


# --------------------------------------------------------------------------------------------
# exact values on music built here


def test_c_major_scale() -> None:
    m = midi_metrics(midi_bytes(quarters(C_MAJOR)))
    assert set(m) == set(METRICS)
    assert m["scale_consistency"] == 1.0
    assert m["pitch_class_entropy"] == pytest.approx(math.log2(7))
    assert m["polyphony"] == 1.0
    assert m["pitch_range"] == 11.0
    assert m["n_pitches_used"] == 7.0
    assert m["empty_beat_rate"] == 0.0
    # bar 1 has onsets on all four beats, bar 2 on three: one grid position differs
    assert m["groove_consistency"] == pytest.approx(1 - 1 / (4 * GROOVE_GRID))


def test_chromatic_notes_lower_scale_consistency_and_raise_entropy() -> None:
    m = midi_metrics(midi_bytes(quarters(range(60, 72))))
    assert m["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert m["scale_consistency"] == pytest.approx(7 / 12)


def test_chord_progression_has_polyphony_three() -> None:
    chords = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]  # C F G C, a bar each
    notes = [(bar * 4 * Q, 4 * Q, p, 80) for bar, chord in enumerate(chords) for p in chord]
    m = midi_metrics(midi_bytes(notes))
    assert m["polyphony"] == 3.0
    assert m["scale_consistency"] == 1.0
    assert m["groove_consistency"] == 1.0  # one onset on each downbeat
    assert m["empty_beat_rate"] == 0.0


def test_unison_doubling_counts_once_in_polyphony() -> None:
    """Like muspy's binary piano roll: two parts on the same pitch are one sounding pitch."""
    notes = [(0, 4 * Q, 60, 80), (0, 4 * Q, 60, 80), (0, 2 * Q, 64, 80)]
    m = midi_metrics(midi_bytes(notes))
    assert m["polyphony"] == pytest.approx((4 + 2) / 4)


def test_silence_gives_empty_beats() -> None:
    bar = [60, 62, 64, 65]
    notes = quarters(bar) + quarters(bar, start=12)  # bars 2 and 3 are rests
    m = midi_metrics(midi_bytes(notes))
    assert m["empty_beat_rate"] == 0.5  # 8 of 16 beats


def test_note_density_and_empty_bars() -> None:
    """Bars 2 and 3 of four are rests: 8 notes over 4 bars, half the bars empty."""
    bar = [60, 62, 64, 65]
    m = midi_metrics(midi_bytes(quarters(bar) + quarters(bar, start=12)))
    assert m["note_density"] == 2.0
    assert m["empty_bar_rate"] == 0.5


def test_a_single_rest_after_a_held_note_is_an_empty_beat() -> None:
    """The case where muspy 0.5.0's code (end // beat, inclusive) would report no empty beat."""
    m = midi_metrics(midi_bytes(quarters([60]) + quarters([62], start=2)))
    assert m["empty_beat_rate"] == pytest.approx(1 / 3)


def test_regular_rhythm_has_groove_consistency_one() -> None:
    eighths = [(i * Q // 2, Q // 2, 60 + i % 5, 80) for i in range(8 * 8)]  # 8 bars of 8ths
    assert midi_metrics(midi_bytes(eighths))["groove_consistency"] == 1.0
    # move one onset in bar 4 by a 16th: it now differs from bar 3 and from bar 5 at 2 positions
    moved = [
        (t + Q // 4 if i == 3 * 8 + 2 else t, d, p, v) for i, (t, d, p, v) in enumerate(eighths)
    ]
    expected = 1 - 4 / (7 * 4 * GROOVE_GRID)
    assert midi_metrics(midi_bytes(moved))["groove_consistency"] == pytest.approx(expected)


def test_groove_uses_the_time_signature() -> None:
    # four bars of 3/4 in half + quarter: onsets on beats 1 and 3 of every bar
    waltz = [(b * Q, (2 if b % 3 == 0 else 1) * Q, 60, 80) for b in range(12) if b % 3 != 1]
    assert midi_metrics(midi_bytes(waltz, ts=(3, 4)))["groove_consistency"] == 1.0
    as_common_time = midi_metrics(midi_bytes(waltz, ts=(4, 4)))["groove_consistency"]
    assert as_common_time is not None and as_common_time < 1.0


def test_drums_count_for_rhythm_but_not_for_pitch() -> None:
    piano = quarters([60, 64, 67, 72])
    drums = quarters([36, 38, 36, 38], start=4)
    m = midi_metrics(midi_bytes(piano, drum_notes=drums))
    assert m["empty_beat_rate"] == 0.0
    assert m["n_pitches_used"] == 4.0
    assert m["pitch_range"] == 12.0
    assert m["polyphony"] == 1.0
    only_drums = midi_metrics(midi_bytes([], drum_notes=drums))
    assert only_drums["pitch_class_entropy"] is None
    assert only_drums["pitch_range"] is None
    assert only_drums["n_pitches_used"] == 0.0
    assert only_drums["empty_beat_rate"] == 0.5  # beats 0-3 silent, drums on 4-7


# --------------------------------------------------------------------------------------------
# empty and odd files


@pytest.mark.parametrize(
    "data",
    [
        ScoreTick(Q).dumps_midi(),  # what symusic writes for an empty score: no track at all
        smf([b""]),  # one track chunk with nothing but end-of-track
    ],
    ids=["no-tracks", "empty-track"],
)
def test_file_without_notes_has_no_metrics(data: bytes) -> None:
    m = midi_metrics(data)
    zero = ("n_pitches_used", "note_density")
    assert m == {name: (0.0 if name in zero else None) for name in METRICS}


def test_empty_track_in_a_score_is_ignored() -> None:
    score = make_score(quarters(C_MAJOR))
    score.tracks.append(TrackTick("silent", 0, False))
    assert score_metrics(score) == midi_metrics(midi_bytes(quarters(C_MAJOR)))


def test_not_midi_raises_a_rejection() -> None:
    with pytest.raises(MidiRejected):
        midi_metrics(b"RIFF....WAVEfmt ")


def test_zero_length_notes() -> None:
    m = midi_metrics(midi_bytes([(0, 0, 60, 80), (Q, 0, 64, 80), (2 * Q, 0, 67, 80)]))
    assert m["polyphony"] is None  # nothing ever sounds on the piano roll
    assert m["n_pitches_used"] == 3.0
    assert m["pitch_class_entropy"] == pytest.approx(math.log2(3))
    assert m["empty_beat_rate"] == 0.0  # each onset still marks its beat
    assert m["groove_consistency"] is None  # less than two bars


def test_single_note() -> None:
    m = midi_metrics(midi_bytes([(0, Q, 60, 80)]))
    assert m["pitch_class_entropy"] == 0.0
    assert m["scale_consistency"] == 1.0
    assert m["polyphony"] == 1.0
    assert m["pitch_range"] == 0.0
    assert m["empty_beat_rate"] == 0.0
    assert m["groove_consistency"] is None


def test_file_without_tempo_or_time_signature() -> None:
    # note on C4, a quarter (delta 480 = VLQ 83 60) later note off; no meta events at all
    one_bar = b"".join(
        bytes([0x00, 0x90, p, 64, 0x83, 0x60, 0x80, p, 64])
        for p in (60, 62, 64, 65, 67, 69, 71, 72)
    )
    m = midi_metrics(smf([one_bar]))
    assert m["n_pitches_used"] == 8.0
    assert m["groove_consistency"] == 1.0  # 4/4 assumed: two identical bars of quarters


def test_far_away_note_is_cheap_and_bounded() -> None:
    """A note ~10**8 beats in must not make anything the size of the timeline (muspy would)."""
    m = midi_metrics(midi_bytes([(0, Q, 60, 80), (1 << 27, Q, 62, 80)], tpq=1))
    assert m["empty_beat_rate"] is not None and 0.999 < m["empty_beat_rate"] < 1.0
    assert m["groove_consistency"] is not None and 0.999 < m["groove_consistency"] < 1.0
    assert m["polyphony"] == 1.0


# --------------------------------------------------------------------------------------------
# summaries and comparison


def test_summarize_skips_undefined_values() -> None:
    rows: list[dict[str, float | None]] = [
        {"polyphony": 1.0, "pitch_range": None},
        {"polyphony": 3.0, "pitch_range": 12.0},
        {"polyphony": float("nan"), "pitch_range": 24.0},
        {"polyphony": 2.0},
    ]
    s = summarize(rows)
    assert s["polyphony"] == pytest.approx({"mean": 2.0, "std": math.sqrt(2 / 3), "n": 3})
    assert s["pitch_range"] == {"mean": 18.0, "std": 6.0, "n": 2}
    assert "groove_consistency" not in s  # defined in no file: left out, never NaN
    assert summarize([]) == {}


def test_compare_gives_z_scores_side_by_side() -> None:
    corpus = {
        "polyphony": {"mean": 4.0, "std": 0.5, "n": 10},
        "pitch_range": {"mean": 30.0, "std": 0.0, "n": 10},
        "scale_consistency": {"mean": 0.9, "std": 0.05, "n": 10},
    }
    sample = {"polyphony": 3.0, "pitch_range": 30.0, "scale_consistency": None}
    c = compare(sample, corpus)
    assert list(c) == list(METRICS)
    assert c["polyphony"] == {"sample": 3.0, "corpus_mean": 4.0, "corpus_std": 0.5, "z": -2.0}
    assert c["pitch_range"]["z"] is None  # no spread in the corpus: z is undefined
    assert c["scale_consistency"] == {
        "sample": None,
        "corpus_mean": 0.9,
        "corpus_std": 0.05,
        "z": None,
    }
    assert c["groove_consistency"] == dict.fromkeys(("sample", "corpus_mean", "corpus_std", "z"))


def test_corpus_metrics_subsamples_deterministically() -> None:
    files = [midi_bytes(quarters(range(60, 61 + 2 * k))) for k in range(6)]  # ranges differ
    per_file = [midi_metrics(f) for f in files]
    full = corpus_metrics(files)
    assert full == summarize(per_file)

    small = corpus_metrics(files, max_files=3, seed=7)
    assert small["n_pitches_used"]["n"] == 3
    assert small == corpus_metrics(files, max_files=3, seed=7)
    assert small == corpus_metrics(iter(files), max_files=3, seed=7)  # a stream picks the same
    subsets = [summarize([per_file[i] for i in idx]) for idx in combinations(range(6), 3)]
    assert small in subsets
    picks = {str(corpus_metrics(files, max_files=3, seed=s)) for s in range(10)}
    assert len(picks) > 1  # the seed matters


def test_corpus_metrics_skips_unreadable_files() -> None:
    good = midi_bytes(quarters(C_MAJOR))
    s = corpus_metrics([good, b"not a midi file", good])
    assert s["scale_consistency"] == {"mean": 1.0, "std": 0.0, "n": 2}


def test_excerpt_metrics_measure_openings_at_the_samples_length() -> None:
    """A stream of "pieces" whose tokens are pitches: excerpts are cut at the starts given, to
    the length asked (clipped at the stream's end), and decoded by the caller's function."""
    stream = [*range(60, 72), *range(40, 64)]  # two pieces: 12 pitches from 60, 24 from 40
    decoded: list[list[int]] = []

    def decode(ids: Sequence[int]) -> bytes:
        decoded.append(list(ids))
        return midi_bytes(quarters(ids))

    short = excerpt_metrics(stream, [0, 12], 4, decode)
    assert decoded == [[60, 61, 62, 63], [40, 41, 42, 43]]
    assert short["n_pitches_used"] == {"mean": 4.0, "std": 0.0, "n": 2}
    assert short["pitch_range"]["mean"] == 3.0  # a whole piece spans 11 or 23 semitones
    long = excerpt_metrics(stream, [0, 12], 30, decode)
    assert long["n_pitches_used"]["mean"] == (30 + 24) / 2  # the second one is clipped
    assert excerpt_metrics(stream, [0, 12], 4, decode, max_excerpts=1)["pitch_range"]["n"] == 1
    with pytest.raises(ValueError, match="length"):
        excerpt_metrics(stream, [0], 0, decode)


# --------------------------------------------------------------------------------------------
# real music


def test_bach_chorales_are_in_plausible_ranges(chorales: list[Path]) -> None:
    rows = [midi_metrics(p.read_bytes()) for p in chorales[:3]]
    for m in rows:
        assert m["scale_consistency"] is not None and m["scale_consistency"] > 0.9
        assert m["pitch_class_entropy"] is not None and 2.3 < m["pitch_class_entropy"] < 3.4
        assert m["polyphony"] is not None and 3.0 < m["polyphony"] <= 5.0  # SATB (+ doublings)
        assert m["empty_beat_rate"] is not None and m["empty_beat_rate"] < 0.05
        assert m["groove_consistency"] is not None and 0.85 < m["groove_consistency"] <= 1.0
        assert m["pitch_range"] is not None and 20 <= m["pitch_range"] <= 48
    corpus = corpus_metrics(p.read_bytes() for p in chorales[:3])
    assert corpus["scale_consistency"]["n"] == 3
    poly = [x for m in rows if (x := m["polyphony"]) is not None]
    assert len(poly) == 3
    mean = sum(poly) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in poly) / 3)
    assert compare(rows[0], corpus)["polyphony"] == pytest.approx(
        {"sample": poly[0], "corpus_mean": mean, "corpus_std": std, "z": (poly[0] - mean) / std}
    )


# --------------------------------------------------------------------------------------------
# agreement with muspy and with dense reference implementations


def _to_muspy(score: ScoreTick) -> object:
    import muspy

    tracks = [
        muspy.Track(
            program=int(t.program),
            is_drum=bool(t.is_drum),
            notes=[
                muspy.Note(time=n.time, pitch=n.pitch, duration=n.duration, velocity=n.velocity)
                for n in t.notes
            ],
        )
        for t in score.tracks
    ]
    return muspy.Music(resolution=int(score.ticks_per_quarter), tracks=tracks)


def _nan_to_none(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def _assert_matches_muspy(score: ScoreTick) -> None:
    """The metrics whose muspy 0.5.0 code follows its formula must agree with it exactly."""
    muspy = pytest.importorskip("muspy")
    ours = score_metrics(score)
    if score.note_num() == 0:
        return  # muspy raises on a score without notes (max() of an empty sequence)
    music = _to_muspy(score)
    theirs = {
        "pitch_class_entropy": _nan_to_none(muspy.pitch_class_entropy(music)),
        "scale_consistency": _nan_to_none(muspy.scale_consistency(music)),
        "polyphony": _nan_to_none(muspy.polyphony(music)),
        "n_pitches_used": float(muspy.n_pitches_used(music)),
    }
    if ours["n_pitches_used"]:  # muspy says 0 (or -127 with drums) where the range is undefined
        theirs["pitch_range"] = float(muspy.pitch_range(music))
    for name, value in theirs.items():
        if value is None:
            assert ours[name] is None, name
        else:
            assert ours[name] == pytest.approx(value, rel=1e-12), name


def test_matches_muspy_on_bach(chorales: list[Path]) -> None:
    for path in chorales[:3]:
        # muspy's dense piano roll at music21's 10080 ticks per quarter takes ~1 s per file
        _assert_matches_muspy(ScoreTick.from_midi(path.read_bytes()).resample(24))


def test_matches_muspy_on_rhythm_away_from_beat_boundaries() -> None:
    """Where no note ends exactly on a beat or bar line, muspy's code and ours agree on the
    rhythm metrics too (see the module docstring for where they differ, and why)."""
    muspy = pytest.importorskip("muspy")
    tpq = GROOVE_GRID  # muspy measures groove on raw ticks: make them our grid
    onsets = [0, 12, 24, 36, 48, 66, 84, 144, 156, 168, 180]  # bar 3 (96..143) is a rest
    score = make_score([(t, 5, 60 + i, 80) for i, t in enumerate(onsets)], tpq=tpq)
    ours = score_metrics(score)
    music = _to_muspy(score)
    assert ours["empty_beat_rate"] == pytest.approx(5 / 16)  # beats 6 and 8..11
    assert ours["empty_beat_rate"] == pytest.approx(muspy.empty_beat_rate(music))
    assert ours["groove_consistency"] == pytest.approx(1 - (3 + 3 + 4) / (3 * 48))
    assert ours["groove_consistency"] == pytest.approx(
        muspy.groove_consistency(music, measure_resolution=4 * tpq)
    )


def _dense_empty_beat_rate(notes: list[Note], tpq: int) -> float | None:
    """The documented definition, beat by beat."""
    if not notes:
        return None
    n_beats = max(max(-(-(t + d) // tpq), t // tpq + 1) for t, d, _, _ in notes)
    full = [False] * n_beats
    for b in range(n_beats):
        lo, hi = b * tpq, (b + 1) * tpq
        full[b] = any((t < hi and t + d > lo) or (d == 0 and lo <= t < hi) for t, d, _, _ in notes)
    return 1 - sum(full) / n_beats


def _dense_groove(notes: list[Note], tpq: int, ts: tuple[int, int]) -> float | None:
    """The documented definition on an explicit bars × positions matrix."""
    if not notes:
        return None
    bar = max(round(GROOVE_GRID * 4 * ts[0] / ts[1]), 1)
    grid = [math.floor(Fraction(t * GROOVE_GRID, tpq) + Fraction(1, 2)) for t, _, _, _ in notes]
    end = math.ceil(Fraction(max(t + d for t, d, _, _ in notes) * GROOVE_GRID, tpq))
    n_bars = max(math.ceil(end / bar), max(grid) // bar + 1)
    if n_bars < 2:
        return None
    rows = [[False] * bar for _ in range(n_bars)]
    for q in grid:
        rows[q // bar][q % bar] = True
    dist = sum(a != b for i in range(n_bars - 1) for a, b in zip(rows[i], rows[i + 1], strict=True))
    return 1 - dist / (bar * (n_bars - 1))


notes_st = st.lists(
    st.tuples(
        st.integers(0, 400),  # time
        st.integers(0, 120),  # duration (zero-length notes included)
        st.integers(0, 127),  # pitch
        st.integers(1, 127),  # velocity
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    notes=notes_st,
    drums=notes_st.map(lambda ns: ns[:4]),
    tpq=st.sampled_from([5, 12, 48]),
    ts=st.sampled_from([(4, 4), (3, 4), (6, 8), (5, 16)]),
)
def test_random_scores_agree_with_dense_references(
    notes: list[Note], drums: list[Note], tpq: int, ts: tuple[int, int]
) -> None:
    score = make_score(notes, drum_notes=drums, tpq=tpq, ts=ts)
    ours = score_metrics(score)
    # through a MIDI file (which may re-pair overlapping same-pitch notes): no error
    assert set(midi_metrics(score.dumps_midi())) == set(METRICS)
    everything = notes + drums
    assert ours["empty_beat_rate"] == pytest.approx(_dense_empty_beat_rate(everything, tpq))
    assert ours["groove_consistency"] == pytest.approx(_dense_groove(everything, tpq, ts))
    for name in ("scale_consistency", "empty_beat_rate", "groove_consistency"):
        value = ours[name]
        assert value is None or 0.0 <= value <= 1.0, name
    pce = ours["pitch_class_entropy"]
    assert pce is None or 0.0 <= pce <= math.log2(12) + 1e-12
    assert ours["polyphony"] is None or ours["polyphony"] >= 1.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(notes=notes_st, drums=notes_st.map(lambda ns: ns[:4]), tpq=st.sampled_from([5, 12, 48]))
def test_random_scores_agree_with_muspy(notes: list[Note], drums: list[Note], tpq: int) -> None:
    _assert_matches_muspy(make_score(notes, drum_notes=drums, tpq=tpq))
