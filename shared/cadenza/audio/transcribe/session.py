"""basic-pitch's bundled ONNX model in an ONNX Runtime session, one per process.

The session runs :func:`cadenza.audio.transcribe.graph.faster_graph`'s rewrite of the bundled
model when, on this machine, it gives the bundled model's outputs bit for bit; else the bundled
model itself. It is created once per process (again after a fork) and shared by threads.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cadenza.audio.transcribe.audio import MODEL_SAMPLE_RATE, WINDOW, windows
from cadenza.audio.transcribe.graph import faster_graph
from cadenza.audio.transcribe.quiet import quiet_imports

_INPUT: Final[str] = "serving_default_input_2:0"
#: The model's outputs, by the names basic-pitch gives them, and their graph names.
OUTPUTS: Final[dict[str, str]] = {
    "note": "StatefulPartitionedCall:1",
    "onset": "StatefulPartitionedCall:2",
    "contour": "StatefulPartitionedCall:0",
}

_log = logging.getLogger(__name__)


class Model:
    """One ONNX session with basic-pitch's model; ``run`` may be called concurrently.

    The session runs :func:`faster_graph`'s rewrite of the bundled model if, on this machine,
    it gives bit for bit the bundled model's outputs on a probe batch (checked here, once per
    process, ~0.2 s), else the bundled model itself; ``rewritten`` says which."""

    def __init__(self, *, rewrite: bool = True) -> None:
        with quiet_imports():
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
        outputs = _outputs(self.session, windows(audio, first, end))
        return dict(zip(OUTPUTS, outputs, strict=True))


_model_lock = threading.Lock()
_loaded: Model | None = None


def shared_model() -> Model:
    """The process's model, created on first use; a forked child (Celery prefork) makes its own,
    since ONNX Runtime's thread pools do not survive a fork."""
    global _loaded
    with _model_lock:
        if _loaded is None or _loaded.pid != os.getpid():
            _loaded = Model()
        return _loaded


def _session(model: bytes) -> Any:
    """A CPU session running one window on one thread: concurrency comes from running several
    windows at once (see :mod:`cadenza.audio.transcribe.pipeline`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, batch: npt.NDArray[np.float32]) -> list[np.ndarray]:
    """The model's note, onset and contour outputs for a (n, 43844, 1) batch."""
    return list(session.run(list(OUTPUTS.values()), {_INPUT: batch}))


def _probe_windows() -> npt.NDArray[np.float32]:
    """Three windows to compare two graphs on: a harmonic tone in noise, a sparse chirp at
    another level, and silence."""
    rng = np.random.default_rng(20220401)
    t = np.arange(WINDOW) / MODEL_SAMPLE_RATE
    tone = sum(0.3 / k * np.sin(2 * np.pi * 196.0 * k * t) for k in range(1, 9))
    chirp = 0.05 * np.sin(2 * np.pi * (60.0 + 900.0 * t) * t) * (rng.random(WINDOW) < 0.3)
    batch = np.stack([tone + 0.02 * rng.standard_normal(WINDOW), chirp, np.zeros(WINDOW)])
    return batch.astype(np.float32)[:, :, None]
