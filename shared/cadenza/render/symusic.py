"""symusic's synthesizer (prestosynth), in this process and several times faster than fluidsynth.

symusic 0.5.9's synthesizer reads only part of the SoundFont format: it ignores the overriding
root key, clamps tuning to ±1.2 semitones, ignores scale tuning and note velocity, and mixes up
zones that share a sample. With FluidR3_GM.sf2, the soundfont Debian ships as the default, a C4
comes out as a D4 and other keys are off by up to two octaves (upstream issue
Yikai-Liao/symusic#55). Two things make up for that:

* :func:`symusic_soundfont` gives the soundfont to play: the configured one if symusic plays a
  few piano notes from it in tune (:func:`symusic_in_tune`), else its copy rewritten by
  :mod:`cadenza.render.soundfont` (cached, keyed by the soundfont's hash, under
  ``CADENZA_CACHE_DIR`` or ``~/.cache/cadenza``) if that plays in tune, else None (then the
  caller uses fluidsynth).
* :func:`render_symusic` applies velocity by rendering the notes in groups of similar velocity,
  each scaled by fluidsynth's velocity curve (within ±1.5 dB).

What symusic still does not do (filter, pitch and modulation envelopes, LFOs, reverb, chorus)
is listed in :mod:`cadenza.render.soundfont`.
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from symusic.core import NoteTick, NoteTickList, ScoreTick, Synthesizer, TempoTick, TrackTick

from cadenza.render.sf2 import SoundFontError
from cadenza.render.soundfont import corrected_soundfont

log = logging.getLogger(__name__)

_symusic_lock = threading.Lock()  # one Synthesizer is not safe to share between threads


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


def render_symusic(score: ScoreTick, soundfont: Path, sample_rate: int) -> npt.NDArray[np.float32]:
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
