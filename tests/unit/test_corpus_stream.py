"""Streaming corpus build and the shard merge: spools, lazy reads, sharded == single."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cadenza.tokenize import AugmentSpec, BPESpec, TokenizerSpec, build_corpus, tokenizer_to_bytes
from cadenza.tokenize.corpus import merge_spools, scan_spool, tokenize_to_spool
from cadenza.tokenize.corpus_data import CorpusBuild, load_npz
from cadenza.tokenize.corpus_spool import SpoolReader, SpoolWriter
from cadenza.tokenize.corpus_workers import FileResult
from cadenza.tokenize.params import MAX_SHARDS, shard_count
from cadenza.tokenize.splits import assign_splits
from tests.support.music import bach_pairs, midi_bytes

SPEC = TokenizerSpec(name="REMI", bpe=BPESpec(vocab_size=400))
AUG = AugmentSpec(pitch_offsets=[-2, 2])


@pytest.fixture(scope="module")
def files() -> list[tuple[str, bytes]]:
    return [*bach_pairs(), ("junk", b"not a midi file"), ("tiny", midi_bytes([(0, 480, 60, 80)]))]


def same_corpus(a: CorpusBuild, b: CorpusBuild) -> None:
    assert a.file_splits == b.file_splits
    for s in a.split_files:
        assert a.split_files[s].read_bytes() == b.split_files[s].read_bytes(), s
    assert tokenizer_to_bytes(a.tokenizer) == tokenizer_to_bytes(b.tokenizer)
    keep = ("files_used", "files_per_split", "sequences_per_split", "tokens_per_split", "skipped")
    assert {k: a.stats[k] for k in keep} == {k: b.stats[k] for k in keep}
    assert a.stats.clean_reports == b.stats.clean_reports


def test_spool_round_trip(tmp_path: Path) -> None:
    from cadenza.tokenize.base import Symbols

    v = [Symbols(np.arange(5, dtype=np.int32), np.asarray([0, 3], np.int32), 2)]
    v.append(Symbols(np.arange(7, dtype=np.int32), np.zeros(1, np.int32), 3))
    with SpoolWriter(tmp_path / "a.spool") as w:
        w.write(FileResult(3, "x", v, 11, ["ok"]))
        w.write(FileResult(1, "bad", [], 0, [], "too short"))
    assert [(e.file_id, e.variants, e.base_tokens, e.bars) for e in w.entries] == [
        ("x", 2, 5, 2),
        ("bad", 0, 0, 0),
    ]
    scanned = scan_spool(tmp_path / "a.spool")
    assert [(e.index, e.offset, e.skipped) for e in scanned] == [
        (e.index, e.offset, e.skipped) for e in w.entries
    ]
    with SpoolReader() as r:
        back = r.variants(scanned[0])
    assert [x.symbols.tolist() for x in back] == [list(range(5)), list(range(7))]
    assert back[0].word_starts.tolist() == [0, 3] and back[1].bars == 3


def test_files_are_read_lazily_once_and_the_result_is_the_same(
    files: list[tuple[str, bytes]],
) -> None:
    reads: list[str] = []

    def reader(fid: str, data: bytes) -> object:
        def read() -> bytes:
            reads.append(fid)
            return data

        return read

    lazy = build_corpus([(f, reader(f, d)) for f, d in files], SPEC, seed=3, workers=2)  # type: ignore[misc]
    eager = build_corpus(files, SPEC, seed=3, workers=1)
    assert sorted(reads) == sorted(f for f, _ in files)
    same_corpus(lazy, eager)
    arrays = load_npz(lazy.to_npz_bytes())
    for s, arr in lazy.splits.items():
        np.testing.assert_array_equal(arrays[s], arr)
        assert arrays[s].dtype == np.int32
    assert lazy.tokens() == sum(a.size for a in arrays.values())
    workdir = lazy.split_files["train"].parent
    lazy.close()
    assert not workdir.exists()


@pytest.mark.parametrize("cuts", [[4], [1, 2, 7], [3, 3, 6]])
def test_sharded_build_equals_the_single_one(
    files: list[tuple[str, bytes]], tmp_path: Path, cuts: list[int]
) -> None:
    """Any division of the files into spools (in any order) merges to the same corpus."""
    seed, split = 5, (0.7, 0.2, 0.1)
    single = build_corpus(files, SPEC, seed=seed, split=split, augment=AUG, workers=1)
    assignment = assign_splits([f for f, _ in files], split, seed)
    bounds = [0, *cuts, len(files)]
    entries = []
    for k in reversed(range(len(bounds) - 1)):  # shards finish in any order
        tasks = [
            (i, files[i][0], assignment[files[i][0]] == "train") for i in range(*bounds[k : k + 2])
        ]
        entries += tokenize_to_spool(
            tasks, lambda i: files[i][1], SPEC, tmp_path / f"{k}.spool", augment=AUG, workers=1
        )
    merged = merge_spools(entries, SPEC, files_total=len(files), split=split, seed=seed)
    same_corpus(merged, single)
    assert merged.stats.files_total == single.stats.files_total == len(files)


def test_shard_count_follows_dataset_size() -> None:
    assert shard_count(1, None) == 1
    assert shard_count(999, None) == 1
    assert shard_count(1001, None) == 2
    assert shard_count(5000, None) == 5
    assert shard_count(10**7, None) == MAX_SHARDS
    assert shard_count(3, 8) == 3  # never more shards than files
    assert shard_count(5000, 2) == 2
