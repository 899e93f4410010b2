"""Cadenza's own encodings (midichar, chord-duration) as tokenizers."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from symusic.core import ScoreTick

from cadenza.tokenize import TokenizerSpec, build_tokenizer, tokenizer_from_bytes
from cadenza.tokenize.chord_duration import SEP, ChordDurationTokenizer
from cadenza.tokenize.midichar import MidiCharTokenizer
from tests.support.music import make_score, notes_in_quarters, notes_in_seconds

TPQ = 480  # at 120 qpm: 960 ticks per second

# ---- strategies -------------------------------------------------------------------------------

# notes as (time, duration, pitch, velocity) in ticks at 120 qpm, one per (time, pitch)
_note = st.tuples(
    st.integers(0, 40 * TPQ),  # up to 20 s
    st.integers(1, 12 * TPQ),  # up to 6 s
    st.integers(21, 108),
    st.integers(1, 127),
)
# one note per (1/63 s step, pitch): two notes of one pitch in the same step cannot be told
# apart after quantization (cleaning removes such doubles from real files)
_notes = st.lists(
    _note, min_size=1, max_size=40, unique_by=lambda n: (round(n[0] * 63 / 960), n[2])
)


def _midichar(**config: object) -> MidiCharTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="midichar", config=config))
    assert isinstance(tok, MidiCharTokenizer)
    return tok


def _chord(**config: object) -> ChordDurationTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="chord-duration", config=config))
    assert isinstance(tok, ChordDurationTokenizer)
    return tok


def _trimmed(notes: list[tuple[int, int, int, int]]) -> ScoreTick:
    """A score whose same-pitch notes never overlap (what cleaning guarantees)."""
    by_pitch: dict[int, list[tuple[int, int, int, int]]] = {}
    for n in sorted(notes):
        by_pitch.setdefault(n[2], []).append(n)
    out = []
    for ns in by_pitch.values():
        for a, b in zip(ns, [*ns[1:], None], strict=True):
            dur = a[1] if b is None else max(1, min(a[1], b[0] - a[0]))
            out.append((a[0], dur, a[2], a[3]))
    return make_score(out, tpq=TPQ)


# ---- midichar -----------------------------------------------------------------------------------


@given(notes=_notes)
@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_midichar_text_round_trip_keeps_every_note(notes: list[tuple[int, int, int, int]]) -> None:
    """Pitch exact; onset within half a 1/63 s step; duration within half a step below 16 steps
    and within 4 % above; velocity level kept. (The original midichar format kept neither.)"""
    tok = _midichar()
    score = make_score(notes, tpq=TPQ)
    back = tok.from_text(tok.to_text(score))
    a, b = notes_in_seconds(score), notes_in_seconds(back)
    assert len(a) == len(b)
    step = 1 / 63
    for p in np.unique(a[:, 2]):
        x, y = a[a[:, 2] == p], b[b[:, 2] == p]
        x = x[np.argsort(x[:, 0], kind="stable")]
        y = y[np.argsort(y[:, 0], kind="stable")]
        np.testing.assert_allclose(y[:, 0], x[:, 0], atol=step / 2 + 1.1e-3)
        want = np.maximum(x[:, 1], step)  # the shortest note is one step (~16 ms)
        tol = np.where(want <= 16 * step, step / 2 + 1.1e-3, 0.04 * want + 1.1e-3)
        assert np.all(np.abs(y[:, 1] - want) <= tol)
        level = lambda v: np.clip(np.round(3 * v / 127), 1, 3)  # noqa: E731
        np.testing.assert_array_equal(level(y[:, 3]), level(x[:, 3]))


@given(notes=_notes)
@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_midichar_ids_round_trip_equals_text_round_trip(
    notes: list[tuple[int, int, int, int]],
) -> None:
    tok = _midichar()
    score = make_score(notes, tpq=TPQ)
    tok.fit([tok.symbols(score)])
    via_ids = notes_in_seconds(tok.decode(tok.encode(score)))
    via_text = notes_in_seconds(tok.from_text(tok.to_text(score)))
    np.testing.assert_allclose(via_ids, via_text)
    back = tokenizer_from_bytes(tok.to_bytes())
    assert back.encode(score) == tok.encode(score)


def test_midichar_short_notes_stay_short() -> None:
    """The original midichar format decoded every note to ≥ 1.29 s; here 0.1 s stays 0.1 s."""
    tok = _midichar()
    score = make_score([(0, 96, 60, 80), (960, 48, 62, 80), (1920, 960, 64, 80)], tpq=TPQ)
    durs = notes_in_seconds(tok.from_text(tok.to_text(score)))[:, 1]
    np.testing.assert_allclose(durs, [0.1, 0.05, 1.0], atol=0.01)


def test_midichar_long_silences_use_rest_characters() -> None:
    """Gaps are not clamped at 1 s: a 10 s silence survives as rest characters."""
    tok = _midichar()
    score = make_score([(0, 480, 60, 80), (9600, 480, 64, 80)], tpq=TPQ)
    text = tok.to_text(score)
    assert len(text) > 2  # one character per note plus rests
    onsets = notes_in_seconds(tok.from_text(text))[:, 0]
    np.testing.assert_allclose(onsets, [0.0, 10.0], atol=0.01)


def test_midichar_unseen_characters_keep_pitch_and_timing() -> None:
    tok = _midichar()
    train = make_score([(i * 480, 480, 60 + i % 12, 90) for i in range(24)], tpq=TPQ)
    tok.fit([tok.symbols(train)])
    other = make_score([(0, 700, 61, 30), (1234, 300, 66, 120), (1234, 300, 70, 120)], tpq=TPQ)
    a, b = notes_in_seconds(other), notes_in_seconds(tok.decode(tok.encode(other)))
    np.testing.assert_array_equal(a[:, 2], b[:, 2])
    np.testing.assert_allclose(a[:, 0], b[:, 0], atol=1 / 126 + 1e-3)


def test_midichar_vocab_is_the_training_alphabet() -> None:
    tok = _midichar()
    assert not tok.is_trained
    score = make_score([(i * 240, 240, 60 + i % 5, 80) for i in range(30)], tpq=TPQ)
    tok.fit([tok.symbols(score)])
    assert tok.is_trained
    seen = set(tok.to_text(score))
    # specials + the characters seen + one rest per step and one note per pitch (guaranteed)
    assert 3 + len(seen) <= tok.base_vocab_size <= 3 + len(seen) + 63 + 88
    assert tok.vocab_size == tok.base_vocab_size


# ---- chord-duration ---------------------------------------------------------------------------

_grid_note = st.tuples(
    st.integers(0, 300),  # onset in 16ths
    st.integers(1, 160),  # duration in 16ths (beyond the 128 cap)
    st.integers(10, 120),  # pitch, partly outside 21..108
    st.integers(1, 127),
)


@given(notes=st.lists(_grid_note, min_size=1, max_size=40, unique_by=lambda n: (n[0], n[2])))
@settings(
    max_examples=80, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_chord_duration_round_trip_on_the_grid(notes: list[tuple[int, int, int, int]]) -> None:
    """On a 16th grid the encoding is exact, except the 128-step duration cap and the
    21..108 pitch range, which it applies on purpose."""
    tok = _chord()
    step = TPQ // 4
    score = _trimmed([(t * step, d * step, p, v) for t, d, p, v in notes])
    back = notes_in_quarters(tok.decode(tok.encode(score)))
    exp = notes_in_quarters(score)
    exp = exp[(exp[:, 2] >= 21) & (exp[:, 2] <= 108)]
    exp[:, 1] = np.minimum(exp[:, 1], 128 / 4)
    order = lambda a: a[np.lexsort((a[:, 1], a[:, 2], a[:, 0]))]  # noqa: E731
    np.testing.assert_allclose(order(back), order(exp))


@given(
    notes=st.lists(
        st.tuples(st.integers(0, 20 * TPQ), st.integers(1, 8 * TPQ), st.integers(21, 108)),
        min_size=1,
        max_size=30,
        unique_by=lambda n: (n[0], n[2]),
    )
)
@settings(
    max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
def test_chord_duration_off_grid_is_within_half_a_step(notes: list[tuple[int, int, int]]) -> None:
    tok = _chord()
    score = make_score([(t, d, p, 80) for t, d, p in notes], tpq=TPQ)
    a = notes_in_quarters(score)
    b = notes_in_quarters(tok.decode(tok.encode(score)))
    # notes that round onto the same 16th and pitch merge into one: compare the set of onsets
    q = np.round(a[:, 0] * 4) / 4
    expected = sorted(set(zip(q.tolist(), a[:, 2].tolist(), strict=True)))
    got = sorted(zip(b[:, 0].tolist(), b[:, 2].tolist(), strict=True))
    assert got == expected
    assert np.all(b[:, 1] >= 0.25) and np.all(b[:, 1] <= 32)


def test_chord_duration_token_layout() -> None:
    """SEP, Shift, (Tempo), then (Note, Dur) pairs from the highest pitch down."""
    tok = _chord()
    score = make_score([(0, 480, 60, 80), (0, 240, 67, 80), (480, 480, 64, 80)], tpq=TPQ)
    names = [tok.token_str(i) for i in tok.encode(score)]
    tempo = tok.token_str(tok.tempo0 + int(np.abs(np.log(tok.tempos / 120)).argmin()))
    assert names == [
        "SEP", "Shift_0", tempo,
        "Note_67", "Dur_2", "Note_60", "Dur_4",
        "SEP", "Shift_4", "Note_64", "Dur_4",
    ]  # fmt: skip
    assert tok.vocab_size == 4 + 129 + 88 + 128 + 10


def test_chord_duration_long_gaps_and_caps() -> None:
    tok = _chord()
    step = TPQ // 4
    score = make_score([(0, 300 * step, 60, 80), (300 * step, step, 62, 80)], tpq=TPQ)
    ids = tok.encode(score)
    assert ids.count(SEP) == 4  # 300 steps = 128 + 128 + 44: two empty groups in between
    back = notes_in_quarters(tok.decode(ids))
    np.testing.assert_allclose(back[:, 0], [0, 75])
    np.testing.assert_allclose(back[:, 1], [32, 0.25])  # 300 steps capped at 128


def test_chord_duration_decodes_ungrammatical_sequences() -> None:
    tok = _chord()
    note, dur, shift = tok.note0, tok.dur0, tok.shift0
    # Note without Dur, Dur without Note, Shift without SEP, ids out of range, specials
    ids = [note + 39, shift + 4, dur + 3, note + 41, dur + 1, -1, 10_000, 0, 1, 2, note + 43]
    notes = notes_in_quarters(tok.decode(ids))
    assert notes[:, 2].tolist() == [60, 62, 64]
    assert notes[:, 0].tolist() == [0.0, 1.0, 1.0]
    assert notes[:, 1].tolist() == [0.25, 0.5, 0.25]


def test_chord_duration_tempo_tokens_follow_the_score() -> None:
    tok = _chord()
    score = make_score([(i * 480, 480, 60, 80) for i in range(8)], tpq=TPQ, qpm=60.0)
    dec = tok.decode(tok.encode(score))
    assert abs(float(dec.tempos[0].qpm) - 60.0) < 0.15 * 60
    without = _chord(num_tempos=0)
    assert not any(
        tok_name.startswith("Tempo") for tok_name in map(without.token_str, without.encode(score))
    )
