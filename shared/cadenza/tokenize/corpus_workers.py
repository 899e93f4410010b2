"""Per-file corpus work (load, clean, tokenize, augment) and the process pool that runs it.

Files are tokenized in worker processes; a worker that dies (a crash in native code) costs only
the file it was on: the files in flight are retried one process each, so the crash names its
file, and the rest go on.

Memory stays bounded whatever the dataset's size: a file's bytes are read (``read(index)``)
only when it is handed to a process, at most ``4 × workers`` are in flight, and each result
goes to ``sink`` (the build spools it to disk) as soon as it arrives.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from cadenza.midi.clean import CleanOptions, clean_score
from cadenza.midi.load import MidiLimits, MidiRejected, load_score
from cadenza.tokenize.base import Symbols, Tokenizer
from cadenza.tokenize.corpus_data import CorpusCancelled
from cadenza.tokenize.miditok_options import import_miditok
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec

Progress = Callable[[float, str], None]
#: One file to tokenize: (input index, file id, is it in the train split).
Task = tuple[int, str, bool]
#: The MIDI bytes of the file at an input index, read when a process is ready for it.
Read = Callable[[int], bytes]
#: Where each file's result goes as soon as it is ready.
Sink = Callable[["FileResult"], None]
#: What each worker process needs to rebuild the context: spec JSON, clean options, augment
#: JSON, limits (plain values, so they pickle for spawn and forkserver too).
InitArgs = tuple[str, dict[str, Any], str | None, dict[str, Any]]

#: Share of the progress bar that tokenizing takes; it dominates the wall time.
P_TOKENIZE = 0.85


@dataclass
class FileResult:
    """One file's outcome: its symbol sequences and cleaning report, or why it was skipped."""

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


def _process(ctx: _Context, index: int, file_id: str, data: bytes, is_train: bool) -> FileResult:
    """Load (with limits), clean, tokenize and augment one file; never raises for a bad file."""
    if ctx.tok.input_kind == "audio":
        return _process_audio(ctx, index, file_id, data)
    try:
        score = load_score(data, ctx.limits)
    except MidiRejected as e:
        return FileResult(index, file_id, [], 0, [], f"{e.code}: {e.message}")
    cleaned, report = clean_score(score, ctx.clean)
    if cleaned is None:
        return FileResult(index, file_id, [], 0, report, report[-1])
    try:
        sym = ctx.tok.symbols(cleaned)
    except Exception as e:  # noqa: BLE001 - a tokenizer bug on one file must not sink the corpus
        return FileResult(
            index, file_id, [], 0, report, f"tokenizer failed: {type(e).__name__}: {e}"
        )
    if sym.symbols.size == 0:
        return FileResult(index, file_id, [], 0, report, "no notes in the tokenizer's range")
    variants = [sym]
    if is_train and ctx.augment is not None and ctx.augment.enabled:
        for _, aug in _augmented(cleaned, ctx.augment):
            s = ctx.tok.symbols(aug)
            if s.symbols.size:
                variants.append(s)
        report = [*report, f"augmented: {len(variants) - 1} copies"]
    notes = sum(len(t.notes) for t in cleaned.tracks)
    return FileResult(index, file_id, variants, notes, report)


def _process_audio(ctx: _Context, index: int, file_id: str, data: bytes) -> FileResult:
    """Decode one recording (audio-vq); MIDI cleaning and augmentation do not apply."""
    try:
        sym = ctx.tok.audio_symbols(data)
    except ValueError as e:  # not audio (AudioRejected), too long, or ffmpeg refused it
        return FileResult(index, file_id, [], 0, [], f"audio: {e}")
    if sym.symbols.size == 0:
        return FileResult(index, file_id, [], 0, [], "audio: shorter than one coarse code")
    return FileResult(index, file_id, [sym], 0, [f"audio: {sym.symbols.size} samples"])


def _work(index: int, file_id: str, data: bytes, is_train: bool) -> FileResult:
    assert _CTX is not None, "worker not initialised"
    return _process(_CTX, index, file_id, data, is_train)


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


def tokenize_files(
    tasks: list[Task],
    read: Read,
    init_args: InitArgs,
    workers: int,
    sink: Sink,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Tokenize every task, handing each result to ``sink`` in completion order."""
    total = len(tasks)
    done = 0

    def emit(result: FileResult) -> None:
        nonlocal done
        sink(result)
        done += 1
        if should_stop is not None and should_stop():
            raise CorpusCancelled
        if progress is not None:
            progress(P_TOKENIZE * done / max(total, 1), f"tokenized {done}/{total} files")

    if workers <= 1 or total <= 1:
        _set_context(*init_args)
        assert _CTX is not None
        for i, f, is_train in tasks:
            emit(_process(_CTX, i, f, read(i), is_train))
        return

    queue = list(reversed(tasks))  # popped from the end, in the original order
    while queue:
        suspects = _run_pool(queue, read, init_args, workers, emit)
        for task in suspects:  # one process per file, so a crash names its file
            i, f, is_train = task
            with ProcessPoolExecutor(1, _pool_context(), _init_worker, init_args) as solo:
                try:
                    result = solo.submit(_work, i, f, read(i), is_train).result()
                except BrokenProcessPool:
                    result = FileResult(i, f, [], 0, [], "the tokenizer process crashed on it")
            emit(result)


def _run_pool(
    queue: list[Task],
    read: Read,
    init_args: InitArgs,
    workers: int,
    emit: Callable[[FileResult], None],
) -> list[Task]:
    """Run tasks from ``queue`` on a pool until it is empty or a worker dies; return the tasks
    that were in flight when it died (the suspects), leaving the rest in ``queue``."""
    with ProcessPoolExecutor(workers, _pool_context(), _init_worker, init_args) as pool:
        pending: dict[Future[FileResult], Task] = {}
        try:
            while queue or pending:
                while queue and len(pending) < 4 * workers:  # bounded: bytes read lazily
                    task = queue.pop()
                    i, f, is_train = task
                    pending[pool.submit(_work, i, f, read(i), is_train)] = task
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for fut in done:
                    task = pending.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        pending[fut] = task
                        broken = True
                        continue
                    emit(result)
                if broken:
                    return list(pending.values())
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return []


__all__ = [
    "FileResult",
    "InitArgs",
    "P_TOKENIZE",
    "Progress",
    "Read",
    "Sink",
    "Task",
    "default_workers",
    "tokenize_files",
]
