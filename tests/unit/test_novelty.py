"""The copy check (`cadenza.novelty`): n-gram hashes of training notes, and what a sample reports.

Real chorales, tokenized and decoded by a real tokenizer; the re-sample path runs a real model
that memorised a training passage, so it copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from symusic.core import ScoreTick

from cadenza.novelty import (
    COPY_RESAMPLES,
    NGRAM,
    NoveltyIndex,
    build_index,
    index_key,
    load_or_build,
    ngram_hashes,
    note_grid,
    sequences,
)
from cadenza.tokenize import build_corpus, decode_to_midi, resolve_spec
from tests.support.music import bach_pairs


@pytest.fixture(scope="module")
def corpus() -> Any:
    build = build_corpus(bach_pairs(), resolve_spec(preset="remi-colab"), workers=1)
    yield build
    build.close()


@pytest.fixture(scope="module")
def index(corpus: Any) -> NoveltyIndex:
    return build_index(corpus.tokenizer, corpus.splits["train"])


def _pieces(corpus: Any, split: str) -> list[bytes]:
    tok = corpus.tokenizer
    return [
        decode_to_midi(tok, [tok.bos_id, *p.tolist(), tok.eos_id])
        for p in sequences(corpus.splits[split], tok.bos_id, tok.eos_id)
    ]


def _grid(midi: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return note_grid(ScoreTick.from_midi(midi))


def test_a_training_piece_is_copied_whole(corpus: Any, index: NoveltyIndex) -> None:
    for midi in _pieces(corpus, "train"):
        pitch, _, _ = _grid(midi)
        got = index.check_midi(midi)
        assert got["copied_fraction"] == 1.0 and got["copied_ngrams"] == got["ngrams"]
        assert got["ngrams"] == pitch.size - NGRAM + 1
        assert got["longest_copied_run"] == pitch.size  # every note, verbatim


@pytest.mark.parametrize(
    "spec",
    [
        {"preset": "midichar-sentencepiece"},
        {"preset": "chord-duration-16th"},
        {"tokenizer": "TSD", "bpe": {"vocab_size": 400}},
    ],
    ids=["midichar-bpe", "chord-duration", "tsd-bpe"],
)
def test_every_kind_of_tokenizer_finds_its_training_pieces(spec: dict[str, Any]) -> None:
    """Own encodings and subword merges too: the index is of decoded notes, not of ids."""
    build = build_corpus(bach_pairs(), resolve_spec(**spec), workers=1)
    try:
        index = build_index(build.tokenizer, build.splits["train"])
        for midi in _pieces(build, "train"):
            got = index.check_midi(midi)
            assert got["copied_fraction"] == 1.0
            assert got["longest_copied_run"] == got["ngrams"] + NGRAM - 1
        for midi in _pieces(build, "val"):
            assert index.check_midi(midi)["copied_fraction"] < 0.05
    finally:
        build.close()


def test_held_out_and_shuffled_music_is_new(corpus: Any, index: NoveltyIndex) -> None:
    held_out = _pieces(corpus, "val") + _pieces(corpus, "test")
    for midi in held_out:  # other chorales: no 8-note passage in common
        assert index.check_midi(midi)["copied_fraction"] < 0.05
    pitch, onset, dur = _grid(_pieces(corpus, "train")[0])
    shuffled = np.random.default_rng(0).permutation(pitch)  # same notes, another order
    got = index.check_hashes(ngram_hashes(shuffled, onset, dur))
    assert got["copied_fraction"] < 0.05 and got["longest_copied_run"] < 2 * NGRAM


def test_a_copied_passage_is_found_with_its_length(corpus: Any, index: NoveltyIndex) -> None:
    """A held-out piece with 30 notes of a training piece pasted in, a fifth higher: the run
    is 30 notes long (the check is transposition-invariant) and nothing else is copied."""
    new = _grid(_pieces(corpus, "val")[0])
    old = _grid(_pieces(corpus, "train")[1])
    a, b = slice(0, 40), slice(40, 80)
    shift = new[1][39] + 6 - old[1][100]  # after the 40th new note, keeping old's own steps
    passage = (old[0][100:130] + 7, old[1][100:130] + shift, old[2][100:130])
    gap = passage[1][-1] + 6 - new[1][40]
    pasted = [
        np.concatenate((new[k][a], passage[k], new[k][b] + (gap if k == 1 else 0)))
        for k in range(3)
    ]
    got = index.check_hashes(ngram_hashes(*pasted))
    assert got["longest_copied_run"] == 30
    assert got["copied_ngrams"] == 30 - NGRAM + 1
    assert got["ngrams"] == 110 - NGRAM + 1


def test_primer_notes_are_not_counted_as_copied(corpus: Any, index: NoveltyIndex) -> None:
    midi = _pieces(corpus, "train")[0]
    n = _grid(midi)[0].size
    assert index.check_midi(midi, skip_notes=n)["ngrams"] == 0  # all primer: nothing checked
    # 20 primer notes: windows reaching into note 21 onwards are checked (copied here)
    got = index.check_midi(midi, skip_notes=20)
    assert got["ngrams"] == n - 20 and got["copied_fraction"] == 1.0


def test_short_and_empty_pieces(index: NoveltyIndex) -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert index.check_hashes(ngram_hashes(empty, empty, empty)) == {
        "ngram": NGRAM,
        "ngrams": 0,
        "copied_ngrams": 0,
        "copied_fraction": 0.0,
        "longest_copied_run": 0,
    }
    seven = np.arange(NGRAM - 1, dtype=np.int64)
    assert ngram_hashes(seven + 60, seven * 6, seven * 0 + 6).size == 0
    assert NoveltyIndex(np.zeros(0, np.uint64)).check_midi(b"not midi")["ngrams"] == 0


def test_index_round_trips_and_is_built_once_into_the_store(
    corpus: Any, index: NoveltyIndex, tmp_path: Path
) -> None:
    from cadenza.config import Settings
    from cadenza.storage import open_store

    assert index.hashes.dtype == np.uint64 and np.all(np.diff(index.hashes) > 0)  # sorted, unique
    again = NoveltyIndex.from_bytes(index.to_bytes())
    np.testing.assert_array_equal(again.hashes, index.hashes)
    with pytest.raises(ValueError, match="not a novelty index"):
        NoveltyIndex.from_bytes(NoveltyIndex(np.zeros(3, np.int64)).to_bytes())  # type: ignore[arg-type]

    store = open_store(Settings(data_dir=tmp_path))
    prefix = "jobs/abc/corpus"
    store.put(f"{prefix}/export.npz", corpus.to_npz_bytes())
    assert not store.exists(index_key(prefix))
    built = load_or_build(store, prefix, corpus.tokenizer)  # a corpus made before the check
    np.testing.assert_array_equal(built.hashes, index.hashes)
    assert store.get(index_key(prefix)) == index.to_bytes()
    store.delete(f"{prefix}/export.npz")  # the second use reads the index, not the arrays
    np.testing.assert_array_equal(
        load_or_build(store, prefix, corpus.tokenizer).hashes, index.hashes
    )


def test_resample_keeps_the_least_copied_try_that_is_not_near_empty(
    corpus: Any, index: NoveltyIndex
) -> None:
    from cadenza.sample.variations import Variation, resample_copies

    train, val = _pieces(corpus, "train")[0], _pieces(corpus, "val")[0]

    def variation(i: int, midi: bytes, attempts: int, new_notes: int = 100) -> Variation:
        return Variation(i, [], [], midi, 100, new_notes, 1.0, {}, attempts, index.check_midi(midi))

    out = [variation(0, train, 1), variation(1, val, 1)]
    tries: list[list[int]] = []

    def redraw(rows: list[int], k: int) -> list[Variation]:
        tries.append(rows)
        # first re-sample: near-empty (no n-grams, "new" but useless); then a held-out piece
        return [
            variation(i, val, out[i].attempts + 1, new_notes=0 if k == 1 else 100) for i in rows
        ]

    resample_copies(out, redraw, 0.5, 10, None)
    assert tries == [[0], [0]]  # only the copying row, until it got below the limit
    assert out[0].midi == val and out[0].attempts == 3
    assert out[0].novelty is not None and out[1].novelty is not None
    assert out[0].novelty["resampled"] == 2 and out[0].novelty["over_limit"] is False
    assert out[1].novelty == {
        **index.check_midi(val),
        "max_copied_fraction": 0.5,
        "resampled": 0,
        "over_limit": False,
    }


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (two threads on a busy 2-core machine: 30× slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def copying_model(one_thread: None) -> tuple[Any, Any, list[int]]:
    """A nano gpt that memorised the first 64 tokens of a chorale: greedy decoding copies."""
    import torch
    from symusic import Score

    from cadenza.models import build_model, resolve_config
    from cadenza.tokenize import vocab_size
    from cadenza.tokenize.registry import build_tokenizer
    from tests.support.music import bach_paths

    tok = build_tokenizer(resolve_spec(preset="remi-chords-tempos"))
    ids = tok.encode(Score(str(bach_paths()[0])))[:64]
    torch.manual_seed(0)
    model = build_model(
        "gpt", resolve_config("gpt", "nano", {"dropout": 0.0, "block_size": 80}), vocab_size(tok)
    )
    seq = torch.tensor([[tok.bos_id, *ids]])
    opt = torch.optim.AdamW(model.optim_groups(0.0), lr=1e-2)
    model.train()
    for _ in range(300):
        logits, loss = model(seq[:, :-1], seq[:, 1:])
        assert loss is not None
        if bool((logits.argmax(-1) == seq[:, 1:]).all()):
            break  # greedy decoding now reproduces the passage
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok, model.eval(), ids


def test_a_model_that_copies_is_resampled_a_bounded_number_of_times(
    copying_model: tuple[Any, Any, list[int]],
) -> None:
    from cadenza.sample.variations import sample_variations

    tok, model, ids = copying_model
    index = build_index(tok, np.asarray([tok.bos_id, *ids, tok.eos_id], dtype=np.int32))
    opts = {"max_new_tokens": len(ids), "temperature": 0, "stop_at_eos": False}
    kw: dict[str, Any] = {"n": 1, "min_notes": 0, "resample_empty": 0, "novelty_index": index}
    plain = sample_variations(model, tok, [tok.bos_id], opts, **kw)[0]
    assert plain.novelty is not None and plain.novelty["copied_fraction"] > 0.5  # it copies
    assert "over_limit" not in plain.novelty  # no limit asked: report only
    # greedy: every try is the same copy, so every try is spent and the sample says so
    v = sample_variations(model, tok, [tok.bos_id], opts, max_copied_fraction=0.0, **kw)[0]
    assert v.novelty is not None and v.novelty["over_limit"] is True
    assert v.novelty["resampled"] == COPY_RESAMPLES and v.attempts == 1 + COPY_RESAMPLES
    assert v.new_ids == plain.new_ids
    # a limit it meets costs nothing
    ok = sample_variations(model, tok, [tok.bos_id], opts, max_copied_fraction=1.0, **kw)[0]
    assert ok.novelty is not None and ok.novelty["over_limit"] is False
    assert ok.novelty["resampled"] == 0 and ok.attempts == 1


def test_max_copied_fraction_is_validated() -> None:
    from pydantic import ValidationError

    from cadenza.sample.params import SampleRequest

    assert SampleRequest(max_copied_fraction=0.0).max_copied_fraction == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError, match="max_copied_fraction"):
            SampleRequest(max_copied_fraction=bad)
    field = SampleRequest.model_fields["max_copied_fraction"]
    assert f"at most {COPY_RESAMPLES} more times" in str(field.description)
