"""Token grammars: every tokenizer's accepts its own encodings; a masked sampler obeys it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from symusic.core import ScoreTick

from cadenza.midi.clean import clean_score
from cadenza.midi.load import load_score
from cadenza.models import CadenzaModel, build_model, resolve_config
from cadenza.sample import SamplingParams, generate, generate_uncached
from cadenza.sample.variations import sample_variations
from cadenza.tokenize import Tokenizer, TokenizerSpec, build_tokenizer, decode_to_midi
from cadenza.tokenize.grammar import Grammar, grammar_for
from cadenza.tokenize.presets import resolve_spec
from tests.support.music import bach_pairs
from tests.unit.test_tokenize import ALL, SUBWORD, fitted

#: quarter-vq with an untrained tiny network (steps 0): its ids are codes whatever the weights
VQ_SPEC = {
    "name": "quarter-vq",
    "config": {"channels": [4, 4, 4, 4], "residual_blocks": 0, "code_dim": 4, "steps": 0},
}
#: every tokenizer Cadenza offers, plain and with subwords where it can learn them
CASES = [*ALL, *(f"{n}+bpe" for n in SUBWORD), "remi-chords-tempos", "quarter-vq"]
#: what masking is tested on (subwords for two, to cover pieces); a random model, hot
SAMPLED = [*ALL, "REMI+bpe", "chord-duration+bpe", "quarter-vq"]
#: tokenizers whose every non-special id is valid anywhere (nothing for a free sampler to break)
UNSTRUCTURED = {"midichar", "quarter-vq"}
#: a rule set weaker than what the decoder needs for a note, so a random model's row may hold
#: none and only the rows together must have notes: MIDILike does not pair a NoteOff with its
#: NoteOn (a set of open pitches is not a small automaton; an unclosed note is dropped)
LOOSE = {"MIDILike"}


@pytest.fixture(scope="module")
def cleaned() -> list[ScoreTick]:
    out = []
    for _, data in bach_pairs():
        score, _ = clean_score(load_score(data))
        assert score is not None
        out.append(score)
    return out


_vq: list[Tokenizer] = []


def tokenizer(case: str, cleaned: list[ScoreTick]) -> Tokenizer:
    if case == "quarter-vq":
        if not _vq:
            tok = build_tokenizer(TokenizerSpec.model_validate(VQ_SPEC))
            tok.fit([tok.symbols(s) for s in cleaned[:2]])
            _vq.append(tok)
        return _vq[0]
    if case == "remi-chords-tempos":
        key = ("remi-chords-tempos", False)
        if key not in _preset:
            tok = build_tokenizer(resolve_spec(preset=case))
            tok.fit([tok.symbols(s) for s in cleaned])
            _preset[key] = tok
        return _preset[key]
    name, _, bpe = case.partition("+")
    return fitted(name, cleaned, bpe=bool(bpe))


_preset: dict[tuple[str, bool], Tokenizer] = {}


# ---- no false masks -------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_grammar_accepts_every_encoded_chorale(case: str, cleaned: list[ScoreTick]) -> None:
    """A training stream (BOS file EOS BOS file EOS …) of real chorales is accepted whole."""
    tok = tokenizer(case, cleaned)
    g = grammar_for(tok)
    assert g.vocab_size == tok.vocab_size
    stream: list[int] = []
    for i, score in enumerate(cleaned):
        ids = [tok.bos_id, *tok.encode(score), tok.eos_id]
        assert len(ids) > 2
        bad = g.first_violation(ids)
        assert bad is None, f"chorale {i}: id {ids[bad]} at {bad} forbidden ({g.summary})"
        stream += ids
    assert g.walk(stream) == (g.ended, 0)
    if "+bpe" in case:  # pieces are actually used, so composing them is what was checked
        assert max(stream) >= tok.base_vocab_size


# ---- the grammar forbids what it should ----------------------------------------------------


def _ids(tok: Tokenizer, *names: str) -> list[int]:
    vocab = tok.miditok.vocab  # type: ignore[attr-defined]
    return [int(vocab[n]) for n in names]


def test_remi_note_parts_and_positions(cleaned: list[ScoreTick]) -> None:
    tok = tokenizer("REMI", cleaned)
    g = grammar_for(tok)
    s, bad = g.walk([tok.bos_id, *_ids(tok, "Bar_None", "TimeSig_4/4", "Position_8", "Pitch_60")])
    assert bad == 0
    allowed = np.flatnonzero(g.allowed()[s])
    assert {tok.token_str(int(i)).split("_")[0] for i in allowed} == {"Velocity"}
    assert g.table[s, tok.eos_id] < 0  # a pitch without its velocity and duration cannot end
    s, _ = g.walk(_ids(tok, "Velocity_91", "Duration_1.0.8"), s)
    back, same, ahead = _ids(tok, "Position_4", "Position_8", "Position_12")
    assert g.table[s, back] < 0 and g.table[s, same] < 0 and g.table[s, ahead] >= 0
    s, _ = g.walk(_ids(tok, "Bar_None", "TimeSig_4/4"), s)  # a new bar starts over
    assert g.table[s, back] >= 0


def test_chord_duration_order_and_falling_pitches(cleaned: list[ScoreTick]) -> None:
    tok = tokenizer("chord-duration", cleaned)
    g = grammar_for(tok)
    note = tok.note0 - tok.lo  # type: ignore[attr-defined]
    dur, shift = tok.dur0, tok.shift0  # type: ignore[attr-defined]
    s, bad = g.walk([tok.bos_id, 3, shift + 0, note + 67, dur + 3])
    assert bad == 0
    assert g.table[s, note + 60] >= 0 and g.table[s, note + 67] < 0 and g.table[s, note + 70] < 0
    assert g.table[s, shift + 2] < 0  # a shift only after its separator
    assert g.walk([3, shift + 4], s)[1] == 0
    assert g.walk([3, shift + 0], s)[1] == 1  # only the first onset may be at shift 0


def test_pieces_go_where_their_base_ids_go(cleaned: list[ScoreTick]) -> None:
    tok = tokenizer("REMI+bpe", cleaned)
    g = grammar_for(tok)
    sub = tok.subword  # type: ignore[attr-defined]
    assert sub is not None
    for n, piece in enumerate(sub.pieces[:50]):
        col = g.table[:, tok.base_vocab_size + n]
        for s in range(g.num_states):
            end, bad = g.walk(piece, s)
            assert (col[s] < 0) == (bad > 0 or g.first_violation(piece, s) is not None)
            if col[s] >= 0:
                assert col[s] == end


def test_compound_tuples_whole_and_in_order(cleaned: list[ScoreTick]) -> None:
    tok = tokenizer("CPWord", cleaned)
    g = grammar_for(tok)
    ids = tok.encode(cleaned[0])
    k = len(tok._sizes)  # type: ignore[attr-defined]
    s, _ = g.walk([tok.bos_id, *ids[:k]])  # one whole tuple
    assert g.table[s, ids[1]] < 0  # field 1 cannot open a tuple
    mid, _ = g.walk(ids[k : k + 1], s)
    assert g.table[mid, tok.eos_id] < 0 and g.table[mid, ids[k]] < 0  # half a tuple cannot end


# ---- masked sampling -------------------------------------------------------------------------


_models: dict[int, CadenzaModel] = {}


def tiny_model(vocab: int) -> CadenzaModel:
    """A random-weight tiny gpt (the masking does not care what the model learned)."""
    if vocab not in _models:
        torch.manual_seed(0)
        cfg = resolve_config("gpt", "tiny", {"block_size": 64, "n_layer": 1})
        _models[vocab] = build_model("gpt", cfg, vocab).eval()
    return _models[vocab]


def _hot(seed: int, constrained: bool) -> SamplingParams:
    return SamplingParams(
        temperature=1.8,
        max_new_tokens=96,
        seed=seed,
        stop_at_eos=False,
        constrained=constrained,
        compile=False,
    )


def _violations(g: Grammar, prompt: list[int], row: list[int]) -> int:
    state, _ = g.walk(prompt)
    return g.walk(row, state)[1]


@pytest.mark.parametrize("case", SAMPLED)
def test_masked_sampler_never_emits_a_forbidden_token(case: str, cleaned: list[ScoreTick]) -> None:
    tok = tokenizer(case, cleaned)
    g = grammar_for(tok)
    model = tiny_model(tok.vocab_size)
    prompt = [tok.bos_id]
    for seed in (1, 2):
        rows = generate(model, [prompt], _hot(seed, True), n=3, grammar=g)
        notes = []
        for row in rows:
            assert len(row) == 96
            assert g.first_violation([*prompt, *row]) is None
            score = load_score(decode_to_midi(tok, [*prompt, *row], stop_at_eos=False))
            notes.append(sum(len(t.notes) for t in score.tracks))
        if case in LOOSE:
            assert sum(notes) > 0
        elif case != "quarter-vq":  # untrained codes may decode to silence
            assert all(n > 0 for n in notes), notes
    free = generate(model, [prompt], _hot(1, False), n=3, grammar=g)
    free_bad = sum(_violations(g, prompt, row) for row in free)
    if case not in UNSTRUCTURED:  # the same model, unmasked, breaks the grammar: masking matters
        assert free_bad > 0


def test_recompute_sampler_masks_the_same_way(cleaned: list[ScoreTick]) -> None:
    """The uncached sampler takes the same mask, so both give the same tokens for one seed."""
    tok = tokenizer("TSD", cleaned)
    g = grammar_for(tok)
    model = tiny_model(tok.vocab_size).double()
    try:
        params = SamplingParams(temperature=1.8, max_new_tokens=40, seed=5, stop_at_eos=False)
        cached = generate(model, [[tok.bos_id]], params, n=2, grammar=g)
        recomputed = generate_uncached(model, [[tok.bos_id]], params, n=2, grammar=g, window="same")
    finally:
        model.float()
    assert cached == recomputed
    assert all(g.first_violation([tok.bos_id, *r]) is None for r in cached)


def test_a_primer_sets_the_starting_state(cleaned: list[ScoreTick]) -> None:
    """Rows continue the primer's grammar state: after a dangling pitch comes its velocity."""
    tok = tokenizer("REMI", cleaned)
    g = grammar_for(tok)
    prompt = [tok.bos_id, *_ids(tok, "Bar_None", "TimeSig_4/4", "Position_0", "Pitch_60")]
    rows = generate(tiny_model(tok.vocab_size), [prompt], _hot(3, True), n=4, grammar=g)
    assert all(tok.token_str(r[0]).startswith("Velocity_") for r in rows)
    assert all(g.first_violation([*prompt, *r]) is None for r in rows)


def test_variations_report_invalid_tokens(cleaned: list[ScoreTick]) -> None:
    tok = tokenizer("REMI", cleaned)
    model = tiny_model(tok.vocab_size)
    opts = {"temperature": 1.8, "max_new_tokens": 64, "seed": 4, "stop_at_eos": False}
    on = sample_variations(model, tok, [tok.bos_id], opts, n=2)
    off = sample_variations(model, tok, [tok.bos_id], {**opts, "constrained": False}, n=2)
    assert [v.invalid_tokens for v in on] == [0, 0]
    assert all(v.invalid_tokens > 0 for v in off)
    assert all(v.notes > 0 for v in on)


def test_filters_and_dropped_rows_keep_the_mask(cleaned: list[ScoreTick]) -> None:
    """top-k, min-p, the repetition penalty and greedy see masked logits; rows that end early
    leave the batch (their states with them) and the others keep obeying the grammar."""
    tok = tokenizer("TSD", cleaned)
    g = grammar_for(tok)
    model = tiny_model(tok.vocab_size)
    base = SamplingParams(temperature=1.8, max_new_tokens=64, seed=6, compile=False)
    first = generate(model, [[tok.bos_id]], base, n=8, grammar=g)
    common = int(np.bincount(np.concatenate(first)).argmax())  # rows "end" on it: dropped
    for extra in (
        {"top_k": 5, "min_p": 0.1, "repetition_penalty": 1.3},
        {"temperature": 0.0},
        {"eos_id": common},
    ):
        params = SamplingParams(
            **{"temperature": 1.8, "max_new_tokens": 64, "seed": 6, "compile": False, **extra}
        )
        rows = generate(model, [[tok.bos_id]], params, n=8, grammar=g)
        assert all(g.first_violation([tok.bos_id, *r]) is None for r in rows)
        if "eos_id" in extra:
            assert sum(len(r) < 56 for r in rows) >= 4, [len(r) for r in rows]  # some dropped
