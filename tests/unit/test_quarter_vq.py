"""The "quarter-vq" tokenizer (a VQ-VAE over quarter-note piano rolls)."""

from __future__ import annotations

import subprocess
import sys
from functools import cache

import numpy as np
import pytest
from symusic.core import ScoreTick

from cadenza.midi.clean import clean_score
from cadenza.midi.load import load_score
from cadenza.tokenize import TokenizerSpec, build_corpus, build_tokenizer, encode_primer
from cadenza.tokenize.base import Symbols
from cadenza.tokenize.primer import decode_to_midi
from cadenza.tokenize.quarter_vq import (
    CODES_PER_QUARTER,
    PER_QUARTER,
    QuarterVQTokenizer,
    planes_to_notes,
    quarter_rolls,
    reconstruction,
    unpack_planes,
    vq_roll,
)
from cadenza.tokenize.registry import tokenizer_from_bytes
from tests.support.music import bach_pairs, make_score

#: A network small enough to overfit a few quarters in about a second on 2 CPU cores.
TINY = {
    "channels": [8, 16, 32, 32],
    "residual_blocks": 1,
    "code_dim": 16,
    "codebook_size": 32,
    "batch_size": 16,
    "steps": 600,
    "lr": 3e-3,
    "holdout_fraction": 0.0,
}
#: Reconstruction floors the tiny fit must reach on the quarters it was trained on.
CELL_F1_FLOOR = 0.9
NOTE_F1_FLOOR = 0.85
N_QUARTERS = 12  # of one chorale, what the tiny fit overfits


def tok_for(**config: object) -> QuarterVQTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="quarter-vq", config={**TINY, **config}))
    assert isinstance(tok, QuarterVQTokenizer)
    return tok


def grid_notes(score: ScoreTick) -> set[tuple[int, int, int]]:
    """(onset column, length in columns, pitch) of every pitched note, 32 columns a quarter."""
    tpq = score.ticks_per_quarter
    return {
        (n.time * 32 // tpq, n.duration * 32 // tpq, n.pitch)
        for t in score.tracks
        if not t.is_drum
        for n in t.notes
    }


@cache
def chorale() -> ScoreTick:
    score, _ = clean_score(load_score(bach_pairs()[0][1]))
    assert score is not None
    return score


@cache
def few_quarters() -> Symbols:
    """The first quarters of a chorale, as symbols."""
    syms = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq")).symbols(chorale())
    return Symbols(syms.symbols[: N_QUARTERS * PER_QUARTER].copy(), syms.word_starts, 0)


@cache
def fitted() -> QuarterVQTokenizer:
    tok = tok_for()
    tok.fit([few_quarters()])
    return tok


# ---- packing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tpq", [480, 96, 384])
def test_packing_round_trip_is_exact_on_the_grid(tpq: int) -> None:
    col = tpq // 32
    notes = [  # (time, duration, pitch, velocity) in columns, converted to ticks below
        (0, 8, 60, 90),
        (0, 32, 64, 90),
        (8, 8, 60, 90),  # re-struck right after the first 60: must stay two notes
        (24, 40, 67, 90),  # crosses into the second quarter
        (30, 1, 21, 90),  # lowest key, one column
        (70, 100, 108, 90),  # highest key, over several quarters
        (33, 3, 72, 90),
    ]
    score = make_score(
        [(t * col, d * col, p, v) for t, d, p, v in notes + [(0, 8, 20, 90), (0, 8, 109, 90)]],
        tpq=tpq,
        drum_notes=[(0, 4 * col, 36, 100)],
    )
    tok = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq"))
    syms = tok.symbols(score)
    assert syms.symbols.dtype == np.int32
    assert syms.symbols.size == 6 * PER_QUARTER  # 170 columns → 6 quarters
    back = tok.symbols_to_score(syms)
    assert grid_notes(back) == {(t, d, p) for t, d, p, _ in notes}  # pitches 20, 109 and drums out


def test_real_tpq_not_480_and_no_drift() -> None:
    """The same music at 96 and 480 ticks per quarter gives the same symbols (no fixed 480)."""
    base = [(0, 240, 60, 80), (240, 240, 62, 80), (4 * 480 * 50, 480, 64, 80)]
    a = make_score(base, tpq=480)
    b = make_score([(t // 5, d // 5, p, v) for t, d, p, v in base], tpq=96)
    tok = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq"))
    sa, sb = tok.symbols(a), tok.symbols(b)
    assert np.array_equal(sa.symbols, sb.symbols)
    assert (50 * 4 * 32, 32, 64) in grid_notes(tok.symbols_to_score(sa))  # 200 quarters later


def test_a_crossing_note_is_split_into_quarters() -> None:
    tok = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq"))
    score = make_score([(240, 840, 60, 80)], tpq=480)  # quarter 0.5 → 2.25
    q = tok.symbols(score).symbols.reshape(-1, PER_QUARTER)
    assert q.shape[0] == 3
    row = 60 - 21
    held = q[:, row].view(np.uint32)
    onset = q[:, 88 + row].view(np.uint32)
    assert held.tolist() == [0xFFFF0000, 0xFFFFFFFF, 0x000000FF]
    assert onset.tolist() == [1 << 16, 0, 0]
    assert np.count_nonzero(q) == 4  # nothing else set


def test_roll_keeps_repeated_notes_apart() -> None:
    score = make_score([(0, 240, 60, 80), (240, 240, 60, 80), (480, 15, 60, 80)], tpq=480)
    tok = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq"))
    held, onset = unpack_planes(tok.symbols(score).symbols)
    roll = vq_roll(held, onset)
    runs = planes_to_notes(roll)
    assert runs.tolist() == [
        [0, 15, 60],
        [16, 15, 60],
        [32, 1, 60],
    ]  # each re-struck note: -1 column
    assert quarter_rolls(tok.symbols(score).symbols).shape == (2, 88, 32)


# ---- the VQ-VAE --------------------------------------------------------------------------------


def test_tiny_fit_overfits_a_few_quarters() -> None:
    tok = fitted()
    stats = tok.fit_stats()
    assert stats["quarters_fit"] == N_QUARTERS and stats["quarters_held_out"] == 0
    assert stats["train"]["cell_f1"] >= CELL_F1_FLOOR, stats
    assert stats["train"]["note_f1"] >= NOTE_F1_FLOOR, stats
    assert tok.vocab_size == 3 + 32


def test_fit_is_deterministic_for_a_seed() -> None:
    hashes = []
    for seed in (0, 0, 1):
        tok = tok_for(steps=40, seed=seed)
        tok.fit([few_quarters()])
        hashes.append(tok.hash())
    assert hashes[0] == hashes[1] != hashes[2]


def test_bytes_round_trip_gives_the_same_ids_and_hash() -> None:
    tok = fitted()
    data = tok.to_bytes()
    assert data == tok.to_bytes()
    back = tokenizer_from_bytes(data)
    assert isinstance(back, QuarterVQTokenizer) and back.is_trained
    assert back.hash() == tok.hash()
    assert back.to_bytes() == data
    full = back.symbols(chorale())
    assert np.array_equal(back.ids(full), tok.ids(full))
    assert back.fit_stats()["train"] == tok.fit_stats()["train"]


def test_decode_of_encoded_ids_reproduces_the_notes() -> None:
    tok = fitted()
    ids = tok.ids(few_quarters())
    assert ids.size == N_QUARTERS * CODES_PER_QUARTER
    assert ids.min() >= 3 and ids.max() < tok.vocab_size
    decoded = tok.decode([tok.bos_id, *ids.tolist(), tok.eos_id])
    truth = quarter_rolls(few_quarters().symbols)
    pred = quarter_rolls(tok.symbols(decoded).symbols)
    pred = np.concatenate([pred, np.zeros((len(truth) - len(pred), 88, 32), np.uint8)])
    score = reconstruction(truth, pred)
    assert score["cell_f1"] >= CELL_F1_FLOOR and score["note_f1"] >= NOTE_F1_FLOOR, score
    assert all(n.velocity == 100 for n in decoded.tracks[0].notes)
    assert decoded.ticks_per_quarter == 480


def test_decode_ignores_specials_garbage_and_a_trailing_partial_quarter() -> None:
    tok = fitted()
    ids = tok.ids(few_quarters()).tolist()
    two = tok.decode(ids[:32])
    messy = tok.decode([0, 1, 999, -4, *ids[:16], 2, *ids[16:32], *ids[32:40]])
    assert grid_notes(messy) == grid_notes(two)
    assert two.end() <= 2 * 480 and len(two.tracks[0].notes) > 0
    assert len(tok.decode([]).tracks[0].notes) == 0
    rng = np.random.default_rng(0)
    decode_to_midi(tok, rng.integers(-5, 60, size=200).tolist())  # never raises


def test_untrained_tokenizer_refuses_ids() -> None:
    tok = tok_for()
    with pytest.raises(RuntimeError, match="fit"):
        tok.ids(few_quarters())


# ---- spec, corpus, primer -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"steps": -1}, "config.steps"),
        ({"channels": [8, 16, 32]}, "config.channels"),
        ({"channels": [8, 16, 32, 0]}, "config.channels"),
        ({"codebook_size": 1}, "config.codebook_size"),
        ({"threshold": 1.5}, "config.threshold"),
        ({"velocity": 0}, "config.velocity"),
        ({"bogus": 1}, "config.bogus"),
    ],
)
def test_bad_config_names_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TokenizerSpec(name="quarter-vq", config=config)


def test_bpe_is_refused_and_the_large_preset_has_the_bachsformer_sizes() -> None:
    with pytest.raises(ValueError, match="bpe"):
        TokenizerSpec.model_validate({"name": "quarter-vq", "bpe": {"vocab_size": 100}})
    from cadenza.tokenize.presets import resolve_spec

    spec = resolve_spec(preset="bachsformer-vq")
    assert spec.config["channels"] == [32, 64, 128, 128] and spec.config["codebook_size"] == 16
    assert spec.config["code_dim"] == 128 and spec.config["batch_size"] == 512
    assert not spec.is_miditok


def test_reading_a_spec_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from cadenza.tokenize.spec import TokenizerSpec\n"
        "TokenizerSpec(name='quarter-vq', config={'steps': 5})\n"
        "import cadenza.tokenize.quarter_vq\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_corpus_and_primer_with_quarter_vq() -> None:
    pairs = bach_pairs()[:3]
    spec = TokenizerSpec(name="quarter-vq", config={**TINY, "steps": 30, "holdout_fraction": 0.1})
    build = build_corpus(pairs, spec, workers=1, split=(0.67, 0.33, 0.0))
    stats = build.stats
    assert stats.vocab_size == 35
    assert {"train", "held_out", "quarters_fit", "codes_used"} <= set(stats.tokenizer)
    assert 0.0 <= stats.tokenizer["held_out"]["note_f1"] <= 1.0
    train = build.splits["train"]
    assert train.min() >= 0 and train.max() < 35
    bounds = np.flatnonzero((train == 1) | (train == 2))
    assert all(
        (b - a - 1) % CODES_PER_QUARTER == 0
        for a, b in zip(bounds[::2], bounds[1::2], strict=False)
    )
    tok = tokenizer_from_bytes(build.tokenizer.to_bytes())
    primer = encode_primer(tok, pairs[0][1], bars=2)
    assert len(primer) % CODES_PER_QUARTER == 0 and 0 < len(primer) <= 2 * 4 * CODES_PER_QUARTER
    midi = decode_to_midi(tok, [tok.bos_id, *primer])
    assert len(load_score(midi).tracks) == 1  # a valid file (a 30-step VQ-VAE may decode silence)


def test_overlong_files_are_refused_not_allocated() -> None:
    tok = QuarterVQTokenizer(TokenizerSpec(name="quarter-vq"))
    score = make_score([(0, 480, 60, 80), (480 * 20_000, 480, 62, 80)], tpq=480)
    with pytest.raises(ValueError, match="at most 16384"):
        tok.symbols(score)
