"""Converting uploaded audio to the WAV that transcription wants, and cropping it into pieces.

Three operations: ``convert`` (mono 16 kHz WAV by default), ``crop_interval`` (fixed-length
chunks) and ``crop_positions`` (cuts at user-given seconds). The audio after the last cut is never
lost: the partial tail is its own segment, and a length that is an exact multiple of the interval
keeps its last full chunk.

Cuts are sample-accurate: a boundary at ``t`` seconds falls on sample ``round(t × rate)`` and the
segment times we report are those sample indices divided by the rate, so they agree with the
written files to the sample. Lossless inputs (WAV, FLAC) are cut directly; compressed inputs are
decoded once by ffmpeg (which removes encoder delay, so times match the original recording).

Everything here works on local paths and touches no database or object store; inputs are expected
to have passed :func:`cadenza.audio.probe.probe_audio` already.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import soundfile as sf

from cadenza.atomic import atomic_path
from cadenza.audio import _ffmpeg
from cadenza.audio.positions import MAX_SEGMENTS
from cadenza.audio.probe import AudioInfo, AudioRejected, decode_failed, sniff_file

_BLOCK_FRAMES: Final[int] = 1 << 16  # copy in 64k-frame blocks: bounded memory for long files
_LOSSLESS: Final[frozenset[str]] = frozenset({"WAV", "WAVEX", "RF64", "FLAC"})
_PLAIN_SUBTYPES: Final[frozenset[str]] = frozenset(
    {"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"}
)


@dataclass(frozen=True)
class Segment:
    """One piece of a cropped file: where it was written and which span of the source it holds."""

    path: Path
    start_s: float  # start sample / rate: exact, not rounded to the requested time
    end_s: float  # exclusive end, likewise

    @property
    def duration_s(self) -> float:
        """Length of the piece in seconds."""
        return self.end_s - self.start_s


def convert(
    src: Path,
    dst: Path,
    *,
    sample_rate: int = 16000,
    mono: bool = True,
    timeout_s: float = 600.0,
) -> AudioInfo:
    """Decode ``src`` (any accepted kind) to a 16-bit PCM WAV at ``sample_rate``, mono by default
    (channels averaged), written atomically to ``dst``; returns what was written."""
    if not 4000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate must be between 4000 and 192000 Hz, got {sample_rate}")
    kind = sniff_file(src)
    with atomic_path(dst, suffix=".wav") as tmp:
        args = _ffmpeg.decode_args(str(src), kind)
        args += ["-ac", "1"] if mono else []
        # -bitexact drops the encoder tag, so equal inputs give byte-equal outputs (the object
        # store keys files by content).
        args += ["-ar", str(sample_rate), "-c:a", "pcm_s16le", "-bitexact", "-f", "wav", str(tmp)]
        _run_ffmpeg(args, src, timeout_s)
    return wav_info(dst)


def wav_info(path: Path) -> AudioInfo:
    """Describe a WAV we wrote, from its header (cheap: no subprocess, no decoding)."""
    info = sf.info(str(path))
    subtype = {"PCM_16": "pcm_s16le", "PCM_24": "pcm_s24le", "PCM_32": "pcm_s32le"}
    subtype |= {"FLOAT": "pcm_f32le", "DOUBLE": "pcm_f64le", "PCM_U8": "pcm_u8"}
    return AudioInfo(
        format="wav",
        codec=subtype.get(info.subtype, info.subtype.lower()),
        duration_s=info.frames / info.samplerate,
        sample_rate=info.samplerate,
        channels=info.channels,
    )


def crop_interval(
    src: Path,
    out_dir: Path,
    *,
    interval_s: float = 30.0,
    min_tail_s: float = 0.0,
    timeout_s: float = 600.0,
) -> list[Segment]:
    """Cut ``src`` into consecutive ``interval_s``-second WAV pieces in ``out_dir``.

    The last piece holds whatever remains. A remainder shorter than ``min_tail_s`` is appended
    to the piece before it rather than dropped, so the pieces always cover the whole file.
    """
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s}")
    if not (math.isfinite(min_tail_s) and 0 <= min_tail_s <= interval_s):
        raise ValueError(f"min_tail_s must be between 0 and interval_s, got {min_tail_s}")
    with _lossless(src, out_dir, timeout_s) as pcm:
        rate, total = _rate_frames(pcm)
        if total / (interval_s * rate) > MAX_SEGMENTS:
            raise ValueError(
                f"{interval_s} s pieces would cut this {total / rate:.0f} s file into more than "
                f"{MAX_SEGMENTS} segments; choose a longer interval"
            )
        starts = []
        k = 0
        while (start := round(k * interval_s * rate)) < total:
            starts.append(start)
            k += 1
        if len(starts) > 1 and total - starts[-1] < round(min_tail_s * rate):
            starts.pop()  # short tail: it joins the previous piece
        return _write_segments(pcm, out_dir, starts, total)


def crop_positions(
    src: Path,
    out_dir: Path,
    positions_s: Sequence[float],
    *,
    timeout_s: float = 600.0,
) -> list[Segment]:
    """Cut ``src`` at the given seconds: pieces run from the start to the first position, between
    consecutive positions, and from the last position to the end (the tail is kept)."""
    if any(not math.isfinite(p) for p in positions_s):
        raise ValueError("positions must be finite numbers of seconds")
    if len(positions_s) >= MAX_SEGMENTS:
        raise ValueError(f"at most {MAX_SEGMENTS - 1} cut positions are allowed")
    with _lossless(src, out_dir, timeout_s) as pcm:
        rate, total = _rate_frames(pcm)
        starts = [0]
        for position in sorted(positions_s):
            frame = round(position * rate)
            if position <= 0 or frame <= 0:
                raise ValueError(f"cut position {position:g} s is not after the start of the audio")
            if frame >= total:
                raise ValueError(
                    f"cut position {position:g} s is at or past the end of the audio "
                    f"({total / rate:.3f} s); remove it or use a shorter time"
                )
            if frame == starts[-1]:
                raise ValueError(f"cut position {position:g} s is given twice")
            starts.append(frame)
        return _write_segments(pcm, out_dir, starts, total)


def _write_segments(pcm: Path, out_dir: Path, starts: list[int], total: int) -> list[Segment]:
    """Copy frames ``[starts[i], starts[i+1])`` (the last up to ``total``) into numbered WAVs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    segments: list[Segment] = []
    with sf.SoundFile(str(pcm)) as f_in:
        rate, channels = f_in.samplerate, f_in.channels
        # Keep the sample format of plain PCM/float sources; anything else (ADPCM, µ-law...)
        # becomes 16-bit PCM, which every tool reads.
        subtype = f_in.subtype if f_in.subtype in _PLAIN_SUBTYPES else "PCM_16"
        # Integers copy PCM bit-exactly; float data stays float.
        dtype = "float64" if subtype in ("FLOAT", "DOUBLE") else "int32"
        for i, (start, end) in enumerate(zip(starts, [*starts[1:], total], strict=True)):
            path = out_dir / f"segment_{i:04d}.wav"
            f_in.seek(start)
            with sf.SoundFile(
                str(path), "w", samplerate=rate, channels=channels, subtype=subtype, format="WAV"
            ) as f_out:
                left = end - start
                while left > 0:
                    block = f_in.read(min(left, _BLOCK_FRAMES), dtype=dtype, always_2d=True)
                    if len(block) == 0:
                        raise AudioRejected(
                            "corrupt", "the audio ended earlier than its header says"
                        )
                    f_out.write(block)
                    left -= len(block)
            segments.append(Segment(path=path, start_s=start / rate, end_s=end / rate))
    return segments


@contextmanager
def _lossless(src: Path, work_dir: Path, timeout_s: float) -> Iterator[Path]:
    """``src`` itself when it is WAV/FLAC, else a temporary PCM WAV decoded from it by ffmpeg."""
    kind = sniff_file(src)
    if kind in ("wav", "flac"):
        try:
            if sf.info(str(src)).format in _LOSSLESS:
                yield src
                return
        except (sf.LibsndfileError, RuntimeError):
            pass  # a WAV codec libsndfile lacks (e.g. ADPCM): let ffmpeg decode it
    work_dir.mkdir(parents=True, exist_ok=True)
    # A scratch file beside the pieces (same disk, which has room for them), removed afterwards.
    with tempfile.TemporaryDirectory(prefix=".cadenza-", dir=work_dir) as scratch:
        tmp = Path(scratch) / "decoded.wav"
        args = _ffmpeg.decode_args(str(src), kind) + ["-c:a", "pcm_s16le", "-f", "wav", str(tmp)]
        _run_ffmpeg(args, src, timeout_s)
        yield tmp


def _rate_frames(path: Path) -> tuple[int, int]:
    info = sf.info(str(path))
    return info.samplerate, info.frames


def _run_ffmpeg(args: list[str], src: Path, timeout_s: float) -> None:
    try:
        proc = _ffmpeg.run(args, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise AudioRejected(
            "timeout", f"decoding took longer than {timeout_s:.0f} s; crop the file and retry"
        ) from exc
    if proc.returncode != 0:
        raise decode_failed(proc, src)
