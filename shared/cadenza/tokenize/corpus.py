"""Turn a dataset's MIDI files into a training corpus: seeded file split, parallel tokenization,
train-only augmentation and subword learning, and nanoGPT-style flat id arrays.

Compared with the earlier systems: the split is by file, seeded and leak-free (A was unseeded,
C leaked between splits); BPE and midichar's alphabet are learned from the training split only;
each file is wrapped in BOS … EOS instead of A's 512 leading PAD ids, so a model learns where
pieces start and end; every skipped file is reported with its reason.
"""

from __future__ import annotations

import hashlib
import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cadenza.midi.clean import CleanOptions, clean_score
from cadenza.midi.load import MidiLimits, MidiRejected, load_score
from cadenza.tokenize.base import Symbols, Tokenizer
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec, import_miditok

SPLITS = ("train", "val", "test")
Progress = Callable[[float, str], None]

# share of the progress bar per phase; tokenizing dominates the wall time
_P_TOKENIZE, _P_FIT = 0.85, 0.95


class CorpusCancelled(Exception):
    """``should_stop`` returned True; nothing was produced."""


class CorpusEmpty(ValueError):
    """No file survived loading, cleaning and tokenization; ``skipped`` says why per file."""

    def __init__(self, skipped: dict[str, str]) -> None:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:5])
        super().__init__(f"no usable MIDI file in the dataset ({len(skipped)} skipped: {reasons})")
        self.skipped = skipped


@dataclass
class CorpusStats(Mapping[str, Any]):
    """Figures shown on the corpus page. Also a read-only mapping (``dict(stats)``,
    ``stats["skipped"]``) so a job handler can store it as JSON without knowing the fields."""

    files_total: int
    files_used: int
    files_per_split: dict[str, int]
    sequences_per_split: dict[str, int]  # files plus their augmented copies
    tokens_per_split: dict[str, int]  # ids in the arrays, BOS/EOS included
    vocab_size: int
    base_vocab_size: int
    mean_tokens_per_bar: float  # final ids per bar over the original (not augmented) files
    base_tokens_per_bar: float  # the same before subword merges
    compression: float  # base ids / final ids (1.0 without BPE)
    notes: int  # notes tokenized, original files
    skipped: dict[str, str] = field(default_factory=dict)  # file id → reason
    clean_reports: dict[str, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per phase
    workers: int = 1
    tokenizer: dict[str, Any] = field(default_factory=dict)  # Tokenizer.fit_stats()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)


@dataclass
class CorpusBuild:
    """A built corpus: the trained tokenizer, flat id arrays per split and what went where."""

    tokenizer: Tokenizer
    splits: dict[str, NDArray[np.int32]]
    file_splits: dict[str, list[str]]
    stats: CorpusStats

    def to_npz_bytes(self) -> bytes:
        """``.npz`` with 1-D int32 ``train_data``, ``val_data``, ``test_data`` (nanoGPT style)."""
        buf = io.BytesIO()
        arrays: dict[str, Any] = {f"{k}_data": v for k, v in self.splits.items()}
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save_npz(self, path: str | Path) -> Path:
        """Write :meth:`to_npz_bytes` to ``path`` (atomically: temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(self.to_npz_bytes())
        os.replace(tmp, path)
        return path

    def meta(self) -> dict[str, Any]:
        """What a trainer needs besides the arrays: vocab size, special ids, tokenizer hash."""
        return {
            "tokenizer": self.tokenizer.spec.model_dump(mode="json"),
            "tokenizer_hash": self.tokenizer.hash(),
            "vocab_size": self.tokenizer.vocab_size,
            "special_ids": self.tokenizer.special_ids,
            "tokens_per_split": self.stats.tokens_per_split,
        }


def load_npz(data: bytes | str | Path) -> dict[str, NDArray[np.int32]]:
    """Read a corpus ``.npz`` (bytes or path) into ``{"train": …, "val": …, "test": …}``."""
    src: Any = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(src) as z:
        return {k.removesuffix("_data"): np.asarray(z[k]) for k in z.files}


# ---------------------------------------------------------------------------------------------
# split


def _rank(seed: int, file_id: str) -> bytes:
    """A file's seeded position: splits and the order of files inside them follow it."""
    return hashlib.sha256(f"{seed}\0{file_id}".encode()).digest()


def assign_splits(
    file_ids: Sequence[str], split: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """File id → "train" | "val" | "test", seeded and independent of the input order.

    Files are ranked by sha256(seed, id); the first ``round(n·val)`` go to val, the next
    ``round(n·test)`` to test, the rest to train. With ≥ 2 files val gets at least one and train
    always keeps one. Adding files moves few existing ones (ranks are per file, not a shuffle).
    """
    if (
        len(split) != 3
        or any(s < 0 for s in split)
        or not math.isclose(sum(split), 1.0, abs_tol=1e-6)
    ):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {split}")
    if split[0] <= 0:
        raise ValueError("the train fraction must be positive")
    if len(set(file_ids)) != len(file_ids):
        raise ValueError("file ids must be unique")
    ranked = sorted(file_ids, key=lambda f: _rank(seed, f))
    n = len(ranked)
    n_val = round(n * split[1])
    n_test = round(n * split[2])
    if n >= 2 and split[1] > 0:
        n_val = max(n_val, 1)
    while n_val + n_test > n - 1 and n > 0:  # train keeps at least one file
        if n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    out = {f: "val" for f in ranked[:n_val]}
    out.update({f: "test" for f in ranked[n_val : n_val + n_test]})
    out.update({f: "train" for f in ranked[n_val + n_test :]})
    return out


# ---------------------------------------------------------------------------------------------
# per-file work (runs in worker processes)


@dataclass
class _FileResult:
    index: int
    file_id: str
    variants: list[Symbols]  # original first, then augmented copies (train only)
    notes: int
    report: list[str]
    skipped: str | None = None


@dataclass
class _Context:
    tok: Tokenizer
    clean: CleanOptions
    augment: AugmentSpec | None
    limits: MidiLimits


_CTX: _Context | None = None


def _init_worker(
    spec_json: str, clean: dict[str, Any], augment: str | None, limits: dict[str, Any]
) -> None:
    """Pool initializer: build the (untrained) tokenizer once per worker process."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # HF threads are the parent's job
    _set_context(spec_json, clean, augment, limits)


def _set_context(
    spec_json: str, clean: dict[str, Any], augment: str | None, limits: dict[str, Any]
) -> None:
    global _CTX
    _CTX = _Context(
        tok=build_tokenizer(TokenizerSpec.model_validate_json(spec_json)),
        clean=CleanOptions(**clean),
        augment=AugmentSpec.model_validate_json(augment) if augment else None,
        limits=MidiLimits(**limits),
    )


def _pitch_offsets(score: Any, offsets: list[int], restrict: bool) -> list[int]:
    """Offsets that keep every pitched note inside 0..127 (and the GM tessitura if asked)."""
    lo, hi = 127, 0
    ranges: list[range] = []
    for t in score.tracks:
        if t.is_drum or len(t.notes) == 0:
            continue
        p = t.notes.numpy()["pitch"]
        lo, hi = min(lo, int(p.min())), max(hi, int(p.max()))
        if restrict:
            import_miditok()
            from miditok.constants import MIDI_INSTRUMENTS

            ranges.append(MIDI_INSTRUMENTS[int(t.program)]["pitch_range"])
    if lo > hi:
        return []
    low_ok, high_ok = -lo, 127 - hi
    for r in ranges:
        low_ok, high_ok = max(low_ok, r.start - lo), min(high_ok, r.stop - 1 - hi)
    return [o for o in offsets if low_ok <= o <= high_ok]


def _augmented(score: Any, aug: AugmentSpec) -> list[tuple[tuple[int, int, float], Any]]:
    """MidiTok's augment_score over the requested offsets (each alone, or all combinations)."""
    import_miditok()
    from miditok.data_augmentation import augment_score

    pitches = _pitch_offsets(score, aug.all_pitch_offsets(), aug.restrict_to_tessitura)
    if aug.all_combinations:
        combos = [
            (p, v, d)
            for p in [0, *pitches]
            for v in [0, *aug.velocity_offsets]
            for d in [0.0, *aug.duration_offsets]
        ][1:]
    else:
        combos = [(p, 0, 0.0) for p in pitches]
        combos += [(0, v, 0.0) for v in aug.velocity_offsets]
        combos += [(0, 0, d) for d in aug.duration_offsets]
    return [
        ((p, v, d), augment_score(score, pitch_offset=p, velocity_offset=v, duration_offset=d))
        for p, v, d in combos
    ]


def _process(ctx: _Context, index: int, file_id: str, data: bytes, is_train: bool) -> _FileResult:
    """Load (with limits), clean, tokenize and augment one file; never raises for a bad file."""
    try:
        score = load_score(data, ctx.limits)
    except MidiRejected as e:
        return _FileResult(index, file_id, [], 0, [], f"{e.code}: {e.message}")
    cleaned, report = clean_score(score, ctx.clean)
    if cleaned is None:
        return _FileResult(index, file_id, [], 0, report, report[-1])
    try:
        sym = ctx.tok.symbols(cleaned)
    except Exception as e:  # noqa: BLE001 - a tokenizer bug on one file must not sink the corpus
        return _FileResult(
            index, file_id, [], 0, report, f"tokenizer failed: {type(e).__name__}: {e}"
        )
    if sym.symbols.size == 0:
        return _FileResult(index, file_id, [], 0, report, "no notes in the tokenizer's range")
    variants = [sym]
    if is_train and ctx.augment is not None and ctx.augment.enabled:
        for _, aug in _augmented(cleaned, ctx.augment):
            s = ctx.tok.symbols(aug)
            if s.symbols.size:
                variants.append(s)
        report = [*report, f"augmented: {len(variants) - 1} copies"]
    notes = sum(len(t.notes) for t in cleaned.tracks)
    return _FileResult(index, file_id, variants, notes, report)


def _work(task: tuple[int, str, bytes, bool]) -> _FileResult:
    assert _CTX is not None, "worker not initialised"
    return _process(_CTX, *task)


# ---------------------------------------------------------------------------------------------
# orchestration


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork where available: workers start in milliseconds with MidiTok already imported.

    The workers only parse and tokenize (no database, no HF thread pools), so the job runner's
    lease thread in the parent is harmless to them. ``CADENZA_CORPUS_START_METHOD`` (fork,
    forkserver, spawn) overrides it; spawn is the fallback where fork does not exist.
    """
    methods = multiprocessing.get_all_start_methods()
    wanted = os.environ.get("CADENZA_CORPUS_START_METHOD", "fork")
    return multiprocessing.get_context(wanted if wanted in methods else "spawn")


def default_workers() -> int:
    """Usable CPU cores (respects CPU affinity, e.g. a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _tokenize_all(
    tasks: list[tuple[int, str, bytes, bool]],
    init_args: tuple[str, dict[str, Any], str | None, dict[str, Any]],
    workers: int,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
) -> list[_FileResult]:
    total = len(tasks)
    results: list[_FileResult] = []

    def tick() -> None:
        if should_stop is not None and should_stop():
            raise CorpusCancelled
        if progress is not None:
            progress(
                _P_TOKENIZE * len(results) / max(total, 1),
                f"tokenized {len(results)}/{total} files",
            )

    if workers <= 1 or total <= 1:
        _set_context(*init_args)
        assert _CTX is not None
        for t in tasks:
            results.append(_process(_CTX, *t))
            tick()
        return results

    queue = list(reversed(tasks))  # popped from the end, in the original order
    while queue:
        suspects = _run_pool(queue, init_args, workers, results, tick)
        for task in suspects:  # one process per file, so a crash names its file
            with ProcessPoolExecutor(1, _pool_context(), _init_worker, init_args) as solo:
                try:
                    results.append(solo.submit(_work, task).result())
                except BrokenProcessPool:
                    results.append(
                        _FileResult(
                            task[0], task[1], [], 0, [], "the tokenizer process crashed on it"
                        )
                    )
            tick()
    return results


def _run_pool(
    queue: list[tuple[int, str, bytes, bool]],
    init_args: tuple[str, dict[str, Any], str | None, dict[str, Any]],
    workers: int,
    results: list[_FileResult],
    tick: Callable[[], None],
) -> list[tuple[int, str, bytes, bool]]:
    """Run tasks from ``queue`` on a pool until it is empty or a worker dies; return the tasks
    that were in flight when it died (the suspects), leaving the rest in ``queue``."""
    with ProcessPoolExecutor(workers, _pool_context(), _init_worker, init_args) as pool:
        pending: dict[Future[_FileResult], tuple[int, str, bytes, bool]] = {}
        try:
            while queue or pending:
                while queue and len(pending) < 4 * workers:  # bounded: bytes pickled lazily
                    task = queue.pop()
                    pending[pool.submit(_work, task)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        results.append(fut.result())
                    except BrokenProcessPool:
                        pending[fut] = task
                        broken = True
                        continue
                    tick()
                if broken:
                    return list(pending.values())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return []


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
    ids = [f for f, _ in files]
    assignment = assign_splits(ids, split, seed)
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
        _tokenize_all(tasks, init_args, workers, progress, should_stop), key=lambda r: r.index
    )
    t1 = time.perf_counter()

    skipped = {r.file_id: r.skipped for r in results if r.skipped is not None}
    used = [r for r in results if r.skipped is None]
    if not used:
        raise CorpusEmpty(skipped)
    by_split: dict[str, list[_FileResult]] = {s: [] for s in SPLITS}
    for r in sorted(used, key=lambda r: _rank(seed, r.file_id)):  # input order must not matter
        by_split[assignment[r.file_id]].append(r)
    # Keep the guarantees after skips: train non-empty, val non-empty when ≥ 2 files survive.
    if not by_split["train"]:
        donor = "test" if by_split["test"] else "val"
        by_split["train"].append(by_split[donor].pop())
    if not by_split["val"] and len(used) >= 2 and split[1] > 0:
        src = "test" if by_split["test"] else "train"
        moved = by_split[src].pop()
        moved.variants = moved.variants[:1]  # val is never augmented
        by_split["val"].append(moved)
    if progress is not None:
        progress(_P_TOKENIZE, "learning the vocabulary")
    if should_stop is not None and should_stop():
        raise CorpusCancelled
    tok.fit([v for r in by_split["train"] for v in r.variants])
    t2 = time.perf_counter()
    if progress is not None:
        progress(_P_FIT, "encoding")

    arrays: dict[str, NDArray[np.int32]] = {}
    base_tokens = final_tokens = bars = 0
    for s in SPLITS:
        items = [v for r in by_split[s] for v in r.variants]
        encoded = tok.ids_batch(items) if items else []
        parts: list[NDArray[np.int32]] = []
        bos = np.asarray([tok.bos_id], np.int32)
        eos = np.asarray([tok.eos_id], np.int32)
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
