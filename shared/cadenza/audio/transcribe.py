"""Audio → MIDI with Spotify's basic-pitch model, run from its bundled ONNX file.

The model, the windowing and the note decoding are basic-pitch 0.4.0's (we call its
``note_creation`` functions and ``unwrap_output``, and reimplement one of them exactly, see
:func:`polyphonic_notes`), so for the same audio and thresholds we write the same notes as
``basic_pitch.inference.predict`` (tests and ``bench/audio.py`` compare them). What differs is
how much work is done and how it is scheduled, because a transcription job usually holds many
files and a worker has few cores:

* the model graph is rewritten (:func:`faster_graph`) so that ONNX Runtime stops computing
  padding channels it throws away and broadcasting constants one element at a time: the same
  outputs bit for bit (checked at load; where not, the bundled graph is used) for 40 % of the
  CPU time (measured on an AVX-512 EPYC: 24 → 9.5 ms per window on one thread);
* the ONNX session is created once per process (again after a fork) and shared by threads;
* ``predict`` runs one 2-second window at a time through a session that spreads each window over
  all cores; on small CPUs that parallelises badly (measured on 2 cores: 24 ms of CPU per window
  on one thread, 35 ms on two for 18 ms of wall time). We give the session one thread and run
  as many windows *concurrently* as there are cores, in chunks taken from any file, so every
  core does useful work even for a single file;
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
    """One ONNX session with basic-pitch's model; ``run`` may be called concurrently.

    The session runs :func:`faster_graph`'s rewrite of the bundled model if, on this machine,
    it gives bit for bit the bundled model's outputs on a probe batch (checked here, once per
    process, ~0.2 s), else the bundled model itself; ``rewritten`` says which."""

    def __init__(self, *, rewrite: bool = True) -> None:
        with _quiet_imports():
            from basic_pitch import FilenameSuffix, build_icassp_2022_model_path

        bundled = build_icassp_2022_model_path(FilenameSuffix.onnx).read_bytes()
        self.session = _session(bundled)
        self.rewritten = False
        faster = faster_graph(bundled) if rewrite else None
        if faster is not None:
            candidate = _session(faster)
            probe = _probe_windows()
            same = all(
                np.array_equal(a, b)
                for a, b in zip(
                    _outputs(self.session, probe), _outputs(candidate, probe), strict=True
                )
            )
            if same:
                self.session, self.rewritten = candidate, True
            else:  # another CPU kernel that sums in another order: stay exact, and slower
                _log.warning("transcription: the faster model graph differs here; not used")
        self.pid = os.getpid()

    def run(self, audio: npt.NDArray[np.float32], first: int, end: int) -> dict[str, np.ndarray]:
        """Model output for windows ``[first, end)`` of ``audio``, windowed like basic-pitch."""
        outputs = _outputs(self.session, _windows(audio, first, end))
        return dict(zip(_OUTPUTS, outputs, strict=True))


_log = logging.getLogger(__name__)
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


def _session(model: bytes) -> Any:
    """A CPU session running one window on one thread: concurrency comes from running several
    windows at once (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, batch: npt.NDArray[np.float32]) -> list[np.ndarray]:
    """The model's note, onset and contour outputs for a (n, 43844, 1) batch."""
    return list(session.run(list(_OUTPUTS.values()), {_INPUT: batch}))


def _probe_windows() -> npt.NDArray[np.float32]:
    """Three windows to compare two graphs on: a harmonic tone in noise, a sparse chirp at
    another level, and silence."""
    rng = np.random.default_rng(20220401)
    t = np.arange(_WINDOW) / MODEL_SAMPLE_RATE
    tone = sum(0.3 / k * np.sin(2 * np.pi * 196.0 * k * t) for k in range(1, 9))
    chirp = 0.05 * np.sin(2 * np.pi * (60.0 + 900.0 * t) * t) * (rng.random(_WINDOW) < 0.3)
    batch = np.stack([tone + 0.02 * rng.standard_normal(_WINDOW), chirp, np.zeros(_WINDOW)])
    return batch.astype(np.float32)[:, :, None]


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


# --- the same model, faster: a graph rewrite -------------------------------------------------
#
# ONNX Runtime's CPU convolutions compute output channels in blocks (16 with AVX-512, 8 with
# AVX2). Several of basic-pitch's convolutions have 1 or 8 output channels, so most of every
# block is computed and thrown away: on one core these few convolutions took 17 of the model's
# 24 ms per window (AVX-512). A convolution with C outputs at positions f = P·j + p equals one
# with C·P outputs (channel c·P + p) at positions j: its stride is P times the original's and
# its kernel is the original's shifted by p strides, the rest zeros. Interleaving the phases
# again is a reshape and a transpose. Each output is then the same products summed in the same
# order, with products by zero in between, which add exactly 0: ORT's direct convolution gives
# bit-identical results (``_Model`` checks this once per process, and the tests on real music).
# The same split along time (Q phases) serves the 1-channel convolutions. Separately, ORT
# broadcasts a constant of another rank, or one that broadcasts along the innermost axis, one
# element at a time (0.5 ms per such Mul on a 53,000-value tensor instead of 5 µs); three
# constants get the same values in a shape it broadcasts in blocks. Measured (ORT 1.31, AMD
# EPYC with AVX-512, one thread): 24 → 9.5 ms per window, outputs identical; batches of 1 to 8
# windows cost the same per window, 16 a little more.
#
# The rewrite is written for one file, basic-pitch 0.4.0's nmp.onnx (checked by its SHA-256);
# any other model runs as it is. ONNX files are protocol buffers; the few fields touched here
# are read and written directly, so this needs no ``onnx`` package.

_MODEL_SHA256: Final[str] = "2c3c1d144bfa61ad236e92e169c13535c880469a12a047d4e73451f2c059a0ec"


@dataclass(frozen=True)
class _Split:
    """How to split one convolution: its weights' shape (a check), Q time and P frequency
    phases, and its input's height (frames) and width (bins or samples)."""

    weights: tuple[int, int, int, int]
    time_phases: int
    freq_phases: int
    height: int
    width: int


_DOWNSAMPLE_INPUTS: Final[dict[int, int]] = {2: 44098, 5: 22176, 8: 11215, 11: 5734, 14: 2994}
#: Conv nodes, by their name up to the first ';', and how to split them.
_SPLITS: Final[dict[str, _Split]] = {
    "model_1/re_lu_1/Relu": _Split((8, 8, 3, 39), 1, 8, 172, 264),  # contour features, 3×39
    "model_1/contours-reduced/BiasAdd": _Split((1, 8, 5, 5), 2, 8, 172, 264),  # contour output
    "model_1/conv2d_3/BiasAdd": _Split((1, 32, 7, 3), 4, 4, 172, 88),  # note output
    # the CQT's anti-aliasing filter before each halving of the sample rate (larger octaves
    # are left: they cost little)
    **{
        f"model_1/cq_t2010v2_1/conv1d_{k}": _Split((1, 1, 1, 256), 1, 16, 1, width)
        for k, width in _DOWNSAMPLE_INPUTS.items()
    },
}
#: Mul/Add nodes (op, name up to ';') whose constant operand gets the same values in a shape
#: that ORT broadcasts quickly: old shape, new shape.
_RESHAPED_CONSTANTS: Final[dict[tuple[str, str], tuple[tuple[int, ...], tuple[int, ...]]]] = {
    # (n, 309, 172, 2) × (309, 1, 1): CQT bin lengths; ORT transposes it to broadcast inside
    # the innermost (real, imaginary) axis
    ("Mul", "model_1/cq_t2010v2_1/mul_1"): ((309, 1, 1), (309, 1, 2)),
    # (n, 172, 309, 1) × (1,) and + (1,): the batch normalisation after the log spectrum
    ("Mul", "model_1/batch_normalization/FusedBatchNormV3"): ((1,), (1, 1, 1, 1)),
    ("Add", "model_1/batch_normalization/FusedBatchNormV3"): ((1,), (1, 1, 1, 1)),
}


class _NotTheExpectedGraph(Exception):
    """The model does not look the way the rewrite expects; it is then left as it is."""


def faster_graph(model: bytes) -> bytes | None:
    """basic-pitch's ONNX model rewritten to run faster with identical outputs (see above), or
    None when ``model`` is not the file the rewrite was written for."""
    import hashlib

    if hashlib.sha256(model).hexdigest() != _MODEL_SHA256:
        return None
    try:
        return _rewrite(model)
    except (_NotTheExpectedGraph, ValueError, IndexError, KeyError) as exc:
        _log.warning("transcription: model graph not rewritten (%s)", exc)
        return None


def _rewrite(model: bytes) -> bytes:
    top = _pb_read(model)
    (at,) = [i for i, (number, _, _) in enumerate(top) if number == _MODEL_GRAPH]
    graph = _pb_read(_as_bytes(top[at][2]))
    constants = {}
    for number, _, value in graph:
        if number == _GRAPH_INITIALIZER:
            tensor = _pb_read(_as_bytes(value))
            constants[_pb_str(tensor, _TENSOR_NAME)] = tensor
    fields: list[_PbField] = []
    added: list[bytes] = []
    done: list[str] = []
    for number, kind, value in graph:
        if number != _GRAPH_NODE:
            if number != _GRAPH_INITIALIZER:
                fields.append((number, kind, value))
            continue
        node = _pb_read(_as_bytes(value))
        op, key = _pb_str(node, _NODE_OP), _pb_str(node, _NODE_NAME).split(";")[0]
        if op == "Conv" and key in _SPLITS:
            nodes, tensors = _split_conv(node, _SPLITS[key], constants, f"cadenza_split{len(done)}")
            fields += [(_GRAPH_NODE, _LEN, n) for n in nodes]
            added += tensors
            done.append(key)
        elif (op, key) in _RESHAPED_CONSTANTS:
            old, new = _RESHAPED_CONSTANTS[op, key]
            rewired, constant = _reshape_constant(
                node, old, new, constants, f"cadenza_const{len(done)}"
            )
            fields.append((_GRAPH_NODE, _LEN, _pb_write(rewired)))
            added.append(constant)
            done.append(f"{op} {key}")
        else:
            fields.append((number, kind, value))
    expected = len(_SPLITS) + len(_RESHAPED_CONSTANTS)
    if len(done) != expected or len(set(done)) != expected:
        raise _NotTheExpectedGraph(f"found {len(done)} of the {expected} nodes to rewrite")
    # Keep the constants still in use (ORT would warn about the others), then the new ones.
    used = {
        name
        for number, _, value in fields
        if number == _GRAPH_NODE
        for name in _pb_strs(_pb_read(_as_bytes(value)), _NODE_INPUT)
    }
    for name, tensor in constants.items():
        if name in used:
            fields.append((_GRAPH_INITIALIZER, _LEN, _pb_write(tensor)))
    fields += [(_GRAPH_INITIALIZER, _LEN, t) for t in added]
    top[at] = (_MODEL_GRAPH, _LEN, _pb_write(fields))
    return _pb_write(top)


def _split_conv(
    node: list[_PbField], split: _Split, constants: dict[str, list[_PbField]], tag: str
) -> tuple[list[bytes], list[bytes]]:
    """One Conv node as Conv (the phases as channels) → Reshape → Transpose → Reshape (→ Slice
    when the output size is not a multiple of the phases): nodes and new constants."""
    inputs, outputs = _pb_strs(node, _NODE_INPUT), _pb_strs(node, _NODE_OUTPUT)
    ints = _int_attributes(node)
    if len(inputs) not in (2, 3) or len(outputs) != 1:
        raise _NotTheExpectedGraph(f"{tag}: unexpected Conv inputs/outputs")
    weights = _array(constants[inputs[1]])
    if weights.shape != split.weights or weights.dtype != np.float32:
        raise _NotTheExpectedGraph(f"{tag}: weights {weights.shape}, not {split.weights}")
    n_out, n_in, kh, kw = weights.shape
    bias = _array(constants[inputs[2]]) if len(inputs) == 3 else np.zeros(n_out, np.float32)
    if set(ints) - {"kernel_shape", "strides", "pads", "dilations", "group"}:
        raise _NotTheExpectedGraph(f"{tag}: unexpected Conv attributes {sorted(ints)}")
    if ints.get("dilations", [1, 1]) != [1, 1] or ints.get("group", [1]) != [1]:
        raise _NotTheExpectedGraph(f"{tag}: dilated or grouped Conv")
    st, sf = ints.get("strides", [1, 1])
    top_pad, left_pad, bottom_pad, right_pad = ints.get("pads", [0, 0, 0, 0])
    q, p = split.time_phases, split.freq_phases
    out_h = (split.height + top_pad + bottom_pad - kh) // st + 1
    out_w = (split.width + left_pad + right_pad - kw) // sf + 1
    rows, cols = -(-out_h // q), -(-out_w // p)  # outputs per phase
    kh2, kw2 = kh + st * (q - 1), kw + sf * (p - 1)
    phased = np.zeros((n_out, q, p, n_in, kh2, kw2), np.float32)
    for i in range(q):
        for j in range(p):
            phased[:, i, j, :, st * i : st * i + kh, sf * j : sf * j + kw] = weights
    # Zeros past the original padding only meet zero weights or outputs sliced off below.
    bottom = max(0, st * q * (rows - 1) + kh2 - split.height - top_pad)
    right = max(0, sf * p * (cols - 1) + kw2 - split.width - left_pad)
    name = outputs[0]
    full = name if (rows * q, cols * p) == (out_h, out_w) else f"{tag}_full"
    tensors = [
        _tensor(f"{tag}_w", phased.reshape(n_out * q * p, n_in, kh2, kw2)),
        _tensor(f"{tag}_b", np.repeat(bias.astype(np.float32), q * p)),
        _tensor(f"{tag}_shape", np.array([-1, n_out, rows * q, cols * p], np.int64)),
    ]
    nodes = [
        _node(
            "Conv",
            [inputs[0], f"{tag}_w", f"{tag}_b"],
            [f"{tag}_conv"],
            f"{tag}/conv",
            kernel_shape=[kh2, kw2],
            strides=[st * q, sf * p],
            pads=[top_pad, left_pad, bottom, right],
            dilations=[1, 1],
        )
    ]
    if q == 1:  # (n·C, P, rows·cols) → (n·C, rows·cols, P): ORT moves one axis quickly
        tensors.append(_tensor(f"{tag}_phases", np.array([-1, p, rows * cols], np.int64)))
        perm = [0, 2, 1]
    else:  # (n·C, Q, P, rows, cols) → (n·C, rows, Q, cols, P)
        tensors.append(_tensor(f"{tag}_phases", np.array([-1, q, p, rows, cols], np.int64)))
        perm = [0, 3, 1, 4, 2]
    nodes += [
        _node("Reshape", [f"{tag}_conv", f"{tag}_phases"], [f"{tag}_r"], f"{tag}/phases"),
        _node("Transpose", [f"{tag}_r"], [f"{tag}_t"], f"{tag}/interleave", perm=perm),
        _node("Reshape", [f"{tag}_t", f"{tag}_shape"], [full], f"{tag}/shape"),
    ]
    if full != name:
        tensors += [
            _tensor(f"{tag}_starts", np.array([0, 0], np.int64)),
            _tensor(f"{tag}_ends", np.array([out_h, out_w], np.int64)),
            _tensor(f"{tag}_axes", np.array([2, 3], np.int64)),
        ]
        slice_in = [full, f"{tag}_starts", f"{tag}_ends", f"{tag}_axes"]
        nodes.append(_node("Slice", slice_in, [name], f"{tag}/trim"))
    return nodes, tensors


def _reshape_constant(
    node: list[_PbField],
    old: tuple[int, ...],
    new: tuple[int, ...],
    constants: dict[str, list[_PbField]],
    tag: str,
) -> tuple[list[_PbField], bytes]:
    """The node reading a copy of its constant operand broadcast to ``new``."""
    inputs = _pb_strs(node, _NODE_INPUT)
    (k,) = [i for i, name in enumerate(inputs) if name in constants]
    value = _array(constants[inputs[k]])
    if value.shape != old:
        raise _NotTheExpectedGraph(f"{tag}: constant {value.shape}, not {old}")
    out: list[_PbField] = []
    seen = 0
    for number, kind, field in node:
        if number == _NODE_INPUT:
            field = tag.encode() if seen == k else field
            seen += 1
        out.append((number, kind, field))
    return out, _tensor(tag, np.ascontiguousarray(np.broadcast_to(value, new)))


# Protocol-buffer wire format, and the numbers of the ONNX fields used (onnx/onnx.proto).
_PbField = tuple[int, int, int | bytes]
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_MODEL_GRAPH = 7
_GRAPH_NODE, _GRAPH_INITIALIZER = 1, 5
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP, _NODE_ATTRIBUTE = 1, 2, 3, 4, 5
_ATTR_NAME, _ATTR_INT, _ATTR_INTS, _ATTR_TYPE = 1, 3, 8, 20
_ATTR_TYPE_INT, _ATTR_TYPE_INTS = 2, 7
_TENSOR_DIMS, _TENSOR_TYPE, _TENSOR_NAME, _TENSOR_RAW = 1, 2, 8, 9
_TENSOR_DTYPES: Final[dict[int, str]] = {1: "<f4", 7: "<i8"}  # FLOAT, INT64


def _pb_read(data: bytes) -> list[_PbField]:
    """One message's fields in order: (number, wire type, value), with varints as ints and
    everything else as the raw bytes (a nested message is parsed only when asked for)."""
    fields: list[_PbField] = []
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _pb_varint(data, pos)
        number, kind = key >> 3, key & 7
        value: int | bytes
        if kind == _VARINT:
            value, pos = _pb_varint(data, pos)
        elif kind == _LEN:
            size, pos = _pb_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif kind in (_I64, _I32):
            size = 8 if kind == _I64 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {kind}")
        if pos > end:
            raise ValueError("truncated protobuf message")
        fields.append((number, kind, value))
    return fields


def _pb_write(fields: Iterable[_PbField]) -> bytes:
    out = bytearray()
    for number, kind, value in fields:
        out += _pb_uvarint(number << 3 | kind)
        if kind == _VARINT:
            out += _pb_uvarint(int(value) & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement
        else:
            data = _as_bytes(value)
            if kind == _LEN:
                out += _pb_uvarint(len(data))
            out += data
    return bytes(out)


def _pb_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _pb_uvarint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise _NotTheExpectedGraph("a nested message where a number was expected")
    return value


def _pb_strs(fields: list[_PbField], number: int) -> list[str]:
    return [_as_bytes(v).decode() for n, _, v in fields if n == number]


def _pb_str(fields: list[_PbField], number: int) -> str:
    found = _pb_strs(fields, number)
    return found[0] if found else ""


def _pb_ints(fields: list[_PbField], number: int) -> list[int]:
    """A repeated int64 field, packed or not."""
    values: list[int] = []
    for n, _, value in fields:
        if n != number:
            continue
        if isinstance(value, int):
            values.append(value)
        else:
            pos = 0
            while pos < len(value):
                v, pos = _pb_varint(value, pos)
                values.append(v)
    return [v - (1 << 64) if v >= 1 << 63 else v for v in values]


def _int_attributes(node: list[_PbField]) -> dict[str, list[int]]:
    """A node's attributes, all of which must be INT or INTS."""
    out: dict[str, list[int]] = {}
    for number, _, value in node:
        if number != _NODE_ATTRIBUTE:
            continue
        attribute = _pb_read(_as_bytes(value))
        name = _pb_str(attribute, _ATTR_NAME)
        kind = _pb_ints(attribute, _ATTR_TYPE)
        if kind == [_ATTR_TYPE_INTS]:
            out[name] = _pb_ints(attribute, _ATTR_INTS)
        elif kind == [_ATTR_TYPE_INT]:
            out[name] = _pb_ints(attribute, _ATTR_INT)
        else:
            raise _NotTheExpectedGraph(f"attribute {name} of type {kind}")
    return out


def _array(tensor: list[_PbField]) -> np.ndarray:
    """A constant's value; only the raw little-endian layout the bundled model uses."""
    dtype = _TENSOR_DTYPES.get(next(iter(_pb_ints(tensor, _TENSOR_TYPE)), 0))
    raw = [v for n, _, v in tensor if n == _TENSOR_RAW]
    if dtype is None or len(raw) != 1:
        raise _NotTheExpectedGraph(f"constant {_pb_str(tensor, _TENSOR_NAME)} in another layout")
    dims = _pb_ints(tensor, _TENSOR_DIMS)
    return np.frombuffer(_as_bytes(raw[0]), dtype=dtype).reshape(dims).astype(dtype[1:])


def _tensor(name: str, value: np.ndarray) -> bytes:
    (dtype,) = [k for k, v in _TENSOR_DTYPES.items() if np.dtype(v) == value.dtype]
    fields: list[_PbField] = [(_TENSOR_DIMS, _VARINT, int(d)) for d in value.shape]
    fields += [(_TENSOR_TYPE, _VARINT, dtype), (_TENSOR_NAME, _LEN, name.encode())]
    fields.append(
        (
            _TENSOR_RAW,
            _LEN,
            np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes(),
        )
    )
    return _pb_write(fields)


def _node(op: str, inputs: list[str], outputs: list[str], name: str, **ints: list[int]) -> bytes:
    fields: list[_PbField] = [(_NODE_INPUT, _LEN, i.encode()) for i in inputs]
    fields += [(_NODE_OUTPUT, _LEN, o.encode()) for o in outputs]
    fields += [(_NODE_NAME, _LEN, name.encode()), (_NODE_OP, _LEN, op.encode())]
    for key, values in ints.items():
        attribute: list[_PbField] = [(_ATTR_NAME, _LEN, key.encode())]
        attribute.append((_ATTR_TYPE, _VARINT, _ATTR_TYPE_INTS))
        attribute += [(_ATTR_INTS, _VARINT, v) for v in values]
        fields.append((_NODE_ATTRIBUTE, _LEN, _pb_write(attribute)))
    return _pb_write(fields)


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
    with_bends = pitch_bends(unwrapped["contour"], notes)
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


_BEND_BINS: Final[int] = 25  # get_pitch_bends' n_bins_tolerance
_N_CONTOUR_BINS: Final[int] = 264


def pitch_bends(
    contours: np.ndarray, notes: list[tuple[int, int, int, float]]
) -> list[tuple[int, int, int, float, list[Any]]]:
    """basic-pitch's ``get_pitch_bends`` (default tolerance), the same values and types: per
    note, the argmax of its contour rows under a Gaussian centred on its pitch. The window
    geometry depends only on the pitch, so it is worked out once per pitch rather than with
    a dozen small numpy calls per note (14 → 2 ms for a 45-second piano piece)."""
    geometry: dict[int, tuple[int, int, np.ndarray, Any]] = {}
    out: list[tuple[int, int, int, float, list[Any]]] = []
    for start, end, pitch, amplitude in notes:
        if pitch not in geometry:
            geometry[pitch] = _bend_geometry(pitch)
        lo, hi, weights, shift = geometry[pitch]
        bends = list(np.argmax(contours[start:end, lo:hi] * weights, axis=1) - shift)
        out.append((start, end, pitch, amplitude, bends))
    return out


def _bend_geometry(pitch: int) -> tuple[int, int, np.ndarray, Any]:
    """Contour bins ``[lo, hi)`` around a pitch, their Gaussian weights and the argmax offset,
    computed exactly as in ``get_pitch_bends``."""
    from basic_pitch import note_creation
    from scipy.signal.windows import gaussian

    tol, width = _BEND_BINS, 2 * _BEND_BINS + 1
    centre = int(np.round(note_creation.midi_pitch_to_contour_bin(pitch)))
    lo = max(centre - tol, 0)
    hi = min(_N_CONTOUR_BINS, centre + tol + 1)
    weights = gaussian(width, std=5)[
        max(0, tol - centre) : width - max(0, centre - (_N_CONTOUR_BINS - tol - 1))
    ]
    shift = tol - np.max([0, tol - centre])  # an np.int64, as there: bends are np.int64
    return lo, hi, weights, shift


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
        mono = _to_mono(block)
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


def _to_mono(block: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(frames, channels) → frames, as librosa.to_mono does it: the float32 mean. For mono and
    stereo, the mean of two values is their float32 sum halved; ``block.mean(axis=1)`` gives the
    same, but strides through the block and took 60 % of all decoding time."""
    if block.shape[1] == 1:
        return block[:, 0].copy()
    if block.shape[1] == 2:
        mono = block[:, 0] + block[:, 1]
        mono /= np.float32(2)
        return mono
    return block.mean(axis=1, dtype=np.float32)


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
