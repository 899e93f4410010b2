"""Tokenizers on real chorales (every tokenizer), specs, persistence, corpus builds, primers."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from symusic.core import ScoreTick

from cadenza.midi.clean import clean_score
from cadenza.midi.load import load_score
from cadenza.tokenize import (
    AugmentSpec,
    CorpusCancelled,
    CorpusEmpty,
    Tokenizer,
    TokenizerSpec,
    assign_splits,
    build_corpus,
    build_tokenizer,
    decode_to_midi,
    encode_primer,
    load_npz,
    resolve_spec,
    special_ids,
    tokenizer_from_bytes,
    tokenizer_hash,
    tokenizer_to_bytes,
    vocab_size,
)
from cadenza.tokenize.spec import (
    MIDITOK_MULTI_VOCAB,
    MIDITOK_OPTION_TYPES,
    MIDITOK_SINGLE_STREAM,
    OWN_TOKENIZERS,
)
from tests.support.music import (
    bach_pairs,
    midi_bytes,
    notes_in_quarters,
    notes_in_seconds,
)

SUBWORD = [*MIDITOK_SINGLE_STREAM, *OWN_TOKENIZERS]  # tokenizers that can learn BPE
ALL = [*SUBWORD, *MIDITOK_MULTI_VOCAB]  # CPWord, Octuple, MuMIDI: tuples flattened
N_ROUND_TRIP = 3  # chorales per tokenizer in the round-trip test


@pytest.fixture(scope="session")
def bach_bytes() -> list[tuple[str, bytes]]:
    return bach_pairs()


@pytest.fixture(scope="module")
def cleaned(bach_bytes: list[tuple[str, bytes]]) -> list[ScoreTick]:
    out = []
    for _, data in bach_bytes:
        score, _ = clean_score(load_score(data))
        assert score is not None
        out.append(score)
    return out


_fitted: dict[tuple[str, bool], Tokenizer] = {}


def fitted(name: str, cleaned: list[ScoreTick], bpe: bool = False) -> Tokenizer:
    """A tokenizer fitted on the chorales (midichar needs its alphabet), cached per test run."""
    key = (name, bpe)
    if key not in _fitted:
        base = fitted(name, cleaned).base_vocab_size if bpe else 0  # midichar: learned size
        spec = TokenizerSpec.model_validate(
            {"name": name, "bpe": {"vocab_size": base + 150} if bpe else None}
        )
        tok = build_tokenizer(spec)
        tok.fit([tok.symbols(s) for s in cleaned])
        _fitted[key] = tok
    return _fitted[key]


def _pair_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|onset|, |duration| differences of notes paired per pitch in time order."""
    assert sorted(a[:, 2].tolist()) == sorted(b[:, 2].tolist()), "pitches differ"
    errs = []
    for p in np.unique(a[:, 2]):
        errs.append(np.abs(a[a[:, 2] == p][:, :2] - b[b[:, 2] == p][:, :2]))
    return np.concatenate(errs)


def _jittered(score: ScoreTick, ticks: int, seed: int) -> ScoreTick:
    """A copy whose onsets move by up to ±``ticks`` (off the grid) keeping note order."""
    rng = np.random.default_rng(seed)
    out = score.copy()
    for t in out.tracks:
        for n in t.notes:
            n.time = max(0, n.time + int(rng.integers(-ticks, ticks + 1)))
    return clean_score(out)[0] or out


# ---- round trips on real music --------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_round_trip_keeps_notes(name: str, cleaned: list[ScoreTick]) -> None:
    """Pitches exactly; onsets and durations within half a grid step (tokenizer's own grid)."""
    tok = fitted(name, cleaned)
    for i, score in enumerate(cleaned[:N_ROUND_TRIP]):
        # chorales are on a 16th grid; jitter them so quantization is actually exercised
        src = _jittered(score, int(score.ticks_per_quarter) // 40, seed=i)
        if name == "midichar":  # its alphabet is learned: fit on the file itself
            tok = build_tokenizer(TokenizerSpec.model_validate({"name": name}))
            tok.fit([tok.symbols(src)])
        dec = tok.decode(tok.encode(src))
        if name == "midichar":  # seconds: onset grid 1/63 s, durations ≤ 16 steps exact
            err = _pair_errors(notes_in_seconds(src)[:, :3], notes_in_seconds(dec)[:, :3])
            dur = notes_in_seconds(src)
            assert err[:, 0].max() <= 0.5 / 63 + 2e-3
            assert np.all(err[:, 1] <= np.maximum(0.5 / 63 + 2e-3, 0.04 * dur[:, 1].max()))
            continue
        err = _pair_errors(notes_in_quarters(src), notes_in_quarters(dec))
        grid = 0.25 if name == "chord-duration" else 1 / 8  # quarter notes per grid step
        assert err[:, 0].max() <= grid / 2 + 1e-6, f"onset error {err[:, 0].max()}"
        assert err[:, 1].max() <= grid + 1e-6, f"duration error {err[:, 1].max()}"


@pytest.mark.parametrize("name", SUBWORD)
def test_bpe_shortens_and_decodes_to_the_same_notes(name: str, cleaned: list[ScoreTick]) -> None:
    plain = fitted(name, cleaned)
    bpe = fitted(name, cleaned, bpe=True)
    assert bpe.vocab_size > plain.vocab_size
    assert bpe.special_ids == plain.special_ids  # BPE never moves PAD/BOS/EOS
    score = cleaned[0]
    ids_plain, ids_bpe = plain.encode(score), bpe.encode(score)
    assert len(ids_bpe) < 0.9 * len(ids_plain)
    assert max(ids_bpe) >= plain.vocab_size  # learned pieces are used
    a = notes_in_quarters(plain.decode(ids_plain))
    b = notes_in_quarters(bpe.decode(ids_bpe))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ALL)
def test_bytes_round_trip_and_hash(name: str, cleaned: list[ScoreTick]) -> None:
    if name in MIDITOK_MULTI_VOCAB:
        tok = fitted(name, cleaned)
        back = tokenizer_from_bytes(tokenizer_to_bytes(tok))
        assert tokenizer_hash(back) == tokenizer_hash(tok)
        assert back.encode(cleaned[1]) == tok.encode(cleaned[1])
        return
    for bpe in (False, True):
        tok = fitted(name, cleaned, bpe)
        data = tokenizer_to_bytes(tok)
        back = tokenizer_from_bytes(data)
        assert type(back) is type(tok)
        assert tokenizer_hash(back) == tokenizer_hash(tok)
        assert tokenizer_to_bytes(back) == data  # deterministic bytes
        assert vocab_size(back) == vocab_size(tok)
        assert special_ids(back) == special_ids(tok)
        assert back.encode(cleaned[1]) == tok.encode(cleaned[1])
    assert tokenizer_hash(fitted(name, cleaned)) != tokenizer_hash(fitted(name, cleaned, True))


@pytest.mark.parametrize("name", ALL)
def test_decode_never_crashes_on_sampled_garbage(name: str, cleaned: list[ScoreTick]) -> None:
    tok = fitted(name, cleaned, bpe=name not in MIDITOK_MULTI_VOCAB)
    rng = np.random.default_rng(0)
    for n in (0, 1, 7, 300):
        ids = rng.integers(-5, tok.vocab_size + 20, n).tolist()
        data = decode_to_midi(tok, ids)
        assert load_score(data).ticks_per_quarter > 0


@given(ids=st.lists(st.integers(-3, 700), max_size=200))
@settings(max_examples=40, deadline=None, database=None)
def test_decode_property_remi(ids: list[int]) -> None:
    tok = _remi()
    data = decode_to_midi(tok, ids)
    assert load_score(data) is not None


_remi_cache: list[Tokenizer] = []


def _remi() -> Tokenizer:
    if not _remi_cache:
        _remi_cache.append(build_tokenizer(resolve_spec(preset="remi-chords-tempos")))
    return _remi_cache[0]


# ---- specs ----------------------------------------------------------------------------------


def test_option_table_matches_miditok() -> None:
    """The literal option table (so the API needs no MidiTok) equals MidiTok's signature."""
    import collections.abc as cabc

    from cadenza.tokenize.spec import import_miditok

    mc = import_miditok().classes
    hints = typing.get_type_hints(
        mc.TokenizerConfig.__init__,
        globalns={**vars(mc), "Sequence": cabc.Sequence, "Mapping": cabc.Mapping},
    )
    hints.pop("return")
    assert {k: repr(v) for k, v in hints.items()} == {
        k: repr(v) for k, v in MIDITOK_OPTION_TYPES.items()
    }


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"num_velocities": "many"}, "num_velocities"),
        ({"no_such_option": 1}, "no_such_option"),
        ({"beat_res": {"zero_four": 8}}, "beat_res"),
        ({"pitch_range": [21]}, "pitch_range"),
        ({"encode_ids_split": "track"}, "encode_ids_split"),
    ],
)
def test_bad_config_names_the_field(config: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=f"config.{field}"):
        TokenizerSpec(name="REMI", config=config)


def test_own_tokenizer_configs_are_validated() -> None:
    with pytest.raises(ValueError, match="config.steps_per_quarter"):
        TokenizerSpec(name="chord-duration", config={"steps_per_quarter": 0})
    with pytest.raises(ValueError, match="Unicode"):
        TokenizerSpec(name="midichar", config={"pitch_range": [0, 127], "duration_bins": 256})
    with pytest.raises(ValueError, match="config.bogus: Extra inputs"):
        TokenizerSpec(name="midichar", config={"bogus": 1})


def test_miditok_cross_field_errors_surface_at_build() -> None:
    spec = TokenizerSpec(
        name="REMI", config={"use_rests": True, "beat_res": {"0_4": 4}, "beat_res_rest": {"0_4": 8}}
    )
    with pytest.raises(ValueError, match="config"):
        build_tokenizer(spec)


@pytest.mark.parametrize("name", MIDITOK_MULTI_VOCAB)
def test_compound_tokenizers_are_flattened_and_refuse_bpe(
    name: str, cleaned: list[ScoreTick]
) -> None:
    with pytest.raises(ValueError, match="bpe: "):
        TokenizerSpec.model_validate({"name": name, "bpe": {"vocab_size": 2000}})
    tok = fitted(name, cleaned)
    ids = tok.encode(cleaned[0])
    sizes = [len(v) for v in tok.miditok.vocab]  # type: ignore[attr-defined]
    assert tok.vocab_size == sum(sizes) and max(ids) < tok.vocab_size
    # a tuple's fields follow each other: the first id of the stream is a field-0 id
    assert ids[0] < sizes[0]
    # a stream cut mid-tuple still decodes (the missing fields are filled in)
    assert tok.decode(ids[: len(ids) // 2 + 1]).note_num() > 0


def test_bpe_spec_is_strict() -> None:
    with pytest.raises(ValueError):
        TokenizerSpec.model_validate(
            {"name": "REMI", "bpe": {"vocab_size": 1000, "model": "SentencePiece"}}
        )
    with pytest.raises(ValueError):
        TokenizerSpec.model_validate({"name": "REMI", "bpe": {"vocab_size": 1000, "merges": 5}})


def test_remi_chords_tempos_preset_reproduces_the_colab_remi_setup() -> None:
    tok = build_tokenizer(resolve_spec(preset="remi-chords-tempos"))
    vocab = tok.miditok.vocab  # type: ignore[attr-defined]
    pitches = sorted(int(k.split("_")[1]) for k in vocab if k.startswith("Pitch_"))
    assert (pitches[0], pitches[-1], len(pitches)) == (21, 108, 88)
    assert sum(k.startswith("Velocity_") for k in vocab) == 32
    assert sum(k.startswith("Tempo_") for k in vocab) == 32
    assert any(k.startswith("Chord_") for k in vocab) and any(k.startswith("Rest_") for k in vocab)
    assert tok.vocab_size == 284  # the Colab model hard-coded 258; MidiTok 2 gave 276-279
    assert tok.spec.bpe is None


def test_older_preset_names_resolve_to_the_same_specs() -> None:
    from cadenza.tokenize.presets import (
        ALIASES,
        AUGMENT_ALIASES,
        AUGMENT_PRESETS,
        PRESETS,
        PRESETS_BY_ANY_NAME,
    )

    assert set(ALIASES) == {
        "remi-colab",
        "midichar-ideas",
        "chord-duration-keras",
        "bachsformer-vq",
    }
    # every preset but the ones newer than the old names (multitrack) has its older name
    assert set(ALIASES.values()) == set(PRESETS) - {"multitrack"} and set(PRESETS_BY_ANY_NAME) == {
        *PRESETS,
        *ALIASES,
    }
    for old, new in ALIASES.items():
        assert resolve_spec(preset=old) == resolve_spec(preset=new)
        assert PRESETS_BY_ANY_NAME[old] is PRESETS[new]
    assert AUGMENT_ALIASES == {"colab": "small-shifts"}
    for name in AUGMENT_PRESETS:
        assert AugmentSpec.model_validate(AUGMENT_PRESETS[name]).enabled


def test_resolve_spec_merges_overrides_and_names_the_problem() -> None:
    spec = resolve_spec(preset="remi-colab", config={"num_velocities": 16}, bpe={"vocab_size": 500})
    assert spec.name == "REMI" and spec.config["num_velocities"] == 16
    assert spec.config["num_tempos"] == 32 and spec.bpe is not None and spec.bpe.vocab_size == 500
    assert resolve_spec(preset="remi-chords-tempos", tokenizer="REMI").name == "REMI"
    assert resolve_spec() == TokenizerSpec(name="REMI")
    assert resolve_spec(tokenizer="TSD", config={"num_velocities": 8}).config["num_velocities"] == 8
    with pytest.raises(ValueError, match="unknown preset 'nope'; known: remi-chords-tempos, ") as e:
        resolve_spec(preset="nope")
    assert "remi-colab" in str(e.value)  # the older names are still listed as accepted
    with pytest.raises(ValueError, match="preset remi-colab is a REMI tokenizer; drop `tokenizer`"):
        resolve_spec(preset="remi-colab", tokenizer="TSD")
    with pytest.raises(ValueError, match="num_velocities"):
        resolve_spec(preset="remi-colab", config={"num_velocities": "many"})


def test_presets_import_no_heavy_module() -> None:
    """The API resolves presets; importing them must not pull in torch, MidiTok or symusic."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from cadenza.tokenize.presets import resolve_spec\n"
        "resolve_spec(preset='quarter-vq-large')\n"
        "resolve_spec(preset='remi-chords-tempos')\n"
        "heavy = {'torch', 'miditok', 'symusic'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spec_survives_a_key_reordering_store() -> None:
    """PostgreSQL JSONB reorders keys; the rebuilt tokenizer must have the same ids."""
    spec = TokenizerSpec(
        name="REMI",
        config={"use_time_signatures": True, "time_signature_range": {"8": [6, 3], "4": [4, 3]}},
    )
    dumped = spec.model_dump(mode="json")
    reordered = json.loads(json.dumps(dumped, sort_keys=True))
    reordered["config"] = dict(reversed(list(reordered["config"].items())))
    a, b = build_tokenizer(spec), build_tokenizer(TokenizerSpec.model_validate(reordered))
    assert tokenizer_hash(a) == tokenizer_hash(b)


def test_same_spec_same_hash_different_spec_different_hash() -> None:
    a = build_tokenizer(TokenizerSpec(name="TSD"))
    b = build_tokenizer(TokenizerSpec(name="TSD"))
    c = build_tokenizer(TokenizerSpec(name="TSD", config={"num_velocities": 16}))
    assert tokenizer_hash(a) == tokenizer_hash(b) != tokenizer_hash(c)
    assert len(tokenizer_hash(a)) == 64


def test_untrained_subwords_are_an_error(cleaned: list[ScoreTick]) -> None:
    tok = build_tokenizer(
        TokenizerSpec.model_validate({"name": "REMI", "bpe": {"vocab_size": 600}})
    )
    assert not tok.is_trained
    with pytest.raises(RuntimeError, match="fit"):
        tok.encode(cleaned[0])


# ---- splits and corpus ----------------------------------------------------------------------


def test_assign_splits_is_seeded_order_free_and_leak_free() -> None:
    ids = [f"f{i:03d}" for i in range(100)]
    a = assign_splits(ids, (0.8, 0.1, 0.1), seed=1)
    assert a == assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=1)
    assert a != assign_splits(ids, (0.8, 0.1, 0.1), seed=2)
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 80, "val": 10, "test": 10}
    grown = assign_splits([*ids, "f100"], (0.8, 0.1, 0.1), seed=1)
    assert sum(grown[f] != a[f] for f in ids) <= 3  # adding a file moves almost nothing


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_few_files_still_give_train_and_val(n: int) -> None:
    a = assign_splits([f"f{i}" for i in range(n)], (0.8, 0.1, 0.1), seed=0)
    assert "train" in a.values()
    if n >= 2:
        assert "val" in a.values()


def test_assign_splits_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError):
        assign_splits(["a"], (0.5, 0.2, 0.2), 0)
    with pytest.raises(ValueError):
        assign_splits(["a", "a"], (0.8, 0.1, 0.1), 0)


def _segments(arr: np.ndarray, bos: int, eos: int) -> list[np.ndarray]:
    starts = np.flatnonzero(arr == bos)
    ends = np.flatnonzero(arr == eos)
    assert len(starts) == len(ends) and np.all(starts < ends)
    return [arr[s + 1 : e] for s, e in zip(starts, ends, strict=True)]


def test_build_corpus_end_to_end(bach_bytes: list[tuple[str, bytes]], tmp_path: Path) -> None:
    files = [*bach_bytes, ("junk", b"not a midi file"), ("tiny", midi_bytes([(0, 480, 60, 80)]))]
    seen: list[float] = []
    build = build_corpus(
        files,
        TokenizerSpec.model_validate({"name": "REMI", "bpe": {"vocab_size": 500}}),
        split=(0.6, 0.2, 0.2),
        seed=3,
        augment=AugmentSpec(pitch_offsets=[-2, 2], velocity_offsets=[8]),
        workers=2,
        progress=lambda f, m: seen.append(f),
    )
    tok = build.tokenizer
    fs = build.file_splits
    used = [f for f, _ in bach_bytes]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == sorted(used)  # each file once
    assert fs["train"] and fs["val"]
    assert set(build.stats.skipped) == {"junk", "tiny"}
    assert build.stats.skipped["junk"].startswith("not_midi")
    assert "fewer than" in build.stats.skipped["tiny"]
    assert seen == sorted(seen) and seen[-1] == 1.0
    for split, arr in build.splits.items():
        assert arr.dtype == np.int32 and arr.ndim == 1
        segs = _segments(arr, tok.bos_id, tok.eos_id)
        assert len(segs) == build.stats.sequences_per_split[split]
        assert all(len(s) > 0 and s.max() < tok.vocab_size for s in segs)
    # augmentation on train only: 3 copies per train file (two pitch shifts, one velocity)
    assert build.stats.sequences_per_split["train"] == 4 * len(fs["train"])
    assert build.stats.sequences_per_split["val"] == len(fs["val"])
    assert build.stats.compression > 1.5 and build.stats.mean_tokens_per_bar > 0
    assert dict(build.stats)["vocab_size"] == tok.vocab_size == 500
    json.dumps(build.stats.to_dict())
    # the arrays decode back to the val files' notes
    val0 = next(d for f, d in bach_bytes if f == fs["val"][0])
    first_val = _segments(build.splits["val"], tok.bos_id, tok.eos_id)[0]
    ref, _ = clean_score(load_score(val0))
    assert ref is not None
    np.testing.assert_array_equal(
        notes_in_quarters(tok.decode(first_val.tolist()))[:, 2], notes_in_quarters(ref)[:, 2]
    )
    # npz export, nanoGPT style
    path = build.save_npz(tmp_path / "corpus.npz")
    back = load_npz(path)
    np.testing.assert_array_equal(back["train"], build.splits["train"])
    assert set(np.load(path).files) == {"train_data", "val_data", "test_data"}
    assert load_npz(build.to_npz_bytes()).keys() == back.keys()
    assert build.meta()["tokenizer_hash"] == tokenizer_hash(tok)


@pytest.mark.parametrize("name", ["midichar", "chord-duration", "Octuple"])
def test_corpus_is_seeded_and_independent_of_workers(
    name: str, bach_bytes: list[tuple[str, bytes]]
) -> None:
    spec = TokenizerSpec.model_validate({"name": name})
    a = build_corpus(bach_bytes, spec, seed=7, workers=1)
    b = build_corpus(list(reversed(bach_bytes)), spec, seed=7, workers=2)
    assert a.file_splits == b.file_splits
    assert a.tokenizer.hash() == b.tokenizer.hash()
    for s in a.splits:
        np.testing.assert_array_equal(a.splits[s], b.splits[s])
    others = [build_corpus(bach_bytes, spec, seed=s, workers=1).file_splits for s in (8, 9, 10)]
    assert any(o != a.file_splits for o in others)


def test_corpus_with_two_files_has_train_and_val(bach_bytes: list[tuple[str, bytes]]) -> None:
    build = build_corpus(bach_bytes[:2], TokenizerSpec(name="TSD"), workers=1)
    assert len(build.file_splits["train"]) == 1 and len(build.file_splits["val"]) == 1
    assert build.splits["test"].size == 0


def test_corpus_cancel_and_empty(bach_bytes: list[tuple[str, bytes]]) -> None:
    calls: list[int] = []

    def stop() -> bool:
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(CorpusCancelled):
        build_corpus(bach_bytes, TokenizerSpec(name="REMI"), workers=2, should_stop=stop)
    with pytest.raises(CorpusEmpty, match="not_midi"):
        build_corpus([("a", b"nope"), ("b", b"")], TokenizerSpec(name="REMI"), workers=1)


# ---- primers and decoding ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["REMI", "TSD", "CPWord", "chord-duration", "midichar"])
def test_encode_primer_cuts_bars_and_seconds(
    name: str, cleaned: list[ScoreTick], bach_bytes: list[tuple[str, bytes]]
) -> None:
    tok = fitted(name, cleaned)
    data = bach_bytes[0][1]
    full = tok.encode(clean_score(load_score(data))[0])  # type: ignore[arg-type]
    two_bars = encode_primer(tok, data, bars=2)
    assert 0 < len(two_bars) < len(full) / 4
    assert tok.bos_id not in two_bars and tok.eos_id not in two_bars
    score = load_score(data)
    tpq = score.ticks_per_quarter
    ts = score.time_signatures[0] if len(score.time_signatures) else None
    bar_q = (ts.numerator * 4 / ts.denominator) if ts else 4.0
    dec = tok.decode([tok.bos_id, *two_bars])
    onsets = notes_in_quarters(dec)[:, 0] if name != "midichar" else None
    if onsets is not None:  # the pickup/anacrusis bar counts as bar 1
        assert onsets.max() < 2 * bar_q
    five_s = encode_primer(tok, data, seconds=5.0)
    sec = notes_in_seconds(load_score(data))
    expected = (sec[:, 0] < 5.0).sum()
    assert len(five_s) < len(full)
    if name == "midichar":  # one character per note (no rests in the first 5 s)
        assert len(five_s) <= expected
    assert tpq > 0


def test_encode_primer_rejects_empty_primers() -> None:
    tok = _remi()
    empty = midi_bytes([])
    with pytest.raises(ValueError):
        encode_primer(tok, empty)


def test_decode_to_midi_stops_at_eos_and_keeps_notes(cleaned: list[ScoreTick]) -> None:
    tok = fitted("REMI", cleaned)
    ids = tok.encode(cleaned[0])
    one = load_score(decode_to_midi(tok, [tok.bos_id, *ids, tok.eos_id, tok.bos_id, *ids]))
    both = load_score(decode_to_midi(tok, [*ids, *ids], stop_at_eos=False))
    assert one.note_num() == cleaned[0].note_num()
    assert both.note_num() >= one.note_num()


def test_a_crashing_worker_costs_only_its_file(
    bach_bytes: list[tuple[str, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that kills its worker process (think: a segfault in native code) is isolated in a
    process of its own and skipped; the other files still make the corpus."""
    import os

    import cadenza.tokenize.corpus_workers as corpus_workers

    real = corpus_workers._process

    def crashing(ctx: object, index: int, file_id: str, data: bytes, is_train: bool) -> object:
        if file_id == "crash":
            os._exit(3)
        return real(ctx, index, file_id, data, is_train)  # type: ignore[arg-type]

    monkeypatch.setattr(corpus_workers, "_process", crashing)  # forked workers inherit the patch
    files = [*bach_bytes[:2], ("crash", bach_bytes[2][1]), *bach_bytes[2:]]
    build = build_corpus(files, TokenizerSpec(name="TSD"), workers=2)
    assert build.stats.skipped == {"crash": "the tokenizer process crashed on it"}
    assert build.stats.files_used == len(bach_bytes)  # the files after the crash went on
