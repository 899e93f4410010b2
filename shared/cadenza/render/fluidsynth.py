"""fluidsynth, the synthesizer that plays every soundfont by the book.

Two ways to run it, with the same result:

* **libfluidsynth in this process** (:func:`render_libfluidsynth`). The fluidsynth command
  spends ~0.25 s loading FluidR3 (148 MB) on every call, longer than it takes to render a
  typical 30-second sample. Through the C library the soundfont is loaded once per process and
  shared: each render gets a *fresh* synth (about 1 ms to create) to which the loaded soundfont
  is added, so no chorus phase or reverb tail leaks from one render into the next and the same
  MIDI always gives the same samples.
* **the command line** (:func:`render_fluidsynth_cli`), when the library cannot be loaded
  (:func:`libfluidsynth` returns None): slower, since it reloads the soundfont on every call.

Both return float audio of shape (2, n), so nothing clips before the caller normalises it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import soundfile as sf

log = logging.getLogger(__name__)


def render_fluidsynth_cli(
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

_c = ctypes.c_void_p
_FLUID_OK: Final[int] = 0
_PLAYER_ACTIVE: Final[frozenset[int]] = frozenset({1, 2})  # FLUID_PLAYER_PLAYING, _STOPPING
_BLOCK: Final[int] = 4096  # frames per write; fluidsynth processes 64-frame blocks inside
_lib_lock = threading.Lock()


@lru_cache(maxsize=1)
def libfluidsynth() -> ctypes.CDLL | None:
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


def render_libfluidsynth(
    midi_bytes: bytes, soundfont: Path, sample_rate: int, end_s: float
) -> npt.NDArray[np.float32]:
    """Play the MIDI through a fresh synth until the player finishes and the voices die out
    (at most 3 s of release); float output, so nothing clips before we normalise."""
    lib = libfluidsynth()
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
