"""MIDI → audio with a local General MIDI soundfont, for listening to samples and datasets.

This module chooses the synthesizer and finishes its output; the synthesizers themselves are
:mod:`cadenza.render.symusic` (in-process, several times faster) and
:mod:`cadenza.render.fluidsynth` (plays every soundfont by the book, through its C library or,
when that cannot be loaded, its command line).

``engine="auto"`` (the default) has symusic play a few piano notes once per process, with the
chosen soundfont and, if they come out of tune, with its rewritten copy, and uses symusic with
the first that plays in tune; otherwise (a soundfont that cannot be rewritten, or a cache
folder that cannot be written) fluidsynth. With the default FluidR3 that means symusic with the
rewritten copy (the first render of a fresh machine builds it: about 2 s and 148 MB of disk);
MuseScore General (``CADENZA_SOUNDFONT=/usr/share/sounds/sf3/
MuseScore_General.sf3``) is played as it is.

Output is always peak-normalised to -1 dBFS (so dense pieces never clip and sparse ones are not
inaudible), trimmed of the inaudible release tail, and written as 16-bit WAV or as MP3 via
ffmpeg. Nothing is ever downloaded: symusic's built-in soundfonts fetch files at run time, so a
soundfont path is always passed explicitly.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Final, Literal, cast

import numpy as np
import numpy.typing as npt
from symusic.core import ScoreSecond

from cadenza.midi.load import parse_midi
from cadenza.render.fluidsynth import libfluidsynth, render_fluidsynth_cli, render_libfluidsynth
from cadenza.render.symusic import render_symusic, symusic_soundfont

log = logging.getLogger(__name__)

#: Where Debian's ``fluid-soundfont-gm`` package puts the FluidR3 General MIDI soundfont.
DEFAULT_SOUNDFONT: Final[Path] = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

#: ``fluidsynth`` runs libfluidsynth in this process (soundfont loaded once) and falls back to the
#: command line when the library cannot be loaded; ``fluidsynth-cli`` always uses the command.
Engine = Literal["auto", "fluidsynth", "fluidsynth-cli", "symusic"]
Chosen = Literal["fluidsynth", "fluidsynth-cli", "symusic"]
AudioFormat = Literal["wav", "mp3"]

_PEAK: Final[float] = 10 ** (-1 / 20)  # -1 dBFS: headroom for MP3 encoding overshoot
_SILENCE_DB: Final[float] = -60.0  # the release tail is cut where it falls below this
_MIN_SECONDS: Final[float] = 0.5  # an empty score still yields a playable file


class SoundfontMissing(FileNotFoundError):
    """No soundfont at the configured path; the message says how to install one."""


def default_soundfont() -> Path:
    """The soundfont to render with: ``CADENZA_SOUNDFONT`` if set, else FluidR3_GM."""
    configured = os.environ.get("CADENZA_SOUNDFONT")
    path = Path(configured) if configured else DEFAULT_SOUNDFONT
    if not path.is_file():
        hint = (
            "point CADENZA_SOUNDFONT at an .sf2/.sf3 file"
            if configured
            else "install one with `apt-get install fluid-soundfont-gm`, or point "
            "CADENZA_SOUNDFONT at an .sf2/.sf3 file"
        )
        raise SoundfontMissing(f"no soundfont at {path}; {hint}")
    return path


def render_midi(
    midi_bytes: bytes,
    *,
    fmt: AudioFormat = "wav",
    sample_rate: int = 44100,
    soundfont: Path | None = None,
    engine: Engine = "auto",
    max_seconds: float = 1800.0,
    timeout_s: float = 600.0,
) -> bytes:
    """Render a Standard MIDI File to stereo audio; returns WAV (16-bit) or MP3 (192 kbit/s)
    bytes. ``max_seconds`` bounds memory: 30 min of stereo float audio is ~640 MB."""
    if fmt not in ("wav", "mp3"):
        raise ValueError(f"fmt must be 'wav' or 'mp3', got {fmt!r}")
    if not 8000 <= sample_rate <= 96000:
        raise ValueError(f"sample_rate must be between 8000 and 96000 Hz, got {sample_rate}")
    soundfont = soundfont or default_soundfont()
    if not soundfont.is_file():
        raise SoundfontMissing(f"no soundfont at {soundfont}")
    score = parse_midi(midi_bytes)
    end_s = float(cast(ScoreSecond, score.to("second")).end()) if score.note_num() else 0.0
    if end_s > max_seconds:
        raise ValueError(
            f"the MIDI lasts {end_s:.0f} s, longer than the {max_seconds:.0f} s render limit; "
            "crop it first"
        )
    chosen = choose_engine(engine, soundfont)
    if score.note_num() == 0:
        audio = np.zeros((2, int(_MIN_SECONDS * sample_rate)), dtype=np.float32)
    elif chosen == "symusic":
        audio = render_symusic(score, symusic_soundfont(soundfont) or soundfont, sample_rate)
    elif chosen == "fluidsynth":
        audio = render_libfluidsynth(midi_bytes, soundfont, sample_rate, end_s)
    else:
        audio = render_fluidsynth_cli(midi_bytes, soundfont, sample_rate, timeout_s)
    audio = _finish(audio, sample_rate, end_s)
    wav = _wav_bytes(audio, sample_rate)
    return wav if fmt == "wav" else _to_mp3(wav, timeout_s)


def choose_engine(engine: Engine, soundfont: Path) -> Chosen:
    """The synthesizer that will really run for this request (see the module docstring)."""
    if engine not in ("auto", "fluidsynth", "fluidsynth-cli", "symusic"):
        raise ValueError(
            f"engine must be 'auto', 'fluidsynth', 'fluidsynth-cli' or 'symusic', got {engine!r}"
        )
    if engine == "symusic":
        return "symusic"
    if engine == "auto" and symusic_soundfont(soundfont) is not None:
        return "symusic"
    if engine != "fluidsynth-cli" and libfluidsynth() is not None:
        return "fluidsynth"
    if shutil.which("fluidsynth") is not None:
        return "fluidsynth-cli"
    if engine == "auto":
        log.warning(
            "symusic plays %s out of tune and fluidsynth is not installed; rendering with "
            "symusic anyway (`apt-get install fluidsynth` for correct pitch)",
            soundfont,
        )
        return "symusic"
    raise RuntimeError("fluidsynth is not installed; `apt-get install fluidsynth`")


def _finish(
    audio: npt.NDArray[np.float32], sample_rate: int, end_s: float
) -> npt.NDArray[np.float32]:
    """Trim the inaudible release tail (never before the last note ends) and normalise the
    peak to -1 dBFS."""
    audio = np.ascontiguousarray(audio)  # row-wise reductions are several times faster
    level = np.abs(audio).max(axis=0) if audio.size else np.zeros(0, dtype=np.float32)
    peak = float(level.max()) if level.size else 0.0
    if peak > 0:
        loud = np.flatnonzero(level > peak * 10 ** (_SILENCE_DB / 20))
        keep = max(int(loud[-1]) + 1, int(np.ceil(end_s * sample_rate)))
        audio = audio[:, : min(keep, audio.shape[1])] * np.float32(_PEAK / peak)
    minimum = int(_MIN_SECONDS * sample_rate)
    if audio.shape[1] < minimum:
        audio = np.pad(audio, ((0, 0), (0, minimum - audio.shape[1])))
    return audio


def _wav_bytes(audio: npt.NDArray[np.float32], sample_rate: int) -> bytes:
    """16-bit PCM WAV, written directly (libsndfile through soundfile is ~4x slower here):
    samples scaled by 32767 and rounded to nearest, as libsndfile does."""
    channels = audio.shape[0]
    pcm = np.empty((audio.shape[1], channels), dtype="<i2")
    np.rint(np.clip(audio.T, -1.0, 1.0) * 32767, out=pcm, casting="unsafe")
    data = pcm.tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        1,  # PCM
        channels,
        sample_rate,
        sample_rate * 2 * channels,
        2 * channels,
        16,
        b"data",
        len(data),
    )
    return header + data


def _to_mp3(wav: bytes, timeout_s: float) -> bytes:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg is not installed (needed for MP3); `apt-get install ffmpeg`")
    args = [ffmpeg, "-nostdin", "-v", "error", "-f", "wav", "-i", "pipe:0"]
    args += ["-c:a", "libmp3lame", "-b:a", "192k", "-bitexact", "-f", "mp3", "pipe:1"]
    proc = subprocess.run(args, input=wav, capture_output=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip()[-300:]
        raise RuntimeError(f"ffmpeg could not encode MP3: {detail}")
    return proc.stdout
