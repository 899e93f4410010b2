"""Turn a dataset's MIDI files into a training corpus: seeded file split, parallel tokenization,
train-only augmentation and subword learning, and nanoGPT-style flat id arrays.

Guarantees: the split is by file, seeded and leak-free (no piece or augmented copy of it is in
two splits); BPE and midichar's alphabet are learned from the training split only; each file is
wrapped in BOS … EOS (rather than preceded by a run of PAD ids), so a model learns where pieces
start and end; every skipped file is reported with its reason.

A build is two steps, so it can stream and shard:
1. :func:`tokenize_to_spool`: files (any subset, any order) → one *spool* file of per-file
   symbols (:mod:`~cadenza.tokenize.corpus_spool`). Bytes are read one file at a time as a
   process is ready for it; results go to disk as they finish.
2. :func:`merge_spools`: the spools of every file → the corpus: group by split in seeded order,
   learn the vocabulary from the training files, encode in batches appended to one array file
   per split. Nothing in it depends on how files were divided between spools, which is why a
   sharded build (one spool per shard job, merged by the coordinating job) equals a single one
   byte for byte.
:func:`build_corpus` runs both in one process. Memory held at once: the files in flight, one
batch of encoded files, the training split's symbols while the vocabulary is learned, and one
small record per file, never the dataset's bytes or scores.

The parts live beside this module: :mod:`~cadenza.tokenize.splits` (the split),
:mod:`~cadenza.tokenize.corpus_workers` (per-file work and the process pool) and
:mod:`~cadenza.tokenize.corpus_data` (the result and its ``.npz`` form); their public names are
re-exported here.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cadenza.midi.clean import CleanOptions
from cadenza.midi.load import MidiLimits
from cadenza.tokenize.base import Tokenizer
from cadenza.tokenize.corpus_data import (
    CorpusBuild,
    CorpusCancelled,
    CorpusEmpty,
    CorpusStats,
    load_npz,
)
from cadenza.tokenize.corpus_spool import SpoolEntry, SpoolReader, SpoolWriter, scan_spool
from cadenza.tokenize.corpus_workers import (
    P_TOKENIZE,
    Progress,
    Read,
    Task,
    default_workers,
    tokenize_files,
)
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec
from cadenza.tokenize.splits import SPLITS, assign_splits, file_rank

#: Share of the progress bar done once the vocabulary is learned (encoding takes the rest).
_P_FIT = 0.95
#: Files encoded per ``ids_batch`` call while writing the arrays (bounds the memory it takes).
ENCODE_BATCH = 256

#: A file's MIDI bytes, or a function that reads them when the build gets to the file.
FileBytes = bytes | Callable[[], bytes]


def _group_by_split(
    used: list[SpoolEntry], assignment: dict[str, str], seed: int, val_fraction: float
) -> dict[str, list[SpoolEntry]]:
    """Usable files per split, in seeded order, keeping the split's guarantees after skips.

    Train is never empty, and val is not empty when ≥ 2 files survive (a file moved into val
    loses its augmented copies: val is never augmented).
    """
    by_split: dict[str, list[SpoolEntry]] = {s: [] for s in SPLITS}
    for r in sorted(used, key=lambda r: file_rank(seed, r.file_id)):  # input order must not matter
        by_split[assignment[r.file_id]].append(r)
    if not by_split["train"]:
        donor = "test" if by_split["test"] else "val"
        by_split["train"].append(by_split[donor].pop())
    if not by_split["val"] and len(used) >= 2 and val_fraction > 0:
        src = "test" if by_split["test"] else "train"
        moved = by_split[src].pop()
        moved.variants = min(moved.variants, 1)
        by_split["val"].append(moved)
    return by_split


def _encode_splits(
    tok: Tokenizer,
    by_split: dict[str, list[SpoolEntry]],
    reader: SpoolReader,
    out_dir: Path,
    should_stop: Callable[[], bool] | None,
    tags: Mapping[str, Sequence[str]],
) -> tuple[dict[str, Path], int]:
    """Append BOS … EOS ids of every kept sequence to one raw int32 file per split, encoding
    :data:`ENCODE_BATCH` files at a time; also returns the final ids of the original files
    (augmented copies left out, so tokens per bar and compression describe the music as is)."""
    files: dict[str, Path] = {}
    final_tokens = 0
    bos = np.asarray([tok.bos_id], "<i4").tobytes()
    eos = np.asarray([tok.eos_id], "<i4").tobytes()
    for s in SPLITS:
        files[s] = out_dir / f"{s}.i32"
        entries = by_split[s]
        with open(files[s], "wb") as out:
            for b in range(0, len(entries), ENCODE_BATCH):
                if should_stop is not None and should_stop():
                    raise CorpusCancelled
                batch = entries[b : b + ENCODE_BATCH]
                items = list(reader.iter_variants(batch))
                encoded = tok.ids_batch(items) if items else []
                k = 0
                for e in batch:
                    final_tokens += int(encoded[k].size)
                    for ids in encoded[k : k + e.variants]:
                        ids = tok.with_tags(ids, tags.get(e.file_id, ()))
                        out.write(bos + np.ascontiguousarray(ids, "<i4").tobytes() + eos)
                    k += e.variants
    return files, final_tokens


def _init_args(
    spec: TokenizerSpec, clean: CleanOptions, augment: AugmentSpec | None, limits: MidiLimits
) -> tuple[str, dict[str, object], str | None, dict[str, object]]:
    return (
        spec.model_dump_json(),
        asdict(clean),
        augment.model_dump_json() if augment is not None else None,
        asdict(limits),
    )


def tokenize_to_spool(
    tasks: Sequence[Task],
    read: Read,
    spec: TokenizerSpec,
    out: Path,
    *,
    augment: AugmentSpec | None = None,
    clean: CleanOptions | None = None,
    limits: MidiLimits | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[SpoolEntry]:
    """Step 1: tokenize ``tasks`` ((input index, file id, in train?)) into the spool ``out``.

    ``read(index)`` returns a file's bytes; it is called once per file (twice for a file whose
    process crashed), just before the file goes to a process. Returns the spool's entries.
    """
    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, max(1, len(tasks)))
    build_tokenizer(spec)  # fails fast on options MidiTok refuses, before any worker starts
    init = _init_args(spec, clean or CleanOptions(), augment, limits or MidiLimits())
    with SpoolWriter(out) as spool:
        tokenize_files(list(tasks), read, init, workers, spool.write, progress, should_stop)
    return spool.entries


def merge_spools(
    entries: list[SpoolEntry],
    spec: TokenizerSpec,
    *,
    files_total: int,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    workers: int = 1,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    seconds: dict[str, float] | None = None,
    tokenizer: Tokenizer | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
) -> CorpusBuild:
    """Step 2: the entries of every file's spool record → the corpus (see the module docstring).

    The result depends only on the set of entries, not on their order or on which spool holds
    them. ``tags`` (file id → style tags) become tokens when the spec has ``learn_tags``: the
    vocabulary holds every used file's tags, each sequence its own file's after the per-piece
    controls. Raises :class:`CorpusEmpty` when no file is usable. A fitted ``tokenizer``
    (another corpus's, of ``spec``) encodes as it is instead of learning a vocabulary, so the
    ids are that corpus's (what a base model's adapter needs).
    """
    tags = tags or {}
    t1 = time.perf_counter()
    entries = sorted(entries, key=lambda e: e.index)
    assignment = assign_splits([e.file_id for e in entries], split, seed)
    skipped = {e.file_id: e.skipped for e in entries if e.skipped is not None}
    used = [e for e in entries if e.skipped is None]
    if not used:
        raise CorpusEmpty(skipped)
    by_split = _group_by_split(used, assignment, seed, split[1])
    if progress is not None:
        progress(P_TOKENIZE, "learning the vocabulary" if tokenizer is None else "encoding")
    if should_stop is not None and should_stop():
        raise CorpusCancelled
    if tokenizer is not None:  # a base model's: its vocabulary (and tags) stay as they are
        if tokenizer.spec != spec:
            raise ValueError("the given tokenizer was built from another spec than this corpus's")
        tok = tokenizer
    else:
        tok = build_tokenizer(spec)
        tok.set_tags(sorted({t for e in used for t in tags.get(e.file_id, ())}))
    workdir = tempfile.TemporaryDirectory(prefix="cadenza-corpus-")
    try:
        with SpoolReader() as reader:
            if tokenizer is None:
                tok.fit(list(reader.iter_variants(by_split["train"])))
            t2 = time.perf_counter()
            if progress is not None:
                progress(_P_FIT, "encoding")
            files, final_tokens = _encode_splits(
                tok, by_split, reader, Path(workdir.name), should_stop, tags
            )
    except BaseException:
        workdir.cleanup()
        raise
    t3 = time.perf_counter()
    if progress is not None:
        progress(1.0, "done")
    base_tokens = sum(e.base_tokens for s in SPLITS for e in by_split[s])
    bars = sum(e.bars for s in SPLITS for e in by_split[s])
    stats = CorpusStats(
        files_total=files_total,
        files_used=len(used),
        files_per_split={s: len(by_split[s]) for s in SPLITS},
        sequences_per_split={s: sum(e.variants for e in by_split[s]) for s in SPLITS},
        tokens_per_split={s: files[s].stat().st_size // 4 for s in SPLITS},
        vocab_size=tok.vocab_size,
        base_vocab_size=tok.base_vocab_size,
        mean_tokens_per_bar=final_tokens / bars if bars else 0.0,
        base_tokens_per_bar=base_tokens / bars if bars else 0.0,
        compression=base_tokens / final_tokens if final_tokens else 1.0,
        notes=sum(e.notes for e in used),
        skipped=skipped,
        clean_reports={e.file_id: e.report for e in entries},
        seconds={**(seconds or {}), "fit": t2 - t1, "encode": t3 - t2},
        workers=workers,
        tokenizer=tok.fit_stats(),
    )
    return CorpusBuild(
        tokenizer=tok,
        split_files=files,
        file_splits={s: [e.file_id for e in by_split[s]] for s in SPLITS},
        stats=stats,
        workdir=workdir,
    )


def build_corpus(
    files: Sequence[tuple[str, FileBytes]],
    spec: TokenizerSpec,
    *,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    augment: AugmentSpec | None = None,
    clean: CleanOptions | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    limits: MidiLimits | None = None,
    tokenizer: Tokenizer | None = None,
    tags: Mapping[str, Sequence[str]] | None = None,
) -> CorpusBuild:
    """Tokenize ``files`` ((file id, MIDI bytes or a function reading them) pairs) into a
    corpus, streaming: see the module docstring.

    ``workers`` processes tokenize in parallel (default: usable cores; 1 = in this process).
    ``progress(fraction, message)`` is called as files finish; ``should_stop()`` is polled as
    well and cancels the build (:class:`CorpusCancelled`). Raises :class:`CorpusEmpty` when no
    file is usable. ``tags``: see :func:`merge_spools`. The result does not depend on
    ``workers``. Close the result (or let it be collected) to remove its array files. A
    fitted ``tokenizer`` of ``spec`` encodes as it is (see :func:`merge_spools`).
    """
    t0 = time.perf_counter()
    assignment = assign_splits([f for f, _ in files], split, seed)

    def read(i: int) -> bytes:
        data = files[i][1]
        return data if isinstance(data, bytes) else data()

    tasks = [(i, f, assignment[f] == "train") for i, (f, _) in enumerate(files)]
    n_workers = min(default_workers() if workers is None else max(1, workers), max(1, len(files)))
    with tempfile.TemporaryDirectory(prefix="cadenza-spool-") as tmp:
        entries = tokenize_to_spool(
            tasks,
            read,
            spec,
            Path(tmp) / "all.spool",
            augment=augment,
            clean=clean,
            limits=limits,
            workers=n_workers,
            progress=progress,
            should_stop=should_stop,
        )
        t1 = time.perf_counter()
        build = merge_spools(
            entries,
            spec,
            files_total=len(files),
            split=split,
            seed=seed,
            workers=n_workers,
            progress=progress,
            should_stop=should_stop,
            seconds={"tokenize": t1 - t0},
            tokenizer=tokenizer,
            tags=tags,
        )
    build.stats.seconds["total"] = time.perf_counter() - t0
    return build


__all__ = [
    "SPLITS",
    "CorpusBuild",
    "CorpusCancelled",
    "CorpusEmpty",
    "CorpusStats",
    "assign_splits",
    "build_corpus",
    "default_workers",
    "load_npz",
    "merge_spools",
    "scan_spool",
    "tokenize_to_spool",
]
