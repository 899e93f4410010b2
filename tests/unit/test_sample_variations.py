"""The sample job's music step: decode, count new notes, re-sample near-empty variations."""

from __future__ import annotations

import pytest

from cadenza.models import build_model, resolve_config
from cadenza.sample.variations import decode_variation, sample_variations
from cadenza.tokenize import vocab_size
from cadenza.tokenize.presets import resolve_spec
from cadenza.tokenize.registry import build_tokenizer


@pytest.fixture(scope="module")
def tok_and_model() -> tuple[object, object]:
    import torch

    tok = build_tokenizer(resolve_spec(preset="remi-chords-tempos"))
    torch.manual_seed(0)
    model = build_model("gpt", resolve_config("gpt", "nano"), vocab_size(tok)).eval()
    return tok, model


OPTS = {"max_new_tokens": 24, "seed": 3, "stop_at_eos": False}


def test_near_empty_rows_are_resampled_a_bounded_number_of_times(tok_and_model) -> None:  # type: ignore[no-untyped-def]
    tok, model = tok_and_model
    bos = tok.bos_id  # type: ignore[attr-defined]
    # min_notes far above what 24 tokens hold: every row is near-empty, every try is spent
    out = sample_variations(model, tok, [bos], OPTS, n=3, min_notes=10_000, resample_empty=2)  # type: ignore[arg-type]
    assert [v.index for v in out] == [0, 1, 2]
    assert all(v.attempts == 3 for v in out)
    off = sample_variations(model, tok, [bos], OPTS, n=3, min_notes=10_000, resample_empty=0)  # type: ignore[arg-type]
    assert all(v.attempts == 1 for v in off)
    # the kept try is the one with the most new notes, so the guard never makes a row worse
    assert all(a.new_notes >= b.new_notes for a, b in zip(out, off, strict=True))
    again = sample_variations(model, tok, [bos], OPTS, n=3, min_notes=10_000, resample_empty=2)  # type: ignore[arg-type]
    assert [v.new_ids for v in again] == [v.new_ids for v in out]  # seeded: reproducible


def test_decoding_follows_stop_at_eos(tok_and_model) -> None:  # type: ignore[no-untyped-def]
    tok, _ = tok_and_model
    names = {n: i for i, n in enumerate(sorted(tok.miditok.vocab, key=tok.miditok.vocab.get))}  # type: ignore[attr-defined]
    note = [
        names[x] for x in ("Bar_None", "Position_0", "Pitch_60", "Velocity_91", "Duration_1.0.8")
    ]
    ids = [tok.bos_id, *note, tok.eos_id, tok.bos_id, *note]  # type: ignore[attr-defined]
    assert decode_variation(tok, [], ids, stop_at_eos=True)[1] == 1  # type: ignore[arg-type]
    assert decode_variation(tok, [], ids, stop_at_eos=False)[1] == 2  # type: ignore[arg-type]
