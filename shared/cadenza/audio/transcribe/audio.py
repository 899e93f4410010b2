"""Audio into the model: decoding, mix-down and resampling, then cutting into model windows.

Decoding reproduces ``librosa.load(sr=22050, mono=True)`` bit for bit on PCM input: float32
samples, channels averaged, soxr HQ resampling, librosa's length rule. It streams in blocks, so
a long stereo file never sits in memory at its native rate. Inputs are expected to have passed
:func:`cadenza.audio.probe.probe_audio`. The windowing is basic-pitch 0.4.0's
(``window_audio_file`` in ``run_inference``).
"""

from __future__ import annotations

import math
import struct
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import numpy as np
import numpy.typing as npt

from cadenza.audio import _ffmpeg
from cadenza.audio.probe import AudioRejected, decode_failed, sniff_file

# basic-pitch's fixed geometry (basic_pitch.constants); restated so that importing this module
# stays cheap — the heavy import happens on first use.
MODEL_SAMPLE_RATE: Final[int] = 22050
FFT_HOP: Final[int] = 256
WINDOW: Final[int] = MODEL_SAMPLE_RATE * 2 - FFT_HOP  # 43,844 samples per model input
OVERLAP_FRAMES: Final[int] = 30  # as in run_inference
_OVERLAP: Final[int] = OVERLAP_FRAMES * FFT_HOP
_HOP: Final[int] = WINDOW - _OVERLAP
_DECODE_BLOCK: Final[int] = 1 << 20  # bytes read from ffmpeg at a time


def window_count(n_samples: int) -> int:
    """How many windows ``run_inference`` makes: one per hop over the front-padded signal."""
    return math.ceil((n_samples + _OVERLAP // 2) / _HOP)


def windows(audio: npt.NDArray[np.float32], first: int, end: int) -> npt.NDArray[np.float32]:
    """Windows ``[first, end)`` as a (n, 43844, 1) batch: the signal is preceded by half an
    overlap of zeros and cut every hop, the last window zero-padded (``window_audio_file``)."""
    batch = np.zeros((end - first, WINDOW, 1), dtype=np.float32)
    pad = _OVERLAP // 2
    for row, w in enumerate(range(first, end)):
        lo = w * _HOP - pad  # window start in signal coordinates
        src_lo, src_hi = max(lo, 0), min(lo + WINDOW, len(audio))
        if src_hi > src_lo:
            batch[row, src_lo - lo : src_hi - lo, 0] = audio[src_lo:src_hi]
    return batch


@dataclass(frozen=True)
class _PcmFormat:
    rate: int
    channels: int


def decode_for_model(
    path: Path, *, timeout_s: float = 600.0, rate: int = MODEL_SAMPLE_RATE, mono: bool = True
) -> npt.NDArray[np.float32]:
    """Mono float32 samples at 22,050 Hz, equal to ``librosa.load(path, sr=22050)``: channels
    averaged in float32, resampled with soxr HQ. WAV and FLAC are read in-process with
    libsndfile (as librosa does; no process start for the common case), everything else is
    decoded by ffmpeg. Both stream in blocks, so memory stays at the output size.

    ``rate`` and ``mono=False`` serve models with other inputs (the piano model reads 44.1 kHz
    and every channel): then the result is (frames, channels)."""
    kind = sniff_file(path)
    if kind in ("wav", "flac"):
        import soundfile as sf

        try:
            source = sf.SoundFile(str(path))
        except (sf.LibsndfileError, RuntimeError):
            pass  # a codec libsndfile lacks (e.g. ADPCM WAV): ffmpeg below
        else:
            with source:
                blocks = source.blocks(blocksize=1 << 16, dtype="float32", always_2d=True)
                return _to_model_rate(source.samplerate, blocks, rate, mono)
    return _decode_with_ffmpeg(path, kind, timeout_s, rate, mono)


def _decode_with_ffmpeg(
    path: Path, kind: str, timeout_s: float, rate: int, mono: bool
) -> npt.NDArray[np.float32]:
    """ffmpeg decodes to float32 WAV on a pipe; we read its header for the rate and channels."""
    args = _ffmpeg.decode_args(str(path), kind)
    args += ["-bitexact", "-c:a", "pcm_f32le", "-f", "wav", "pipe:1"]
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
                blocks = _pipe_blocks(proc.stdout, fmt.channels)
                audio = _to_model_rate(fmt.rate, blocks, rate, mono)
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
        raise decode_failed(subprocess.CompletedProcess(args, code, b"", stderr), path)
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


def _to_model_rate(
    rate: int,
    blocks: Iterable[npt.NDArray[np.float32]],
    target: int = MODEL_SAMPLE_RATE,
    mono: bool = True,
) -> npt.NDArray[np.float32]:
    """Average channels (in float32, as librosa.to_mono does; unless ``mono`` is false) and
    resample to ``target`` Hz with soxr HQ block by block; soxr's stream mode yields the same
    samples as one call over the whole signal (checked against librosa.load)."""
    import soxr

    resampler = None
    parts: list[npt.NDArray[np.float32]] = []
    n_in = 0
    for block in blocks:
        if resampler is None and rate != target:
            channels = 1 if mono else block.shape[1]
            resampler = soxr.ResampleStream(rate, target, channels, "float32", "soxr_hq")
        if not parts:  # the empty start fixes the shape of a file without samples
            parts.append(np.zeros((0,) if mono else (0, block.shape[1]), dtype=np.float32))
        n_in += len(block)
        samples = _to_mono(block) if mono else block
        parts.append(resampler.resample_chunk(samples) if resampler is not None else samples)
    if not parts:
        return np.zeros(0, dtype=np.float32)
    if resampler is None:
        return np.concatenate(parts)
    parts.append(resampler.resample_chunk(parts[0], last=True))
    audio = np.concatenate(parts).astype(np.float32, copy=False)
    # librosa.resample(fix=True) then sets the length to ceil(n × ratio), zero-padding.
    size = int(np.ceil(n_in * (float(target) / rate)))
    if len(audio) >= size:
        return audio[:size]
    padding = np.zeros((size - len(audio), *audio.shape[1:]), dtype=np.float32)
    return np.concatenate([audio, padding])


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
