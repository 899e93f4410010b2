"""Turn a dataset's MIDI files into a training corpus: seeded file split, parallel tokenization,
train-only augmentation and subword learning, and nanoGPT-style flat id arrays.

Guarantees: the split is by file, seeded and leak-free (no piece or augmented copy of it is in
two splits); BPE and midichar's alphabet are learned from the training split only; each file is
wrapped in BOS … EOS (rather than preceded by a run of PAD ids), so a model learns where pieces
start and end; every skipped file is reported with its reason.

The parts live beside this module: :mod:`~cadenza.tokenize.splits` (the split),
:mod:`~cadenza.tokenize.corpus_workers` (per-file work and the process pool) and
:mod:`~cadenza.tokenize.corpus_data` (the result and its ``.npz`` form); their public names are
re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
from numpy.typing import NDArray

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
from cadenza.tokenize.corpus_workers import (
    P_TOKENIZE,
    FileResult,
    Progress,
    default_workers,
    tokenize_files,
)
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec
from cadenza.tokenize.splits import SPLITS, assign_splits, file_rank

#: Share of the progress bar done once the vocabulary is learned (encoding takes the rest).
_P_FIT = 0.95


def _group_by_split(
    used: list[FileResult], assignment: dict[str, str], seed: int, val_fraction: float
) -> dict[str, list[FileResult]]:
    """Usable files per split, in seeded order, keeping the split's guarantees after skips.

    Train is never empty, and val is not empty when ≥ 2 files survive (a file moved into val
    loses its augmented copies: val is never augmented).
    """
    by_split: dict[str, list[FileResult]] = {s: [] for s in SPLITS}
    for r in sorted(used, key=lambda r: file_rank(seed, r.file_id)):  # input order must not matter
        by_split[assignment[r.file_id]].append(r)
    if not by_split["train"]:
        donor = "test" if by_split["test"] else "val"
        by_split["train"].append(by_split[donor].pop())
    if not by_split["val"] and len(used) >= 2 and val_fraction > 0:
        src = "test" if by_split["test"] else "train"
        moved = by_split[src].pop()
        moved.variants = moved.variants[:1]
        by_split["val"].append(moved)
    return by_split


def _encode_splits(
    tok: Tokenizer, by_split: dict[str, list[FileResult]]
) -> tuple[dict[str, NDArray[np.int32]], int, int, int]:
    """Flat BOS … EOS id arrays per split, and (base ids, final ids, bars) of the original files.

    The counts leave augmented copies out, so tokens per bar and compression describe the music
    as it is.
    """
    arrays: dict[str, NDArray[np.int32]] = {}
    base_tokens = final_tokens = bars = 0
    bos = np.asarray([tok.bos_id], np.int32)
    eos = np.asarray([tok.eos_id], np.int32)
    for s in SPLITS:
        items = [v for r in by_split[s] for v in r.variants]
        encoded = tok.ids_batch(items) if items else []
        parts: list[NDArray[np.int32]] = []
        k = 0
        for r in by_split[s]:
            for j, v in enumerate(r.variants):
                parts += [bos, encoded[k], eos]
                if j == 0:
                    base_tokens += int(v.symbols.size)
                    final_tokens += int(encoded[k].size)
                    bars += v.bars
                k += 1
        arrays[s] = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
    return arrays, base_tokens, final_tokens, bars


def build_corpus(
    files: Sequence[tuple[str, bytes]],
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
) -> CorpusBuild:
    """Tokenize ``files`` ((file id, MIDI bytes) pairs) into a corpus; see the module docstring.

    ``workers`` processes tokenize in parallel (default: usable cores; 1 = in this process).
    ``progress(fraction, message)`` is called as files finish; ``should_stop()`` is polled as
    well and cancels the build (:class:`CorpusCancelled`). Raises :class:`CorpusEmpty` when no
    file is usable. The result does not depend on ``workers``.
    """
    t0 = time.perf_counter()
    clean = clean or CleanOptions()
    limits = limits or MidiLimits()
    assignment = assign_splits([f for f, _ in files], split, seed)
    workers = default_workers() if workers is None else max(1, workers)
    workers = min(workers, max(1, len(files)))
    tok = build_tokenizer(spec)  # fails fast on options MidiTok refuses, before any worker starts
    init_args = (
        spec.model_dump_json(),
        asdict(clean),
        augment.model_dump_json() if augment is not None else None,
        asdict(limits),
    )
    tasks = [(i, f, data, assignment[f] == "train") for i, (f, data) in enumerate(files)]
    results = sorted(
        tokenize_files(tasks, init_args, workers, progress, should_stop), key=lambda r: r.index
    )
    t1 = time.perf_counter()

    skipped = {r.file_id: r.skipped for r in results if r.skipped is not None}
    used = [r for r in results if r.skipped is None]
    if not used:
        raise CorpusEmpty(skipped)
    by_split = _group_by_split(used, assignment, seed, split[1])
    if progress is not None:
        progress(P_TOKENIZE, "learning the vocabulary")
    if should_stop is not None and should_stop():
        raise CorpusCancelled
    tok.fit([v for r in by_split["train"] for v in r.variants])
    t2 = time.perf_counter()
    if progress is not None:
        progress(_P_FIT, "encoding")
    arrays, base_tokens, final_tokens, bars = _encode_splits(tok, by_split)
    t3 = time.perf_counter()
    if progress is not None:
        progress(1.0, "done")

    stats = CorpusStats(
        files_total=len(files),
        files_used=len(used),
        files_per_split={s: len(by_split[s]) for s in SPLITS},
        sequences_per_split={s: sum(len(r.variants) for r in by_split[s]) for s in SPLITS},
        tokens_per_split={s: int(arrays[s].size) for s in SPLITS},
        vocab_size=tok.vocab_size,
        base_vocab_size=tok.base_vocab_size,
        mean_tokens_per_bar=final_tokens / bars if bars else 0.0,
        base_tokens_per_bar=base_tokens / bars if bars else 0.0,
        compression=base_tokens / final_tokens if final_tokens else 1.0,
        notes=sum(r.notes for r in used),
        skipped=skipped,
        clean_reports={r.file_id: r.report for r in results},
        seconds={"tokenize": t1 - t0, "fit": t2 - t1, "encode": t3 - t2, "total": t3 - t0},
        workers=workers,
        tokenizer=tok.fit_stats(),
    )
    return CorpusBuild(
        tokenizer=tok,
        splits=arrays,
        file_splits={s: [r.file_id for r in by_split[s]] for s in SPLITS},
        stats=stats,
    )


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
]
