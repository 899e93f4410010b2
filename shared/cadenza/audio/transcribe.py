"""Audio → MIDI with Spotify's basic-pitch model, run from its bundled ONNX file.

The model, the windowing and the note decoding are basic-pitch 0.4.0's (we call its
``note_creation`` functions and ``unwrap_output``, and reimplement one of them exactly, see
:func:`polyphonic_notes`), so for the same audio and thresholds we write the same notes as
``basic_pitch.inference.predict`` (tests and ``bench/audio.py`` compare them). What differs is
how the work is scheduled, because a transcription job usually holds many files and a worker
has few cores:

* the ONNX session is created once per process (again after a fork) and shared by threads;
* ``predict`` runs one 2-second window at a time through a session that spreads each window over
  all cores; on small CPUs that parallelises badly (measured on 2 cores: 43-52 ms of CPU per
  window on one thread, 84-93 ms on two, for no gain in wall time). We give the session one
  thread and run as many windows *concurrently* as there are cores, in chunks taken from any
  file, so every core does useful work even for a single file;
* decoding the next file and turning finished model output into notes overlap with inference
  instead of stalling it, and the note search is 6-14× faster than basic-pitch's.

Decoding reproduces ``librosa.load(sr=22050, mono=True)`` bit for bit on PCM input: float32
samples, channels averaged, soxr HQ resampling, librosa's length rule. It streams in blocks, so
a long stereo file never sits in memory at its native rate. Inputs are expected to have passed
:func:`cadenza.audio.probe.probe_audio`.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cadenza.audio import _ffmpeg
from cadenza.audio.probe import SNIFF_BYTES, AudioRejected, sniff_audio

# basic-pitch's fixed geometry (basic_pitch.constants); restated so that importing this module
# stays cheap — the heavy import happens on first use.
MODEL_SAMPLE_RATE: Final[int] = 22050
_FFT_HOP: Final[int] = 256
_WINDOW: Final[int] = MODEL_SAMPLE_RATE * 2 - _FFT_HOP  # 43,844 samples per model input
_OVERLAP_FRAMES: Final[int] = 30  # as in run_inference
_OVERLAP: Final[int] = _OVERLAP_FRAMES * _FFT_HOP
_HOP: Final[int] = _WINDOW - _OVERLAP
_INPUT: Final[str] = "serving_default_input_2:0"
_OUTPUTS: Final[dict[str, str]] = {
    "note": "StatefulPartitionedCall:1",
    "onset": "StatefulPartitionedCall:2",
    "contour": "StatefulPartitionedCall:0",
}
_MAX_CHUNK: Final[int] = 8  # windows per session.run; larger batches bought nothing on CPU
_DECODE_BLOCK: Final[int] = 1 << 20  # bytes read from ffmpeg at a time

#: ``progress(fraction, message)``; fraction runs 0..1. It is called from the calling thread
#: only, so it may touch a database session; raising from it aborts the transcription.
Progress = Callable[[float, str], None]


class TranscribeParams(BaseModel):
    """basic-pitch's note-decoding knobs, with its defaults and bounds that keep output sane."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    onset_threshold: float = Field(
        default=0.5,
        ge=0.05,
        le=0.95,
        description="Onset activation needed to start a note; lower = more notes.",
    )
    frame_threshold: float = Field(
        default=0.3, ge=0.05, le=0.95, description="Frame activation needed to sustain a note."
    )
    minimum_note_length_ms: float = Field(
        default=127.7,
        ge=10.0,
        le=2000.0,
        description="Shorter notes are dropped (basic-pitch: 127.7).",
    )
    minimum_frequency: float | None = Field(
        default=None, ge=27.5, le=4186.0, description="Hz; notes below are dropped (None: A0)."
    )
    maximum_frequency: float | None = Field(
        default=None, ge=27.5, le=4186.0, description="Hz; notes above are dropped (None: C8)."
    )
    midi_tempo: float = Field(
        default=120.0, ge=20.0, le=300.0, description="Tempo written into the MIDI file (bpm)."
    )

    @model_validator(mode="after")
    def _band_not_empty(self) -> TranscribeParams:
        """A band with min ≥ max keeps no notes at all: almost certainly swapped values."""
        lo, hi = self.minimum_frequency, self.maximum_frequency
        if lo is not None and hi is not None and lo >= hi:
            raise ValueError(
                f"minimum_frequency ({lo} Hz) must be below maximum_frequency ({hi} Hz)"
            )
        return self


def transcribe(
    paths: Sequence[Path],
    params: TranscribeParams | None = None,
    *,
    progress: Progress | None = None,
    threads: int | None = None,
) -> list[bytes]:
    """Transcribe each audio file to a Standard MIDI File; returns one ``bytes`` per input, in
    order. ``threads`` (default: the CPUs this process may use, or
    ``CADENZA_TRANSCRIBE_THREADS``) is how many windows run through the model at once."""
    params = params or TranscribeParams()
    if not paths:
        return []
    workers = threads or _default_threads()
    report = progress or (lambda fraction, message: None)
    n = len(paths)
    results: list[bytes] = []
    with (
        ThreadPoolExecutor(1, thread_name_prefix="cadenza-decode") as decoder,
        ThreadPoolExecutor(workers, thread_name_prefix="cadenza-infer") as inferer,
    ):
        decoded: Future[npt.NDArray[np.float32]] = decoder.submit(decode_for_model, paths[0])
        model = _model()  # loads (once per process) while the first file decodes
        pending: tuple[int, int, list[Future[dict[str, np.ndarray]]]] | None = None
        try:
            for i in range(n + 1):
                submitted = None
                if i < n:
                    audio = _result(decoded, i)
                    if i + 1 < n:  # decode one file ahead while this one is inferred
                        decoded = decoder.submit(decode_for_model, paths[i + 1])
                    chunks = _chunks(_window_count(len(audio)), workers)
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


def _finish(
    pending: tuple[int, int, list[Future[dict[str, np.ndarray]]]],
    params: TranscribeParams,
    n: int,
    report: Progress,
) -> bytes:
    """Wait for one file's windows, reporting progress, then decode them into MIDI bytes."""
    index, n_samples, futures = pending
    parts: list[dict[str, np.ndarray]] = []
    for k, future in enumerate(futures, start=1):
        parts.append(_result(future, index))
        report((index + 0.9 * k / len(futures)) / n, f"file {index + 1}/{n}: model output")
    output = {key: np.concatenate([p[key] for p in parts]) for key in _OUTPUTS}
    midi = _notes_to_midi(output, n_samples, params)
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


def _window_count(n_samples: int) -> int:
    """How many windows ``run_inference`` makes: one per hop over the front-padded signal."""
    return math.ceil((n_samples + _OVERLAP // 2) / _HOP)


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


# --- the model -------------------------------------------------------------------------------


class _Model:
    """One ONNX session with the bundled basic-pitch model; ``run`` may be called concurrently."""

    def __init__(self) -> None:
        with _quiet_imports():
            import onnxruntime as ort
            from basic_pitch import FilenameSuffix, build_icassp_2022_model_path

        options = ort.SessionOptions()
        # One thread per run; concurrency comes from running several windows at once.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        path = build_icassp_2022_model_path(FilenameSuffix.onnx)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.pid = os.getpid()

    def run(self, audio: npt.NDArray[np.float32], first: int, end: int) -> dict[str, np.ndarray]:
        """Model output for windows ``[first, end)`` of ``audio``, windowed like basic-pitch."""
        batch = _windows(audio, first, end)
        names = list(_OUTPUTS.values())
        outputs = self.session.run(names, {_INPUT: batch})
        return dict(zip(_OUTPUTS, outputs, strict=True))


_model_lock = threading.Lock()
_loaded: _Model | None = None


def _model() -> _Model:
    """The process's model, created on first use; a forked child (Celery prefork) makes its own,
    since ONNX Runtime's thread pools do not survive a fork."""
    global _loaded
    with _model_lock:
        if _loaded is None or _loaded.pid != os.getpid():
            _loaded = _Model()
        return _loaded


def _windows(audio: npt.NDArray[np.float32], first: int, end: int) -> npt.NDArray[np.float32]:
    """Windows ``[first, end)`` as a (n, 43844, 1) batch: the signal is preceded by half an
    overlap of zeros and cut every hop, the last window zero-padded (``window_audio_file``)."""
    batch = np.zeros((end - first, _WINDOW, 1), dtype=np.float32)
    pad = _OVERLAP // 2
    for row, w in enumerate(range(first, end)):
        lo = w * _HOP - pad  # window start in signal coordinates
        src_lo, src_hi = max(lo, 0), min(lo + _WINDOW, len(audio))
        if src_hi > src_lo:
            batch[row, src_lo - lo : src_hi - lo, 0] = audio[src_lo:src_hi]
    return batch


def _notes_to_midi(
    output: dict[str, np.ndarray], n_samples: int, params: TranscribeParams
) -> bytes:
    """basic-pitch's own post-processing, from stacked window outputs to MIDI bytes."""
    with _quiet_imports():
        from basic_pitch import note_creation
        from basic_pitch.inference import unwrap_output

    frames_per_s = MODEL_SAMPLE_RATE / _FFT_HOP
    unwrapped = {k: unwrap_output(v, n_samples, _OVERLAP_FRAMES) for k, v in output.items()}
    if unwrapped["note"].shape[0] == 0:  # shorter than one model frame: nothing to find
        return _midi_bytes(note_creation.note_events_to_midi([], midi_tempo=params.midi_tempo))
    # Exactly basic-pitch's model_output_to_notes (infer_onsets, melodia trick and pitch bends
    # on, one instrument), except that the note search is the faster equivalent below.
    # On silence basic-pitch divides 0 by 0 once (and copes with the NaNs); keep logs quiet.
    with np.errstate(divide="ignore", invalid="ignore"):
        notes = polyphonic_notes(
            unwrapped["note"],
            unwrapped["onset"],
            onset_thresh=params.onset_threshold,
            frame_thresh=params.frame_threshold,
            min_note_len=int(np.round(params.minimum_note_length_ms / 1000 * frames_per_s)),
            min_freq=params.minimum_frequency,
            max_freq=params.maximum_frequency,
        )
    with_bends = note_creation.get_pitch_bends(unwrapped["contour"], notes)
    times = note_creation.model_frames_to_time(unwrapped["contour"].shape[0])
    events = [(times[a], times[b], pitch, amp, bends) for a, b, pitch, amp, bends in with_bends]
    midi = note_creation.note_events_to_midi(events, False, params.midi_tempo)
    return _midi_bytes(midi)


_ENERGY_TOL: Final[int] = 11  # frames below threshold that end a note (basic-pitch's default)
_MIDI_OFFSET: Final[int] = 21  # model bin 0 is A0
_MAX_FREQ_IDX: Final[int] = 87


def polyphonic_notes(
    frames: np.ndarray,
    onsets: np.ndarray,
    *,
    onset_thresh: float,
    frame_thresh: float,
    min_note_len: int,
    min_freq: float | None,
    max_freq: float | None,
) -> list[tuple[int, int, int, float]]:
    """basic-pitch's ``output_to_notes_polyphonic`` (infer_onsets and melodia_trick on), giving
    the same notes in the same order, in a fraction of the time.

    The original's "melodia trick" repeats ``argmax`` over the whole remaining-energy matrix
    once per note it finds (O(frames × 88) each; 60 % of all post-processing on a 2-minute
    piano piece). Energies there only ever drop to zero, so the successive maxima are simply
    the above-threshold cells in descending order (ties by flat index, as ``argmax`` breaks
    them), skipping cells zeroed meanwhile: one sort instead of thousands of scans.
    """
    from basic_pitch import note_creation
    from scipy.signal import argrelmax

    n_frames = frames.shape[0]
    onsets, frames = note_creation.constrain_frequency(onsets, frames, max_freq, min_freq)
    onsets = note_creation.get_infered_onsets(onsets, frames)

    peak_thresh_mat = np.zeros(onsets.shape)
    peaks = argrelmax(onsets, axis=0)
    peak_thresh_mat[peaks] = onsets[peaks]
    onset_idx = np.where(peak_thresh_mat >= onset_thresh)
    energy = np.array(frames, dtype=np.float64)  # remaining energy; the original is float64 too

    notes: list[tuple[int, int, int, float]] = []
    for start, freq in zip(onset_idx[0][::-1].tolist(), onset_idx[1][::-1].tolist(), strict=True):
        if start >= n_frames - 1:
            continue
        i, k = start + 1, 0
        while i < n_frames - 1 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            i += 1
        i -= k
        if i - start <= min_note_len:
            continue
        _clear(energy, start, i, freq)
        notes.append((start, i, freq + _MIDI_OFFSET, np.mean(frames[start:i, freq])))

    flat = energy.ravel()
    candidates = np.flatnonzero(flat > frame_thresh)
    # Descending energy; lexsort is stable, so equal energies keep ascending flat order.
    order = candidates[np.lexsort((candidates, -flat[candidates]))]
    n_bins = energy.shape[1]
    for cell in order.tolist():
        if flat[cell] == 0:  # cleared by an earlier note: no longer the maximum
            continue
        mid, freq = divmod(cell, n_bins)
        energy[mid, freq] = 0
        lo, hi = max(freq - 1, 0), min(freq + 1, _MAX_FREQ_IDX)  # the bin and its neighbours
        i, k = mid + 1, 0  # forward
        while i < n_frames - 1 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            energy[i, lo] = energy[i, freq] = energy[i, hi] = 0  # scalar writes: fastest here
            i += 1
        end = i - 1 - k
        i, k = mid - 1, 0  # backward
        while i > 0 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            energy[i, lo] = energy[i, freq] = energy[i, hi] = 0
            i -= 1
        begin = i + 1 + k
        if end - begin <= min_note_len:
            continue
        notes.append((begin, end, freq + _MIDI_OFFSET, np.mean(frames[begin:end, freq])))
    return notes


def _clear(energy: np.ndarray, start: int, stop: int, freq: int) -> None:
    """Zero a note's frames in its own bin and both neighbours (basic-pitch's suppression)."""
    energy[start:stop, max(freq - 1, 0) : min(freq + 2, _MAX_FREQ_IDX + 1)] = 0


def _midi_bytes(midi: Any) -> bytes:
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()


@contextmanager
def _quiet_imports() -> Iterator[None]:
    """Import basic-pitch without its side effects: at import it logs warnings about optional
    runtimes through the *root* logger (which would also configure logging for the whole
    process) and resampy warns about ``pkg_resources``."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    added = not root.handlers
    if added:
        root.addHandler(guard)  # keeps logging.warning() from calling basicConfig()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        if added:
            root.removeHandler(guard)


# --- decoding --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PcmFormat:
    rate: int
    channels: int


def decode_for_model(path: Path, *, timeout_s: float = 600.0) -> npt.NDArray[np.float32]:
    """Mono float32 samples at 22,050 Hz, equal to ``librosa.load(path, sr=22050)``: channels
    averaged in float32, resampled with soxr HQ. WAV and FLAC are read in-process with
    libsndfile (as librosa does; no process start for the common case), everything else is
    decoded by ffmpeg. Both stream in blocks, so memory stays at the output size."""
    with path.open("rb") as f:
        kind = sniff_audio(f.read(SNIFF_BYTES))
    if kind is None:
        raise AudioRejected("not_audio", "this file is not audio we recognise")
    if kind in ("wav", "flac"):
        import soundfile as sf

        try:
            source = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError):
            pass  # a codec libsndfile lacks (e.g. ADPCM WAV): ffmpeg below
        else:
            with source:
                blocks = source.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)
                return _to_model_rate(source.samplerate, blocks)
    return _decode_with_ffmpeg(path, kind, timeout_s)


def _decode_with_ffmpeg(path: Path, kind: str, timeout_s: float) -> npt.NDArray[np.float32]:
    """ffmpeg decodes to float32 WAV on a pipe; we read its header for the rate and channels."""
    args = [_ffmpeg.tool("ffmpeg"), "-nostdin", "-v", "error"]
    args += _ffmpeg.input_args(str(path), kind)
    args += ["-map", "0:a:0", "-vn", "-sn", "-dn", "-map_metadata", "-1", "-bitexact"]
    args += ["-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
    # stderr goes to a file, not a pipe: a damaged file can make ffmpeg log more than a pipe
    # holds, and it would then block while we wait for samples.
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors
        )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        try:
            assert proc.stdout is not None
            fmt = _read_wav_header(proc.stdout)
            audio = None
            if fmt is not None:
                audio = _to_model_rate(fmt.rate, _pipe_blocks(proc.stdout, fmt.channels))
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        errors.seek(0)
        stderr = errors.read()
    if killed.is_set():
        raise AudioRejected("timeout", f"decoding took longer than {timeout_s:.0f} s")
    if code != 0 or audio is None:
        done = subprocess.CompletedProcess(args, code, b"", stderr)
        raise AudioRejected(
            "corrupt",
            f"the audio could not be decoded ({_ffmpeg.reason(done, path)}); re-export it",
        )
    return audio


def _pipe_blocks(stream: IO[bytes], channels: int) -> Iterator[npt.NDArray[np.float32]]:
    """Interleaved float32 frames from a pipe, as (frames, channels) blocks."""
    frame_bytes = 4 * channels
    carry = b""
    while data := stream.read(_DECODE_BLOCK):
        data = carry + data
        usable = len(data) - len(data) % frame_bytes
        data, carry = data[:usable], data[usable:]
        yield np.frombuffer(data, dtype="<f4").reshape(-1, channels)


def _to_model_rate(rate: int, blocks: Iterable[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """Average channels (in float32, as librosa.to_mono does) and resample to 22,050 Hz with
    soxr HQ block by block; soxr's stream mode yields the same samples as one call over the
    whole signal (checked against librosa.load)."""
    import soxr

    resampler = None
    if rate != MODEL_SAMPLE_RATE:
        resampler = soxr.ResampleStream(rate, MODEL_SAMPLE_RATE, 1, "float32", "soxr_hq")
    parts: list[npt.NDArray[np.float32]] = [np.zeros(0, dtype=np.float32)]
    n_in = 0
    for block in blocks:
        n_in += len(block)
        mono = block[:, 0].copy() if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
        parts.append(resampler.resample_chunk(mono) if resampler is not None else mono)
    if resampler is None:
        return np.concatenate(parts)
    parts.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    audio = np.concatenate(parts).astype(np.float32, copy=False)
    # librosa.resample(fix=True) then sets the length to ceil(n × ratio), zero-padding.
    size = int(np.ceil(n_in * (float(MODEL_SAMPLE_RATE) / rate)))
    if len(audio) >= size:
        return audio[:size]
    return np.concatenate([audio, np.zeros(size - len(audio), dtype=np.float32)])


def _read_wav_header(stream: IO[bytes]) -> _PcmFormat | None:
    """Rate and channels from the WAV header ffmpeg writes to a pipe; None if there is none
    (ffmpeg failed before writing anything). Leaves the stream at the first sample."""
    riff = stream.read(12)
    if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
        return None
    fmt: _PcmFormat | None = None
    while True:
        header = stream.read(8)
        if len(header) < 8:
            return None
        chunk_id, size = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk_id == b"data":
            return fmt
        body = stream.read(size + (size & 1))
        if chunk_id == b"fmt ":
            _tag, channels, rate = struct.unpack("<HHI", body[:8])
            fmt = _PcmFormat(rate=rate, channels=channels)
