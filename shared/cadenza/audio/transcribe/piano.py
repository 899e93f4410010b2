"""Piano audio → MIDI with velocities and pedals: transkun 2.0's bundled checkpoint, in-process.

transkun (Yan & Duan, MIT licence) is a transformer with a semi-CRF decoder trained on MAESTRO
solo piano. Unlike basic-pitch it predicts each note's velocity and the sustain (CC64) and soft
(CC67) pedal intervals, and it places offsets well, so it is the engine for piano recordings;
on other instruments it still answers with piano notes. Its checkpoint (~56 MB) ships inside
the wheel, so nothing downloads.

transkun is installed ``--no-deps``: it declares torchaudio, tensorboard, torch-optimizer,
seaborn, sox and more for its training scripts. Inference needs only torch, numpy,
pretty_midi and mir_eval (imported by its model module), all of which Cadenza has. The one
run-time use of torchaudio is building a mel filter bank whose values the checkpoint then
overwrites; without torchaudio we hand the constructor :func:`melscale_fbanks`, the same
formula, whose output equals the checkpoint's buffer exactly (a test checks it).

Files are transcribed with the model's own 16-second segments. A file longer than one segment
goes through transkun's ``TransKun.transcribe`` unchanged (segments every 8 s, each second seen
twice, notes stitched across segments). A shorter file is one segment from its start: the
reference scheme would pad 8 s of silence on both sides and run the model 2-3 times on what
one run covers, the costly part on a CPU (a 16-second segment is ~10 s of 2-core CPU time).
The model is loaded once per process, on the GPU when torch sees one; the next file decodes
while the model works on the current one, and progress is reported per segment. Segments of
different files are not batched into one model run: on 2 CPU cores two segments in one batch
took as long as one after the other (44.3 s vs 44.8 s under load), and torch already spreads
one segment over all the cores it is given.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt

from cadenza.audio.transcribe.audio import decode_for_model
from cadenza.audio.transcribe.notes import _midi_bytes
from cadenza.audio.transcribe.params import TranscribeParams

if TYPE_CHECKING:
    import torch

    from cadenza.audio.transcribe.pipeline import Progress

#: transkun 2.0's input rate (its ``pretrained/2.0.conf``); restated so importing stays cheap.
PIANO_SAMPLE_RATE: Final[int] = 44100
#: The bundled checkpoint and its configuration, inside the installed ``transkun`` package.
_CHECKPOINT: Final[str] = "2.0.pt"
_CONF: Final[str] = "2.0.conf"
#: transkun's pedal "pitches": sustain and soft pedal, as negative MIDI controller numbers.
_PEDALS: Final[dict[int, int]] = {-64: 64, -67: 67}


class PianoModel:
    """transkun's model with the bundled weights, in eval mode on ``device``."""

    def __init__(self, device: str | None = None) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        with _quiet(), _mel_filter_bank_without_torchaudio():
            from transkun.ModelTransformer import TransKun

            pretrained = resources.files("transkun") / "pretrained"
            conf = TransKun.Config()
            conf.__dict__.update(json.loads((pretrained / _CONF).read_text())["Model"]["config"])
            model = TransKun(conf=conf)
        with resources.as_file(pretrained / _CHECKPOINT) as weights:
            state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict(state)  # strict: every weight and buffer comes from the file
        self.model = model.to(self.device).eval()
        # transkun's transcribe() runs one segment per transcribeFrames call: counting the
        # calls gives progress (and a chance to cancel) in the middle of a long file.
        self._run_segment = model.transcribeFrames
        self._on_segment: Callable[[], None] | None = None
        model.transcribeFrames = self._counted_segment
        self.segment_s: float = float(conf.segmentSizeInSecond)
        self.hop_size: int = int(conf.hopSize)
        self.window_size: int = int(conf.windowSize)
        if int(conf.fs) != PIANO_SAMPLE_RATE:
            raise RuntimeError(f"transkun checkpoint expects {conf.fs} Hz, not 44100 Hz")
        self.pid = os.getpid()
        self._lock = threading.Lock()  # one file at a time: the segment hook is per call

    def segments(self, n_samples: int) -> int:
        """How many model runs a file of ``n_samples`` takes: one up to a segment, else one
        per hop over the file padded by (segment - hop) on both sides, as transkun does."""
        if n_samples <= self.segment_s * PIANO_SAMPLE_RATE:
            return 1
        hop_s = float(self.model.segmentHopSizeInSecond)
        pad = math.ceil((self.segment_s - hop_s) * PIANO_SAMPLE_RATE)
        step = math.ceil(hop_s * PIANO_SAMPLE_RATE / self.hop_size) * self.hop_size
        return math.ceil((n_samples + 2 * pad) / step)

    def notes(
        self, audio: npt.NDArray[np.float32], on_segment: Callable[[], None] | None = None
    ) -> list[Any]:
        """transkun ``Note`` events (pitch < 0: a pedal) for (frames, channels) 44.1 kHz audio;
        ``on_segment`` is called before each model run (it may raise to stop)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(audio)).to(self.device)
        with self._lock, _quiet(), torch.inference_mode():
            self._on_segment = on_segment
            try:
                if len(audio) > self.segment_s * PIANO_SAMPLE_RATE:
                    return list(self.model.transcribe(x))
                return self._one_segment(x)
            finally:
                self._on_segment = None

    def _counted_segment(self, *args: Any, **kwargs: Any) -> Any:
        if self._on_segment is not None:
            self._on_segment()
        return self._run_segment(*args, **kwargs)

    def _one_segment(self, x: torch.Tensor) -> list[Any]:
        """A file no longer than a segment, in one run from its first sample. As at the end of
        transkun's own loop every event ends and overlaps are resolved; an event that starts on
        the first frame is a note struck there (nothing sounded before the file began), so
        unlike a later segment's it needs no predicted onset."""
        import torch.nn.functional as F
        from transkun.Data import resolveOverlapping
        from transkun.Util import makeFrame

        size = math.ceil(self.segment_s * PIANO_SAMPLE_RATE)
        duration = x.shape[0] / PIANO_SAMPLE_RATE
        signal = F.pad(x.transpose(-1, -2), (0, size - x.shape[0]))
        frames = makeFrame(signal, self.hop_size, self.window_size)
        n_symbols = len(self.model.targetMIDIPitch)
        events, _last = self.model.transcribeFrames(
            frames.unsqueeze(0),
            forcedStartPos=[0] * n_symbols,
            velocityCriteron="hamming",
            lastFrameIdx=round(size / self.hop_size),
        )
        kept = []
        for e in events[0]:
            if e.start >= duration:
                continue
            e.start, e.end = max(e.start, 0.0), min(max(e.end, e.start), duration)
            e.hasOffset = True
            kept.append(e)
        return list(resolveOverlapping(kept))


def transcribe_piano(
    paths: Sequence[Path],
    params: TranscribeParams,
    *,
    progress: Progress | None = None,
    threads: int | None = None,
) -> list[bytes]:
    """Transcribe each file with transkun; one Standard MIDI File per input, in order.
    ``threads`` caps torch's CPU threads for the call (default: the CPUs this process may use,
    as for basic-pitch)."""
    import torch

    from cadenza.audio.transcribe.pipeline import _default_threads, _result

    if not paths:
        return []
    report = progress or (lambda fraction, message: None)
    n = len(paths)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or _default_threads())
    results: list[bytes] = []
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="cadenza-decode") as decoder:

            def decode(path: Path) -> Future[npt.NDArray[np.float32]]:
                return decoder.submit(decode_for_model, path, rate=PIANO_SAMPLE_RATE, mono=False)

            decoded = decode(paths[0])
            model = shared_piano_model()  # loads (once per process) while the first decodes
            try:
                for i in range(n):
                    audio = _result(decoded, i)
                    if i + 1 < n:
                        decoded = decode(paths[i + 1])
                    total = model.segments(len(audio))
                    done = 0

                    def segment(i: int = i, total: int = total) -> None:
                        nonlocal done
                        report((i + 0.95 * done / total) / n, f"file {i + 1}/{n}: piano model")
                        done += 1

                    events = model.notes(audio, segment) if len(audio) else []
                    results.append(events_to_midi(events, params))
                    report((i + 1) / n, f"file {i + 1}/{n}: transcribed")
            except BaseException:
                decoder.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        torch.set_num_threads(previous_threads)
    return results


def events_to_midi(events: Sequence[Any], params: TranscribeParams) -> bytes:
    """transkun's events as one piano track: notes with their velocities, pedals as control
    changes (value on at the start, 0 at the end) as transkun's ``writeMidi`` writes them;
    notes outside the frequency band are dropped, pedals kept."""
    import pretty_midi

    low = _pitch_bound(params.minimum_frequency, math.ceil, 0)
    high = _pitch_bound(params.maximum_frequency, math.floor, 127)
    midi = pretty_midi.PrettyMIDI(resolution=960, initial_tempo=params.midi_tempo)
    piano = pretty_midi.Instrument(program=0, name="Piano")
    for e in events:
        if e.pitch in _PEDALS:
            cc = _PEDALS[e.pitch]
            piano.control_changes.append(pretty_midi.ControlChange(cc, int(e.velocity), e.start))
            piano.control_changes.append(pretty_midi.ControlChange(cc, 0, e.end))
        elif low <= e.pitch <= high:
            velocity = min(max(int(e.velocity), 1), 127)  # 0 would be a note-off
            piano.notes.append(pretty_midi.Note(velocity, int(e.pitch), e.start, e.end))
    piano.control_changes.sort(key=lambda c: (c.time, c.value))
    midi.instruments.append(piano)
    return _midi_bytes(midi)


def _pitch_bound(hz: float | None, rounding: Any, default: int) -> int:
    """The MIDI pitch bound of a frequency limit (notes exactly at the limit are kept)."""
    if hz is None:
        return default
    return int(rounding(round(69 + 12 * math.log2(hz / 440.0), 6)))


def melscale_fbanks(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int, **_: Any
) -> torch.Tensor:
    """torchaudio's ``functional.melscale_fbanks`` with its defaults (HTK mel scale, no
    normalisation): triangular filters, (n_freqs, n_mels)."""
    import torch

    freqs = torch.linspace(0, sample_rate // 2, n_freqs)
    m_min = 2595.0 * math.log10(1.0 + f_min / 700.0)
    m_max = 2595.0 * math.log10(1.0 + f_max / 700.0)
    f_pts = 700.0 * (10 ** (torch.linspace(m_min, m_max, n_mels + 2) / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - freqs.unsqueeze(1)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


_shim_lock = threading.Lock()


@contextmanager
def _mel_filter_bank_without_torchaudio() -> Iterator[None]:
    """While the model is built, let its ``import torchaudio`` find :func:`melscale_fbanks`
    when torchaudio is not installed; the module is removed again afterwards, so no other code
    ever sees it."""
    if importlib.util.find_spec("torchaudio") is not None:
        yield
        return
    shim = types.ModuleType("torchaudio")
    shim.functional = types.SimpleNamespace(melscale_fbanks=melscale_fbanks)  # type: ignore[attr-defined]
    with _shim_lock:
        sys.modules["torchaudio"] = shim
        try:
            yield
        finally:
            if sys.modules.get("torchaudio") is shim:
                del sys.modules["torchaudio"]


@contextmanager
def _quiet() -> Iterator[None]:
    """transkun calls ``torch.utils.checkpoint`` in inference too (a no-op without gradients)
    and torch warns about it on every segment; its CRF module uses ``torch.jit.script``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
        warnings.filterwarnings("ignore", message=".*use_reentrant.*")
        warnings.filterwarnings("ignore", message=".*requires_grad=True.*")
        yield


_model_lock = threading.Lock()
_loaded: PianoModel | None = None


def shared_piano_model() -> PianoModel:
    """The process's piano model, loaded on first use (~2 s, ~60 MB) and again after a fork."""
    global _loaded
    with _model_lock:
        if _loaded is None or _loaded.pid != os.getpid():
            _loaded = PianoModel()
        return _loaded
