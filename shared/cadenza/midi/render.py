"""MIDI → audio with a local General MIDI soundfont, for listening to samples and datasets.

Two synthesizers can do the work:

* **symusic** (in-process, several times faster than fluidsynth). symusic 0.5.9's synthesizer
  (prestosynth) reads only part of the SoundFont format: it ignores the overriding root key,
  clamps tuning to ±1.2 semitones, ignores scale tuning and note velocity, and mixes up zones
  that share a sample. With FluidR3_GM.sf2, the soundfont Debian ships as the default, a C4
  comes out as a D4 and other keys are off by up to two octaves (upstream issue
  Yikai-Liao/symusic#55). :mod:`cadenza.midi.symusic_font` therefore rewrites such a
  soundfont once into a copy that prestosynth plays at fluidsynth's pitches (cached, keyed by
  the soundfont's hash, under ``CADENZA_CACHE_DIR`` or ``~/.cache/cadenza``), and velocity is
  applied here by rendering the notes in groups of similar velocity, each scaled by
  fluidsynth's velocity curve (within ±1.5 dB).
* **fluidsynth**, which plays every soundfont by the book: its C library in this process (the
  soundfont is loaded once per process, each render gets a fresh synth), or its command line
  when the library cannot be loaded (slower: it reloads the soundfont on every call).

``engine="auto"`` (the default) has symusic play a few piano notes once per process, with the
chosen soundfont and, if they come out of tune, with its rewritten copy, and uses symusic with
the first that plays in tune; otherwise (a soundfont that cannot be rewritten, or a cache
folder that cannot be written) fluidsynth. With the default FluidR3 that means symusic with the
rewritten copy (the first render of a fresh machine builds it: about 2 s and 148 MB of disk);
MuseScore General (``CADENZA_SOUNDFONT=/usr/share/sounds/sf3/
MuseScore_General.sf3``) is played as it is. What symusic still does not do (filter, pitch
and modulation envelopes, LFOs, reverb, chorus) is listed in :mod:`cadenza.midi.symusic_font`.

Output is always peak-normalised to -1 dBFS (so dense pieces never clip and sparse ones are not
inaudible), trimmed of the inaudible release tail, and written as 16-bit WAV or as MP3 via
ffmpeg. Nothing is ever downloaded: symusic's built-in soundfonts fetch files at run time, so a
soundfont path is always passed explicitly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, cast

import numpy as np
import numpy.typing as npt
import soundfile as sf
from symusic.core import (
    NoteTick,
    NoteTickList,
    ScoreSecond,
    ScoreTick,
    Synthesizer,
    TempoTick,
    TrackTick,
)

from cadenza.midi.sf2 import SoundFontError
from cadenza.midi.symusic_font import corrected_soundfont

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
_symusic_lock = threading.Lock()  # one Synthesizer is not safe to share between threads


class SoundfontMissing(FileNotFoundError):
    """No soundfont at the configured path; the message says how to install one."""


def parse_midi(midi_bytes: bytes) -> ScoreTick:
    """symusic's parse with its errors (RuntimeError from C++) turned into ValueError, which
    callers map to "bad input" rather than "server fault"."""
    try:
        return ScoreTick.from_midi(midi_bytes)
    except RuntimeError as exc:
        raise ValueError(f"not a readable MIDI file: {exc}") from exc


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
    chosen = _choose_engine(engine, soundfont)
    if score.note_num() == 0:
        audio = np.zeros((2, int(_MIN_SECONDS * sample_rate)), dtype=np.float32)
    elif chosen == "symusic":
        audio = _render_symusic(score, symusic_soundfont(soundfont) or soundfont, sample_rate)
    elif chosen == "fluidsynth":
        audio = _render_libfluidsynth(midi_bytes, soundfont, sample_rate, end_s)
    else:
        audio = _render_fluidsynth_cli(midi_bytes, soundfont, sample_rate, timeout_s)
    audio = _finish(audio, sample_rate, end_s)
    wav = _wav_bytes(audio, sample_rate)
    return wav if fmt == "wav" else _to_mp3(wav, timeout_s)


def _choose_engine(engine: Engine, soundfont: Path) -> Chosen:
    """The synthesizer that will really run for this request (see the module docstring)."""
    if engine not in ("auto", "fluidsynth", "fluidsynth-cli", "symusic"):
        raise ValueError(
            f"engine must be 'auto', 'fluidsynth', 'fluidsynth-cli' or 'symusic', got {engine!r}"
        )
    if engine == "symusic":
        return "symusic"
    if engine == "auto" and symusic_soundfont(soundfont) is not None:
        return "symusic"
    if engine != "fluidsynth-cli" and _libfluidsynth() is not None:
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


def symusic_soundfont(soundfont: Path) -> Path | None:
    """The soundfont symusic should play for ``soundfont``: itself if symusic plays it in
    tune, else its rewritten copy (built on first use) if that plays in tune, else None."""
    stat = soundfont.stat()
    found = _symusic_soundfont(str(soundfont.resolve()), stat.st_mtime_ns, stat.st_size)
    return Path(found) if found is not None else None


@lru_cache(maxsize=8)
def _symusic_soundfont(soundfont: str, mtime_ns: int, size: int) -> str | None:
    if symusic_in_tune(soundfont, mtime_ns, size):
        return soundfont
    try:
        corrected = corrected_soundfont(Path(soundfont))
    except (SoundFontError, OSError) as exc:
        log.warning("symusic plays %s out of tune and it cannot be rewritten: %s", soundfont, exc)
        return None
    stat = corrected.stat()
    if symusic_in_tune(str(corrected), stat.st_mtime_ns, stat.st_size):
        return str(corrected)
    log.warning("symusic plays %s out of tune even rewritten as %s", soundfont, corrected)
    return None


@lru_cache(maxsize=8)
def symusic_in_tune(soundfont: str, mtime_ns: int = 0, size: int = 0) -> bool:
    """Whether symusic plays piano notes at their written pitch with this soundfont.

    Each test note must have a strong spectral peak at its fundamental and none an octave
    below (a note played an octave low would still show one at the fundamental, as its second
    harmonic). ``mtime_ns``/``size`` only key the cache, so a replaced file is checked again.
    """
    rate = 22050
    pitches = (48, 60, 64, 67, 72, 76)
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=120.0))
    track = TrackTick("probe", 0, False)
    for i, pitch in enumerate(pitches):
        track.notes.append(NoteTick(i * 480, 400, pitch, 100))  # one note every 0.5 s
    score.tracks.append(track)
    try:
        with _symusic_lock:  # a throwaway synth: no soundfont stays loaded if we reject it
            audio = Synthesizer(soundfont, rate, 0).render(score, True)
    except Exception:  # any failure means "do not use symusic for this soundfont"
        log.exception("symusic could not render with %s", soundfont)
        return False
    mono = np.asarray(audio, dtype=np.float64).mean(axis=0)
    for i, pitch in enumerate(pitches):
        note = mono[int((i * 0.5 + 0.05) * rate) : int((i * 0.5 + 0.35) * rate)]
        f0 = 440.0 * 2 ** ((pitch - 69) / 12)
        if _peak(note, rate, f0) < 0.3 or _peak(note, rate, f0 / 2) >= 0.3:
            return False
    return True


def _peak(x: npt.NDArray[np.float64], rate: int, hz: float) -> float:
    """Spectral magnitude within ±40 cents of ``hz``, relative to the strongest peak."""
    n = 1 << 16
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    band = (freqs > hz * 2 ** (-0.4 / 12)) & (freqs < hz * 2 ** (0.4 / 12))
    top = float(spectrum.max())
    return float(spectrum[band].max()) / top if top > 0 and band.any() else 0.0


@lru_cache(maxsize=2)
def _synth(soundfont: str, sample_rate: int) -> Synthesizer:
    """symusic's synthesizer, kept per process: it holds the whole soundfont in memory."""
    return Synthesizer(soundfont, sample_rate, 0)


#: Notes whose fluidsynth velocity gains lie within this many dB of each other are rendered
#: together, at the gain in the middle: each note is within half of it of fluidsynth's level.
_VELOCITY_SPAN_DB: Final[float] = 3.0


def velocity_gain_db(velocity: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """fluidsynth's level for a note velocity relative to velocity 127, in dB: the SoundFont
    default modulator (velocity to attenuation, concave, 960 cB, of which fluidsynth applies
    0.4) amounts to 40·log10(v/127): -7.7 dB at 80, -11.9 dB at 64 (measured)."""
    v = np.clip(np.asarray(velocity, dtype=np.float64), 1, 127)
    return 40 * np.log10(v / 127)


def _render_symusic(score: ScoreTick, soundfont: Path, sample_rate: int) -> npt.NDArray[np.float32]:
    """symusic ignores velocity for loudness (it only picks velocity layers), so the notes are
    rendered in groups of similar velocity and each group is scaled by fluidsynth's velocity
    gain before mixing (within ±1.5 dB; synthesis is linear and notes do not interact).
    Each group costs a pass over a buffer as long as the piece, hence groups, not one
    render per velocity."""
    parts = []
    with _symusic_lock:
        synth = _synth(str(soundfont), sample_rate)
        for gain, part in _velocity_groups(score):
            parts.append((gain, np.asarray(synth.render(part, True), dtype=np.float32)))
    # symusic returns column-major (2, n) arrays: mix in place into the longest one.
    parts.sort(key=lambda p: -p[1].shape[1])
    out = parts[0][1]
    if len(parts) > 1:  # with one gain, normalisation makes the gain irrelevant
        out *= np.float32(parts[0][0])
        for gain, audio in parts[1:]:
            audio *= np.float32(gain)
            out[:, : audio.shape[1]] += audio
    return np.ascontiguousarray(out)  # (2, n)


def _velocity_groups(score: ScoreTick) -> list[tuple[float, ScoreTick]]:
    """(linear gain, a copy of the score with only the notes of that group): the fewest
    groups of notes whose gains span at most ``_VELOCITY_SPAN_DB`` (greedy, loudest first)."""
    gains = [
        velocity_gain_db(track.notes.numpy()["velocity"] if len(track.notes) else [])
        for track in score.tracks
    ]
    values = np.sort(np.concatenate([*gains, np.zeros(0)]))[::-1]
    tops: list[float] = []  # each group: gains in (top - span, top]
    for db in values:
        if not tops or db <= tops[-1] - _VELOCITY_SPAN_DB:
            tops.append(float(db))
    if len(tops) <= 1:
        return [(1.0, score)]
    edges = np.array(tops)  # group of a gain: the last top at or above it
    groups = []
    for g, top in enumerate(tops):
        part = score.copy()
        for i in reversed(range(len(part.tracks))):
            keep = np.searchsorted(-edges, -gains[i], side="right") - 1 == g
            if not keep.any():  # symusic mixes a full-length buffer per track: drop it
                part.tracks.pop(i)
                continue
            notes = part.tracks[i].notes.numpy()
            part.tracks[i].notes = NoteTickList.from_numpy(
                notes["time"][keep],
                notes["duration"][keep],
                notes["pitch"][keep],
                notes["velocity"][keep],
            )
        groups.append((10 ** ((top - _VELOCITY_SPAN_DB / 2) / 20), part))
    return groups


def _render_fluidsynth_cli(
    midi_bytes: bytes, soundfont: Path, sample_rate: int, timeout_s: float
) -> npt.NDArray[np.float32]:
    """Render with the fluidsynth command into a float WAV (float, so its mix cannot clip).
    It reloads the soundfont every time (~0.2-0.3 s for FluidR3), hence only a fallback."""
    binary = shutil.which("fluidsynth")
    if binary is None:
        raise RuntimeError("fluidsynth is not installed; `apt-get install fluidsynth`")
    with tempfile.TemporaryDirectory(prefix="cadenza-render-") as tmp:
        midi_path, wav_path = Path(tmp) / "in.mid", Path(tmp) / "out.wav"
        midi_path.write_bytes(midi_bytes)
        args = [binary, "-n", "-i", "-q", "-F", str(wav_path), "-T", "wav", "-O", "float"]
        args += ["-r", str(sample_rate), "-o", "synth.cpu-cores=1"]
        args += [str(soundfont), str(midi_path)]
        proc = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False
        )
        if proc.returncode != 0 or not wav_path.is_file():
            detail = proc.stderr.decode("utf-8", "replace").strip()[-300:]
            raise RuntimeError(f"fluidsynth failed (exit {proc.returncode}): {detail}")
        data, rate = sf.read(str(wav_path), dtype="float32", always_2d=True)
    if rate != sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz instead of {sample_rate} Hz")
    return np.ascontiguousarray(data.T)  # (2, n)


# --- libfluidsynth in this process -----------------------------------------------------------
#
# The fluidsynth command spends ~0.25 s loading FluidR3 (148 MB) on every call, longer than it
# takes to render a typical 30-second sample. Through the C library the soundfont is loaded once
# per process and shared: each render gets a *fresh* synth (about 1 ms to create) to which the
# loaded soundfont is added, so no chorus phase or reverb tail leaks from one render into the
# next and the same MIDI always gives the same samples.

_c = ctypes.c_void_p
_FLUID_OK: Final[int] = 0
_PLAYER_ACTIVE: Final[frozenset[int]] = frozenset({1, 2})  # FLUID_PLAYER_PLAYING, _STOPPING
_BLOCK: Final[int] = 4096  # frames per write; fluidsynth processes 64-frame blocks inside
_lib_lock = threading.Lock()


@lru_cache(maxsize=1)
def _libfluidsynth() -> ctypes.CDLL | None:
    """The fluidsynth 2.x C library with the signatures we call, or None if it is missing."""
    name = ctypes.util.find_library("fluidsynth")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        signatures: dict[str, tuple[list[Any], Any]] = {
            "new_fluid_settings": ([], _c),
            "fluid_settings_setnum": ([_c, ctypes.c_char_p, ctypes.c_double], ctypes.c_int),
            "fluid_settings_setint": ([_c, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
            "fluid_settings_setstr": ([_c, ctypes.c_char_p, ctypes.c_char_p], ctypes.c_int),
            "new_fluid_synth": ([_c], _c),
            "delete_fluid_synth": ([_c], None),
            "fluid_synth_sfload": ([_c, ctypes.c_char_p, ctypes.c_int], ctypes.c_int),
            "fluid_synth_get_sfont_by_id": ([_c, ctypes.c_int], _c),
            "fluid_synth_add_sfont": ([_c, _c], ctypes.c_int),
            "fluid_synth_remove_sfont": ([_c, _c], ctypes.c_int),
            "fluid_synth_write_float": (
                [_c, ctypes.c_int, _c, ctypes.c_int, ctypes.c_int, _c, ctypes.c_int, ctypes.c_int],
                ctypes.c_int,
            ),
            "fluid_synth_get_active_voice_count": ([_c], ctypes.c_int),
            "new_fluid_player": ([_c], _c),
            "delete_fluid_player": ([_c], None),
            "fluid_player_add_mem": ([_c, _c, ctypes.c_size_t], ctypes.c_int),
            "fluid_player_play": ([_c], ctypes.c_int),
            "fluid_player_stop": ([_c], ctypes.c_int),
            "fluid_player_get_status": ([_c], ctypes.c_int),
            "fluid_set_log_function": ([ctypes.c_int, _c, _c], _c),
        }
        for function, (argtypes, restype) in signatures.items():
            getattr(lib, function).argtypes = argtypes
            getattr(lib, function).restype = restype
        for level in (2, 3, 4):  # FLUID_WARN, INFO, DBG: not for a server's stderr
            lib.fluid_set_log_function(level, None, None)
    except (OSError, AttributeError):
        log.warning("libfluidsynth at %s is unusable; using the fluidsynth command", name)
        return None
    return lib


@dataclass
class _LoadedFont:
    """A soundfont loaded into a holder synth, shared by the per-render synths."""

    settings: int
    holder: int
    sfont: int
    pid: int


_fonts: dict[tuple[str, int], _LoadedFont] = {}


def _loaded_font(lib: ctypes.CDLL, soundfont: Path, sample_rate: int) -> _LoadedFont:
    """Settings and soundfont for this rate, loaded on first use (per process: a forked child
    loads its own rather than trusting the parent's C state)."""
    key = (str(soundfont.resolve()), sample_rate)
    font = _fonts.get(key)
    if font is not None and font.pid == os.getpid():
        return font
    settings = lib.new_fluid_settings()
    lib.fluid_settings_setnum(settings, b"synth.sample-rate", float(sample_rate))
    lib.fluid_settings_setstr(settings, b"player.timing-source", b"sample")  # not wall clock
    lib.fluid_settings_setint(settings, b"synth.lock-memory", 0)  # no mlock in containers
    lib.fluid_settings_setint(settings, b"synth.cpu-cores", 1)
    holder = lib.new_fluid_synth(settings)
    font_id = lib.fluid_synth_sfload(holder, os.fsencode(key[0]), 1)
    sfont = lib.fluid_synth_get_sfont_by_id(holder, font_id) if font_id >= 0 else None
    if not holder or not sfont:
        raise RuntimeError(f"fluidsynth could not load the soundfont {soundfont}")
    font = _LoadedFont(settings=settings, holder=holder, sfont=sfont, pid=os.getpid())
    _fonts[key] = font
    return font


def _render_libfluidsynth(
    midi_bytes: bytes, soundfont: Path, sample_rate: int, end_s: float
) -> npt.NDArray[np.float32]:
    """Play the MIDI through a fresh synth until the player finishes and the voices die out
    (at most 3 s of release); float output, so nothing clips before we normalise."""
    lib = _libfluidsynth()
    assert lib is not None
    with _lib_lock:  # the shared soundfont and the C objects are used by one render at a time
        font = _loaded_font(lib, soundfont, sample_rate)
        synth = lib.new_fluid_synth(font.settings)
        if not synth:
            raise RuntimeError("fluidsynth could not create a synthesizer")
        lib.fluid_synth_add_sfont(synth, font.sfont)
        player = lib.new_fluid_player(synth)
        try:
            data = ctypes.create_string_buffer(midi_bytes, len(midi_bytes))
            if lib.fluid_player_add_mem(player, data, len(midi_bytes)) != _FLUID_OK:
                raise RuntimeError("fluidsynth refused the MIDI data")
            lib.fluid_player_play(player)
            blocks: list[npt.NDArray[np.float32]] = []
            limit = int((end_s + 10.0) * sample_rate)  # a player that never ends is stopped
            rendered = tail = 0
            while rendered < limit and (
                lib.fluid_player_get_status(player) in _PLAYER_ACTIVE
                or (lib.fluid_synth_get_active_voice_count(synth) > 0 and tail < 3 * sample_rate)
            ):
                if lib.fluid_player_get_status(player) not in _PLAYER_ACTIVE:
                    tail += _BLOCK
                block = np.zeros((2, _BLOCK), dtype=np.float32)
                left, right = block[0].ctypes.data, block[1].ctypes.data
                lib.fluid_synth_write_float(synth, _BLOCK, left, 0, 1, right, 0, 1)
                blocks.append(block)
                rendered += _BLOCK
            lib.fluid_player_stop(player)
        finally:
            lib.delete_fluid_player(player)
            lib.fluid_synth_remove_sfont(synth, font.sfont)  # the holder keeps it loaded
            lib.delete_fluid_synth(synth)
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((2, 0), dtype=np.float32)


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
