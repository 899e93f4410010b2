"""Deciding whether an uploaded file is audio we are willing to decode, before decoding any of it.

Strangers upload these files, so nothing about them is trusted:

1. the type comes from magic bytes (:func:`sniff_audio`), never from the name;
2. the size is checked against :class:`AudioLimits` before any tool runs;
3. a WAV header is checked field by field here (ffprobe silently repairs absurd WAV headers, so
   it cannot tell us that one lied);
4. ffprobe reads the container with the demuxer we sniffed (it never guesses) under a timeout;
5. the duration is *measured* by walking the packets (demuxing only, no decoding) and compared
   with what the header declares: a one-second file that claims three hours, or an MP3 cut off
   halfway whose Xing header still counts every frame, is rejected as ``corrupt``.

Only then do the duration and decoded-size caps apply, to the measured duration.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cadenza.audio import _ffmpeg

#: Every audio kind we accept, by the name :func:`sniff_audio` returns, with its MIME type.
#: Ogg covers Vorbis, Opus and FLAC-in-Ogg; ``AudioInfo.codec`` tells them apart.
AUDIO_KINDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "wav": "audio/wav",
        "mp3": "audio/mpeg",
        "aac": "audio/aac",
        "m4a": "audio/mp4",
        "flac": "audio/flac",
        "ogg": "audio/ogg",
    }
)

#: How many leading bytes :func:`sniff_audio` wants; fewer work, but then MP3/ADTS streams are
#: accepted on one frame header instead of two.
SNIFF_BYTES: Final[int] = 4096

#: Every ``AudioRejected.code``, with what it means for the uploader.
REJECT_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "not_audio": "the bytes are not WAV, MP3, AAC/M4A, FLAC or Ogg audio",
        "too_long": "the audio is longer than the duration limit",
        "too_large": "the file, or its decoded samples, exceed the size limit",
        "corrupt": "the header is inconsistent with the content, or the file is damaged",
        "timeout": "probing the file took longer than the time limit",
    }
)

# Sanity bounds for header fields; real audio sits far inside them.
_MIN_RATE, _MAX_RATE = 1000, 768_000
_MAX_CHANNELS = 64
_MP4_BRANDS: Final[frozenset[bytes]] = frozenset(
    {b"M4A ", b"M4B ", b"M4P ", b"F4A ", b"mp41", b"mp42", b"isom", b"iso2", b"iso4", b"iso5"}
    | {b"iso6", b"dash", b"MSNV", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"qt  "}
)
_OGG_CODECS: Final[tuple[bytes, ...]] = (b"\x01vorbis", b"OpusHead", b"\x7fFLAC")
_MP3_BITRATES_V1 = (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)
_MP3_BITRATES_V2 = (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)
_MP3_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


class AudioRejected(ValueError):
    """An audio file we refuse: ``code`` is from :data:`REJECT_CODES`, the message says why and
    what the uploader can do about it."""

    def __init__(self, code: str, message: str) -> None:
        if code not in REJECT_CODES:
            raise ValueError(f"unknown AudioRejected code {code!r}")
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class AudioLimits:
    """Upper bounds for one audio file; the defaults admit any song or rehearsal take."""

    max_bytes: int = 512 * 1024 * 1024  # 30 min of 48 kHz/24-bit stereo WAV is 518 MB
    max_duration_s: float = 1800.0  # 30 min: longer recordings should be cropped first
    max_decoded_bytes: int = 2 * 1024**3  # float32 samples at native rate: 30 min 96 kHz stereo
    probe_timeout_s: float = 10.0  # both ffprobe passes together; a 30-min file needs < 1 s

    def __post_init__(self) -> None:
        """Refuse limits that would reject everything or nothing by accident."""
        for name in ("max_bytes", "max_duration_s", "max_decoded_bytes", "probe_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"AudioLimits.{name} must be positive, got {value!r}")


@dataclass(frozen=True)
class AudioInfo:
    """What one audio file holds; ``format`` is a key of :data:`AUDIO_KINDS`."""

    format: str
    codec: str  # ffprobe's codec name: pcm_s16le, mp3, aac, flac, vorbis, opus, ...
    duration_s: float  # measured from the packets, not taken from the header
    sample_rate: int
    channels: int


def sniff_audio(head: bytes) -> str | None:
    """The audio kind the leading bytes announce (a key of :data:`AUDIO_KINDS`), else None.

    Checks structure, not just a prefix, where a prefix alone is weak: an MPEG or ADTS frame
    header must have valid fields and, when the head is long enough, be followed by another.
    """
    if len(head) >= 12 and head[:4] in (b"RIFF", b"RF64", b"BW64") and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS" and len(head) >= 28 and head[4] == 0:
        # The first page carries the codec's identification packet right after its segment table.
        body = head[27 + head[26] :]
        return "ogg" if body.startswith(_OGG_CODECS) else None
    if len(head) >= 12 and head[4:8] == b"ftyp":
        box_end = min(len(head), struct.unpack(">I", head[:4])[0])
        brands = {head[i : i + 4] for i in range(8, max(box_end, 12), 4)}
        return "m4a" if brands & _MP4_BRANDS else None
    if head[:3] == b"ID3" and len(head) >= 10:
        # ID3v2 tag: 28-bit syncsafe size after a 10-byte header (+10 when a footer is flagged).
        size = (head[6] & 0x7F) << 21 | (head[7] & 0x7F) << 14 | (head[8] & 0x7F) << 7
        size |= head[9] & 0x7F
        after = 10 + size + (10 if head[5] & 0x10 else 0)
        if after >= len(head):
            return "mp3"  # a long tag (cover art) hides the first frame; ffprobe decides later
        inner = sniff_audio(head[after:])
        return inner if inner in ("mp3", "aac", "flac") else None
    if _adts_frame_len(head, 0):
        return "aac"
    if _mp3_frame_len(head, 0):
        return "mp3"
    return None


def sniff_file(path: Path) -> str:
    """The audio kind of the file at ``path`` from its leading bytes (see :func:`sniff_audio`),
    for a file that already passed :func:`probe_audio`; raises ``AudioRejected("not_audio")``
    if it does not look like audio (it was replaced, or never probed)."""
    with path.open("rb") as f:
        kind = sniff_audio(f.read(SNIFF_BYTES))
    if kind is None:
        raise AudioRejected("not_audio", "this file is not audio we recognise")
    return kind


def decode_failed(proc: subprocess.CompletedProcess[bytes], path: Path) -> AudioRejected:
    """The rejection for a file ffmpeg failed to decode, with ffmpeg's reason in user terms."""
    return AudioRejected(
        "corrupt", f"the audio could not be decoded ({_ffmpeg.reason(proc, path)}); re-export it"
    )


def _mp3_frame_len(buf: bytes, pos: int, *, follow: bool = True) -> int:
    """Length of the MPEG-1/2/2.5 Layer III frame at ``pos``, or 0 if it is not one."""
    if len(buf) < pos + 4 or buf[pos] != 0xFF or buf[pos + 1] & 0xE0 != 0xE0:
        return 0
    version = (buf[pos + 1] >> 3) & 3  # 3: MPEG-1, 2: MPEG-2, 0: MPEG-2.5, 1: reserved
    layer = (buf[pos + 1] >> 1) & 3  # 1: Layer III
    bitrate_idx, rate_idx = buf[pos + 2] >> 4, (buf[pos + 2] >> 2) & 3
    if version == 1 or layer != 1 or bitrate_idx in (0, 15) or rate_idx == 3:
        return 0
    table = _MP3_BITRATES_V1 if version == 3 else _MP3_BITRATES_V2
    rate = _MP3_RATES[version][rate_idx]
    coeff = 144 if version == 3 else 72
    length = coeff * table[bitrate_idx] * 1000 // rate + ((buf[pos + 2] >> 1) & 1)
    if (
        follow
        and len(buf) >= pos + length + 4
        and not _mp3_frame_len(buf, pos + length, follow=False)
    ):
        return 0
    return length


def _adts_frame_len(buf: bytes, pos: int, *, follow: bool = True) -> int:
    """Length of the ADTS (raw AAC) frame at ``pos``, or 0 if it is not one."""
    if len(buf) < pos + 7 or buf[pos] != 0xFF or buf[pos + 1] & 0xF6 != 0xF0:
        return 0
    if (buf[pos + 2] >> 2) & 0xF >= 13:  # sampling-frequency index 13..15 are reserved/escape
        return 0
    length = (buf[pos + 3] & 3) << 11 | buf[pos + 4] << 3 | buf[pos + 5] >> 5
    if length < 7:
        return 0
    if (
        follow
        and len(buf) >= pos + length + 7
        and not _adts_frame_len(buf, pos + length, follow=False)
    ):
        return 0
    return length


def probe_audio(path: str | os.PathLike[str], limits: AudioLimits = AudioLimits()) -> AudioInfo:
    """Inspect an untrusted audio file without decoding it; raise :class:`AudioRejected` if we
    will not decode it. The returned duration is measured, so callers can trust it."""
    path = Path(path)
    deadline = time.monotonic() + limits.probe_timeout_s
    size = path.stat().st_size
    if size == 0:
        raise AudioRejected("not_audio", "the file is empty; upload the audio file itself")
    if size > limits.max_bytes:
        raise AudioRejected(
            "too_large",
            f"the file is {_mb(size)}, over the {_mb(limits.max_bytes)} limit; "
            "upload a compressed version (FLAC, MP3, Ogg) or crop it first",
        )
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    kind = sniff_audio(head)
    if kind is None:
        raise AudioRejected(
            "not_audio",
            "this file is not audio we recognise (its first bytes are not a WAV, MP3, AAC/M4A, "
            "FLAC or Ogg header, whatever its name says); export it in one of those formats",
        )
    if kind == "wav":
        _check_wav_header(path, size)

    meta, warnings = _ffprobe_streams(path, kind, deadline)
    streams = meta.get("streams") or []
    if not streams:
        raise AudioRejected("not_audio", f"the {kind} file has no audio stream in it")
    stream = streams[0]
    codec = str(stream.get("codec_name") or "unknown")
    rate = _int_or_zero(stream.get("sample_rate"))
    channels = _int_or_zero(stream.get("channels"))
    if not (_MIN_RATE <= rate <= _MAX_RATE) or not (1 <= channels <= _MAX_CHANNELS):
        raise AudioRejected(
            "corrupt",
            f"the header declares {channels} channel(s) at {rate} Hz, which no real recording "
            "has; the file is damaged or forged — re-export it from the original",
        )
    declared = _float_or_none(stream.get("duration"))
    if declared is None:
        declared = _float_or_none((meta.get("format") or {}).get("duration"))
    # ffprobe guessed this duration from the bitrate (VBR MP3 without a Xing header, raw ADTS):
    # it is not a claim the file makes, so a mismatch says nothing about the file.
    estimated = "Estimating duration from bitrate" in warnings

    measured = _measure_duration(path, kind, deadline, limits.max_duration_s)
    if measured <= 0:
        raise AudioRejected(
            "corrupt", "the file holds no audio data (no packets could be read); re-export it"
        )
    if measured > limits.max_duration_s:  # checked first: the walk stops a minute past the limit
        raise _too_long(measured, limits)
    if declared is not None and not estimated and declared > measured + _slack(measured):
        raise AudioRejected(
            "corrupt",
            f"the header claims {_hms(declared)} of audio but the file holds only "
            f"{_hms(measured)}; it was cut off or its header is forged — upload the complete file",
        )
    decoded = measured * rate * channels * 4  # float32 samples, as the decoders hold them
    if decoded > limits.max_decoded_bytes:
        raise AudioRejected(
            "too_large",
            f"decoded, this audio needs {_mb(decoded)} ({channels} channels at {rate} Hz), over "
            f"the {_mb(limits.max_decoded_bytes)} limit; downmix or resample it, or crop it",
        )
    return AudioInfo(
        format=kind, codec=codec, duration_s=measured, sample_rate=rate, channels=channels
    )


def _check_wav_header(path: Path, size: int) -> None:
    """Reject a WAV whose header fields are impossible or whose data chunk claims more bytes
    than the file holds (ffprobe would quietly use the file size instead)."""
    fmt: tuple[int, int, int, int, int, int] | None = None
    with path.open("rb") as f:
        riff = f.read(12)
        if riff[:4] != b"RIFF":
            return  # RF64/BW64 keep their sizes in a ds64 chunk; ffprobe's packet walk decides
        pos = 12
        for _ in range(64):  # real files have < 10 chunks before the samples
            f.seek(pos)
            header = f.read(8)
            if len(header) < 8:
                break
            chunk_id, chunk_size = header[:4], struct.unpack("<I", header[4:])[0]
            if chunk_id == b"fmt ":
                body = f.read(16)
                if chunk_size < 16 or len(body) < 16:
                    raise _corrupt_wav("its fmt chunk is too short")
                fmt = struct.unpack("<HHIIHH", body)
            elif chunk_id == b"data":
                if fmt is None:
                    raise _corrupt_wav("its samples come before the fmt chunk that describes them")
                _check_wav_fmt(fmt, chunk_size, available=size - pos - 8)
                return
            pos += 8 + chunk_size + (chunk_size & 1)
    raise _corrupt_wav("it has no data chunk" if fmt else "it has no fmt chunk")


def _check_wav_fmt(
    fmt: tuple[int, int, int, int, int, int], data_size: int, available: int
) -> None:
    """Validate WAV fmt fields against each other and the data size against the file size."""
    tag, channels, rate, byte_rate, block_align, bits = fmt
    if not (1 <= channels <= _MAX_CHANNELS) or not (_MIN_RATE <= rate <= _MAX_RATE):
        raise _corrupt_wav(f"it declares {channels} channel(s) at {rate} Hz")
    if tag in (1, 3, 0xFFFE):  # PCM, IEEE float, extensible: every field is determined
        if bits not in (8, 16, 24, 32, 64) or block_align != channels * bits // 8:
            raise _corrupt_wav(f"{bits}-bit samples in {block_align}-byte frames do not add up")
        if byte_rate != rate * block_align:
            raise _corrupt_wav(f"its byte rate {byte_rate} is not {rate} Hz × {block_align} bytes")
    if byte_rate <= 0:
        raise _corrupt_wav("its byte rate is zero")
    if data_size in (0, 0xFFFFFFFF):
        return  # "size unknown", written by streaming encoders; the packet walk measures it
    claimed, held = data_size / byte_rate, max(available, 0) / byte_rate
    if claimed > held + _slack(held):
        raise AudioRejected(
            "corrupt",
            f"the WAV header claims {_hms(claimed)} of audio but the file holds only "
            f"{_hms(held)}; it was cut off or its header is forged — upload the complete file",
        )


def _ffprobe_streams(path: Path, kind: str, deadline: float) -> tuple[dict[str, Any], str]:
    """ffprobe's JSON for the container and its audio streams, plus its warnings."""
    args = [_ffmpeg.tool("ffprobe"), "-v", "warning", "-print_format", "json"]
    args += ["-show_format", "-show_streams", "-select_streams", "a"]
    proc = _run_probe([*args, *_ffmpeg.input_args(str(path), kind)], deadline)
    warnings = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise AudioRejected(
            "corrupt",
            f"the {kind} file cannot be read ({_ffmpeg.reason(proc, path) or 'no detail'}); "
            "it is damaged or not really audio — re-export it",
        )
    try:
        meta = json.loads(proc.stdout)
    except ValueError as exc:
        raise AudioRejected("corrupt", f"the {kind} file could not be described: {exc}") from exc
    return meta, warnings


def _measure_duration(path: Path, kind: str, deadline: float, max_duration_s: float) -> float:
    """Seconds of audio the packets really cover (demuxed, not decoded), from the first
    packet's start to the last packet's end. Reads at most a minute past the duration limit."""
    args = [_ffmpeg.tool("ffprobe"), "-v", "error", "-select_streams", "a:0"]
    args += ["-read_intervals", f"%+{max_duration_s + 60:.0f}"]
    args += ["-show_entries", "packet=pts_time,duration_time", "-of", "csv=p=0"]
    proc = _run_probe([*args, *_ffmpeg.input_args(str(path), kind)], deadline)
    first, last = math.inf, -math.inf
    for line in proc.stdout.split(b"\n"):
        fields = line.split(b",")
        pts = _float_or_none(fields[0].decode("ascii", "replace"))
        if pts is None:
            continue
        dur = _float_or_none(fields[1].decode("ascii", "replace")) if len(fields) > 1 else None
        first, last = min(first, pts), max(last, pts + (dur or 0.0))
    if last == -math.inf:
        return 0.0
    return last - max(first, 0.0)


def _run_probe(args: list[str], deadline: float) -> subprocess.CompletedProcess[bytes]:
    """Run ffprobe with whatever is left of the probe budget; a timeout becomes a rejection."""
    remaining = deadline - time.monotonic()
    try:
        if remaining <= 0:
            raise subprocess.TimeoutExpired(args, 0)
        return _ffmpeg.run(args, timeout=remaining)
    except subprocess.TimeoutExpired as exc:
        raise AudioRejected(
            "timeout",
            "reading this file's structure took too long; it may be damaged or unusually "
            "complex — re-encode it as WAV or FLAC and upload it again",
        ) from exc


def _slack(seconds: float) -> float:
    """How far a declared duration may exceed the measured one: encoder padding and rounding
    make honest files differ by a few frames, a truncated or forged one by much more."""
    return max(1.0, 0.05 * seconds)


def _too_long(seconds: float, limits: AudioLimits) -> AudioRejected:
    return AudioRejected(
        "too_long",
        f"the audio is {_hms(seconds)} long, over the {_hms(limits.max_duration_s)} limit; "
        "crop it into shorter pieces before uploading",
    )


def _corrupt_wav(why: str) -> AudioRejected:
    return AudioRejected(
        "corrupt", f"the WAV header is invalid: {why}; re-export the file from the original"
    )


def _int_or_zero(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _float_or_none(value: object) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _hms(seconds: float) -> str:
    """Durations the way people read them: 0.8 s, 3 min 05 s, 2 h 00 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _mb(n: float) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n / 1024:.0f} KiB"
