"""Attribute controls and style tags: the tokens real chorales get, the sharded build, and the
sampler placing requested tokens where the model learned them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cadenza.midi.clean import clean_score
from cadenza.midi.load import load_score
from cadenza.tokenize import (
    BPESpec,
    TokenizerSpec,
    build_corpus,
    tokenizer_from_bytes,
    tokenizer_to_bytes,
)
from cadenza.tokenize.controls import CONTROL_ORDER, ControlVocab, capabilities, resolve_controls
from cadenza.tokenize.corpus import merge_spools, tokenize_to_spool
from cadenza.tokenize.grammar import grammar_for
from cadenza.tokenize.miditok_tok import MidiTokTokenizer
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.splits import assign_splits
from tests.support.music import bach_pairs, midi_bytes
from tests.unit.test_corpus_stream import same_corpus

ALL = TokenizerSpec(name="REMI", controls=list(CONTROL_ORDER), learn_tags=True)  # type: ignore[arg-type]
TAGS = {"bwv": ["baroque"], "other": ["mine-2019", "baroque"]}


@pytest.fixture(scope="module")
def pairs() -> list[tuple[str, bytes]]:
    return bach_pairs()


@pytest.fixture(scope="module")
def bpe_tok(pairs: list[tuple[str, bytes]]) -> MidiTokTokenizer:
    """The fitted tokenizer of a REMI + BPE corpus of chorales with every control and tags."""
    spec = TokenizerSpec.model_validate({**ALL.model_dump(), "bpe": {"vocab_size": 1200}})
    assert isinstance(spec.bpe, BPESpec)
    corpus = build_corpus(pairs, spec, seed=0, workers=1, tags=_tags(pairs))
    tok = corpus.tokenizer
    corpus.close()
    assert isinstance(tok, MidiTokTokenizer) and tok.subword is not None
    return tok


def _tags(pairs: list[tuple[str, bytes]]) -> dict[str, list[str]]:
    return {f: TAGS["bwv"] if i % 2 else TAGS["other"] for i, (f, _) in enumerate(pairs)}


def test_specs_refuse_controls_a_tokenizer_cannot_carry() -> None:
    for bad, word in [
        ({"name": "TSD", "controls": ["note_density"]}, "per bar"),
        ({"name": "midichar", "controls": ["key"]}, "cannot carry"),
        ({"name": "Octuple", "learn_tags": True}, "cannot carry"),
    ]:
        with pytest.raises(ValueError, match=word):
            TokenizerSpec.model_validate(bad)
    # piece controls work beyond REMI; a spec without controls keeps its old dump (and hash)
    TokenizerSpec(name="TSD", controls=["key", "tempo"], learn_tags=True)  # type: ignore[list-item]
    TokenizerSpec.model_validate({"name": "REMI", "controls": ["key"], "bpe": {"vocab_size": 900}})
    assert TokenizerSpec(name="REMI").model_dump() == {"name": "REMI", "config": {}, "bpe": None}


def test_chorales_carry_their_controls_and_decode_unchanged(pairs: list[tuple[str, bytes]]) -> None:
    tok = build_tokenizer(ALL)
    plain = build_tokenizer(TokenizerSpec(name="REMI"))
    assert isinstance(tok, MidiTokTokenizer) and tok.controls is not None
    tok.set_tags(["baroque", "mine-2019"])
    vocab = tok.controls
    bar = tok.miditok.vocab["Bar_None"]
    for _, data in pairs[:4]:
        score, _ = clean_score(load_score(data))
        assert score is not None
        ids = tok.with_tags(tok.ids(tok.symbols(score)), ["baroque"])
        names = [tok.token_str(int(i)) for i in ids]
        assert [n.split("_")[1] for n in names[:4]] == ["tempo", "time", "key", "program"]
        assert names[4] == "Tag_baroque"
        # every Bar is followed by its bar's slots; their note counts add up to the notes
        densities, bars = [], 0
        for i, t in enumerate(ids):
            if t == bar:
                bars += 1
                slot_names = names[i + 1 : i + 1 + len(vocab.bar_slots)]
                assert [n.split("_")[1] for n in slot_names] == [
                    "note",
                    "polyphony",
                    "pitch",
                    "pitch",
                    "duration",
                ]
                densities.append(int(slot_names[0].rsplit("_", 1)[1]))
        notes = sum(len(t.notes) for t in tok.prepare(score).tracks)
        facts = tok.bar_facts(score)
        assert bars == len(facts) > 0 and sum(f.notes for f in facts) == notes
        assert sum(densities) == sum(min(f.notes, 32) for f in facts)
        # control and tag tokens are the model's business: decoding ignores them
        plain_notes = sum(len(t.notes) for t in plain.decode(plain.encode(score)).tracks)
        assert sum(len(t.notes) for t in tok.decode([int(i) for i in ids]).tracks) == plain_notes
    back = tokenizer_from_bytes(tokenizer_to_bytes(tok))
    assert isinstance(back, MidiTokTokenizer) and back.controls is not None
    assert back.controls.names == vocab.names and back.capabilities() == tok.capabilities()
    assert back.capabilities()["tags"] == ["baroque", "mine-2019"]


def test_sharded_build_with_tags_equals_the_single_one(
    pairs: list[tuple[str, bytes]], tmp_path: Path
) -> None:
    tags = _tags(pairs)
    single = build_corpus(pairs, ALL, seed=2, workers=1, tags=tags)
    assignment = assign_splits([f for f, _ in pairs], (0.8, 0.1, 0.1), 2)
    entries = []
    for k, (lo, hi) in enumerate([(3, len(pairs)), (0, 3)]):
        tasks = [(i, pairs[i][0], assignment[pairs[i][0]] == "train") for i in range(lo, hi)]
        entries += tokenize_to_spool(
            tasks, lambda i: pairs[i][1], ALL, tmp_path / f"{k}.spool", workers=1
        )
    merged = merge_spools(entries, ALL, files_total=len(pairs), seed=2, tags=tags)
    same_corpus(merged, single)
    tok = single.tokenizer
    assert tok.capabilities()["tags"] == ["baroque", "mine-2019"]
    train = single.splits["train"]
    ids = {tok.controls.tag_id("baroque"), tok.controls.tag_id("mine-2019")}  # type: ignore[attr-defined]
    assert ids <= set(np.unique(train).tolist())
    single.close()
    merged.close()


def test_a_bpe_corpus_keeps_bars_and_controls_out_of_its_pieces(
    pairs: list[tuple[str, bytes]], bpe_tok: MidiTokTokenizer
) -> None:
    """Controls with subwords: no learned piece holds a Bar or a control id, so every bar opens
    with the plain Bar id followed by its single control ids; the ids decode to the same music
    as plain REMI's, and the grammar (over pieces too) accepts them."""
    tok = bpe_tok
    assert tok.controls is not None and tok.subword is not None
    bar, own = tok.miditok.vocab["Bar_None"], tok.own_vocab_size
    pieces = tok.subword.pieces
    assert len(pieces) > 100 and max(len(p) for p in pieces) > 2
    assert not any(bar in p or any(b >= own for b in p) for p in pieces)
    plain = build_tokenizer(TokenizerSpec(name="REMI"))
    back = tokenizer_from_bytes(tokenizer_to_bytes(tok))  # what a sample job loads
    assert isinstance(back, MidiTokTokenizer) and back.vocab_size == tok.vocab_size
    assert back.subword is not None and back.subword.pieces == pieces
    grammar = grammar_for(back)
    slots = len(tok.controls.bar_slots)
    for _, data in pairs:
        score, _ = clean_score(load_score(data))
        assert score is not None
        ids = [int(i) for i in tok.with_tags(tok.ids(tok.symbols(score)), ["baroque"])]
        assert any(i >= tok.base_vocab_size for i in ids)  # pieces were applied
        names = [tok.token_str(i) if own <= i < tok.base_vocab_size else "" for i in ids]
        assert [n.split("_")[1] for n in names[:4]] == ["tempo", "time", "key", "program"]
        assert names[4] == "Tag_baroque"
        at = [k for k, i in enumerate(ids) if i == bar]
        assert len(at) == len(tok.bar_facts(score)) > 0
        for k in at:
            assert all(n.startswith("Ctl_") for n in names[k + 1 : k + 1 + slots])
        want = sorted(
            (int(n.time), int(n.pitch), int(n.duration))
            for t in plain.decode(plain.encode(score)).tracks
            for n in t.notes
        )
        got = sorted(
            (int(n.time), int(n.pitch), int(n.duration))
            for t in tok.decode(ids).tracks
            for n in t.notes
        )
        assert got == want
        assert [int(i) for i in back.with_tags(back.ids(back.symbols(score)), ["baroque"])] == ids
        assert grammar.first_violation([tok.bos_id, *ids, tok.eos_id]) is None


def test_requests_resolve_to_token_values_or_name_the_field() -> None:
    caps = capabilities(list(CONTROL_ORDER), ["baroque"])
    piece, bars, tags, tracks = resolve_controls(
        {
            "tempo": 97,
            "key": "Dm",
            "note_density": [4, None],
            "pitch_range": [55, 79],
            "duration": 0.6,
        },
        ["baroque"],
        caps,
    )
    assert piece == {"tempo": "100", "key": "Dm"} and tags == ["baroque"] and tracks is None
    assert bars["note_density"] == (["4", None], False)
    assert bars["pitch_range"] == ([("55", "79")], True) and bars["duration"] == (["0.5"], True)
    for controls, field in [
        ({"note_density": 33}, "controls.note_density: 33 is outside"),
        ({"polyphony": [1, 2.5]}, "controls.polyphony[1]"),
        ({"time_signature": "7/4"}, "controls.time_signature"),
        ({"pitch_range": [[60, 50]]}, "controls.pitch_range[0]"),
        ({"program": True}, "controls.program"),
    ]:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            resolve_controls(controls, None, caps)
    with pytest.raises(ValueError, match="tags: 'rococo'"):
        resolve_controls(None, ["rococo"], caps)


def test_the_grammar_accepts_sequences_with_controls_and_tags(
    pairs: list[tuple[str, bytes]],
) -> None:
    """Control and tag ids pass the tokenizer's grammar anywhere (the steer places them), so
    constrained sampling never masks what a controls corpus trains on."""
    tok = build_tokenizer(ALL)
    tok.set_tags(["baroque"])
    grammar = grammar_for(tok)
    assert isinstance(tok, MidiTokTokenizer)
    for _, data in pairs:
        score, _ = clean_score(load_score(data))
        assert score is not None
        ids = [int(i) for i in tok.with_tags(tok.ids(tok.symbols(score)), ["baroque"])]
        assert any(i >= len(tok.miditok.vocab) for i in ids)  # it carries controls and a tag
        assert grammar.first_violation([tok.bos_id, *ids, tok.eos_id]) is None


@pytest.mark.parametrize("subwords", [False, True], ids=["plain", "bpe"])
def test_the_sampler_forces_requested_controls_where_the_model_learned_them(
    subwords: bool, request: pytest.FixtureRequest
) -> None:
    """A random model: every requested piece value, tag and bar value appears at its place,
    with BPE too (a bar still opens with the plain Bar id, which the steer watches for)."""
    from cadenza.models import build_model, resolve_config
    from cadenza.sample import SamplingParams, generate
    from cadenza.sample.steer import build_steer

    if subwords:
        tok = request.getfixturevalue("bpe_tok")
    else:
        tok = build_tokenizer(ALL)
        tok.set_tags(["baroque", "mine-2019"])
    vocab = tok.controls
    assert isinstance(vocab, ControlVocab)
    bar = tok.miditok.vocab["Bar_None"]
    torch.manual_seed(0)
    model = build_model("gpt", resolve_config("gpt", "nano", {"block_size": 128}), tok.vocab_size)
    # make Bar likely, so that many bars open in a short sample: a bias on its logit (through
    # forward_step, the sampler's path once the fixed-shape decode is off)
    step = model.forward_step
    bias = torch.zeros(tok.vocab_size)
    bias[bar] = 6.0
    model.decode_state = lambda cache: None  # type: ignore[method-assign]
    model.forward_step = lambda *a, **k: step(*a, **k) + bias  # type: ignore[method-assign]
    controls = {"key": "Dm", "note_density": [3, 17], "pitch_range": [50, 70]}
    steer, prompt = build_steer(
        tok, [tok.bos_id], controls=controls, tags=["mine-2019"], rows=2, device="cpu"
    )
    assert prompt == [tok.bos_id] and steer is not None
    # With the tokenizer's grammar masking too (the default): control and tag ids pass it.
    grammar = grammar_for(tok)
    rows = generate(
        model,
        [prompt],
        SamplingParams(max_new_tokens=96, seed=1, stop_at_eos=False, compile=False),
        n=2,
        steer=steer,
        grammar=grammar,
    )
    for new in rows:
        assert grammar.first_violation([*prompt, *new]) is None
        own = tok.own_vocab_size
        names = [tok.token_str(i) if own <= i < tok.base_vocab_size else "" for i in new]
        assert names[2] == "Ctl_key_Dm" and names[4] == "Tag_mine-2019"
        assert names[0].startswith("Ctl_tempo_") and names[3].startswith("Ctl_program_")
        k = 0
        for i, t in enumerate(new[5:], start=5):
            if t != bar or i + 5 >= len(new):
                continue
            slot = names[i + 1 : i + 6]
            want = "Ctl_note_density_3" if k == 0 else "Ctl_note_density_17" if k == 1 else None
            assert want is None or slot[0] == want
            assert slot[1].startswith("Ctl_polyphony_")  # free, but a value of its control
            assert slot[2:4] == ["Ctl_pitch_range_low_50", "Ctl_pitch_range_high_70"]
            assert slot[4].startswith("Ctl_duration_")
            k += 1
        assert k >= 2


def _bars_of_chosen_density(seed: int, bars: int = 16) -> bytes:
    """A melody whose bars are, at random, one whole note or eight eighths (480 ticks a beat):
    made here so that density varies bar to bar, which it hardly does in chorales."""
    import random

    rng = random.Random(seed)
    notes = []
    for b in range(bars):
        start, pitch = b * 1920, 60 + rng.randrange(12)
        if rng.random() < 0.5:
            notes.append((start, 1920, pitch, 80))
        else:
            notes += [(start + k * 240, 240, pitch + k % 3, 80) for k in range(8)]
    return midi_bytes(notes)


@pytest.mark.slow
def test_a_briefly_trained_model_follows_the_requested_note_density() -> None:
    """A nano GPT trained 300 steps on music whose bars have 1 or 8 notes: asked for 8 notes
    a bar, its bars have more notes than asked for 1.

    The realised density is the tokenizer's own measure of the decoded samples' bars (what
    the control tokens state in training); the direction, not the size, is asserted.
    """
    from bench.controls import build, realised, sample_bars, train_model

    torch.manual_seed(0)
    corpus = build([(f"p{i}", _bars_of_chosen_density(i)) for i in range(12)], ["note_density"])
    try:
        model = train_model(corpus, 300, batch=8, seq_len=96, arch="gpt", preset="nano")
        means = []
        for value in (1, 8):
            facts = sample_bars(
                model, corpus.tokenizer, {"note_density": value}, n=3, bars=4, seed=0, tokens=120
            )
            vals = [v for f in facts if (v := realised("note_density", f)) is not None]
            assert vals, f"no complete bar sampled for note_density={value}"
            means.append(sum(vals) / len(vals))
        assert means[1] > means[0], means
    finally:
        corpus.close()
