"""Transcribing many files at once: decoding, inference and note decoding overlapped on a few
cores.

A transcription job usually holds many files and a worker has few cores. basic-pitch's
``predict`` runs one 2-second window at a time through a session that spreads each window over
all cores; on small CPUs that parallelises badly (measured on 2 cores: 24 ms of CPU per window
on one thread, 35 ms on two for 18 ms of wall time). We give the session one thread and run as
many windows *concurrently* as there are cores, in chunks taken from any file, so every core
does useful work even for a single file. Decoding the next file and turning finished model
output into notes overlap with inference instead of stalling it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cadenza.audio.probe import AudioRejected
from cadenza.audio.transcribe.audio import decode_for_model, window_count
from cadenza.audio.transcribe.notes import notes_to_midi
from cadenza.audio.transcribe.params import TranscribeParams
from cadenza.audio.transcribe.session import OUTPUTS, shared_model

_MAX_CHUNK: Final[int] = 8  # windows per session.run; larger batches bought nothing on CPU

#: ``progress(fraction, message)``; fraction runs 0..1. It is called from the calling thread
#: only, so it may touch a database session; raising from it aborts the transcription.
Progress = Callable[[float, str], None]

#: One file in flight: its index, its length in samples and its windows' model outputs.
_Pending = tuple[int, int, list[Future[dict[str, np.ndarray]]]]


def transcribe(
    paths: Sequence[Path],
    params: TranscribeParams | None = None,
    *,
    progress: Progress | None = None,
    threads: int | None = None,
) -> list[bytes]:
    """Transcribe each audio file to a Standard MIDI File; returns one ``bytes`` per input, in
    order. ``threads`` (default: the CPUs this process may use, or
    ``CADENZA_TRANSCRIBE_THREADS``) is how many windows run through the model at once.
    ``params.engine`` picks the model; transkun's files go to
    :func:`cadenza.audio.transcribe.piano.transcribe_piano`."""
    params = params or TranscribeParams()
    if not paths:
        return []
    if params.engine == "transkun":
        from cadenza.audio.transcribe.piano import transcribe_piano

        return transcribe_piano(paths, params, progress=progress, threads=threads)
    workers = threads or _default_threads()
    report = progress or (lambda fraction, message: None)
    n = len(paths)
    results: list[bytes] = []
    with (
        ThreadPoolExecutor(1, thread_name_prefix="cadenza-decode") as decoder,
        ThreadPoolExecutor(workers, thread_name_prefix="cadenza-infer") as inferer,
    ):
        decoded: Future[npt.NDArray[np.float32]] = decoder.submit(decode_for_model, paths[0])
        model = shared_model()  # loads (once per process) while the first file decodes
        pending: _Pending | None = None
        try:
            for i in range(n + 1):
                submitted = None
                if i < n:
                    audio = _result(decoded, i)
                    if i + 1 < n:  # decode one file ahead while this one is inferred
                        decoded = decoder.submit(decode_for_model, paths[i + 1])
                    chunks = _chunks(window_count(len(audio)), workers)
                    futures = [inferer.submit(model.run, audio, a, b) for a, b in chunks]
                    submitted = (i, len(audio), futures)
                # Notes for the previous file are decoded here, while the model is busy with
                # the windows just queued.
                if pending is not None:
                    results.append(_finish(pending, params, n, report))
                pending = submitted
        except BaseException:
            # Drop queued windows and decodes; the pools' exit waits only for running ones.
            inferer.shutdown(wait=False, cancel_futures=True)
            decoder.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _finish(pending: _Pending, params: TranscribeParams, n: int, report: Progress) -> bytes:
    """Wait for one file's windows, reporting progress, then decode them into MIDI bytes."""
    index, n_samples, futures = pending
    parts: list[dict[str, np.ndarray]] = []
    for k, future in enumerate(futures, start=1):
        parts.append(_result(future, index))
        report((index + 0.9 * k / len(futures)) / n, f"file {index + 1}/{n}: model output")
    output = {key: np.concatenate([p[key] for p in parts]) for key in OUTPUTS}
    midi = notes_to_midi(output, n_samples, params)
    report((index + 1) / n, f"file {index + 1}/{n}: transcribed")
    return midi


def _result(future: Future[Any], index: int) -> Any:
    """A future's value; a decoding failure names which input failed."""
    try:
        return future.result()
    except AudioRejected as exc:
        raise AudioRejected(exc.code, f"input {index + 1}: {exc}") from exc


def _chunks(n_windows: int, workers: int) -> list[tuple[int, int]]:
    """Split windows so every worker gets some work even for one short file."""
    size = max(1, min(_MAX_CHUNK, math.ceil(n_windows / workers)))
    return [(a, min(a + size, n_windows)) for a in range(0, n_windows, size)]


def _default_threads() -> int:
    """CPUs this process may really use: its affinity, capped by a cgroup CPU quota (a
    Kubernetes limit of 2 CPUs on a 64-core node must not start 64 model runs)."""
    env = os.environ.get("CADENZA_TRANSCRIBE_THREADS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0))
    quota = _cgroup_cpu_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 CFS quota); None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        v1_quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        v1_period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return v1_quota / v1_period if v1_quota > 0 and v1_period > 0 else None
