"""A copy of a SoundFont 2 file that symusic's synthesizer plays in tune.

symusic 0.5.9 synthesises with prestosynth, which reads only part of the SoundFont model. With
FluidR3_GM (Debian's default General MIDI soundfont) that makes almost every instrument play
at the wrong pitch, because (measured here, one note at a time against libfluidsynth):

1. **overridingRootKey (generator 58) is ignored.** prestosynth takes the root key from the
   sample header's ``originalPitch``. FluidR3 sets ``originalPitch`` to 60 on 1284 of its 1419
   samples and gives the real root key with generator 58 in 2485 of its 2641 instrument zones,
   so a piano C4 whose sample was recorded at D4 plays as D4, and other keys land up to two
   octaves off.
2. **Tuning is clamped to ±120 cents.** ``pitchCorrection + fineTune + 100 × coarseTune`` is
   clamped to ±1.2 semitones, so coarse tunings of ±12 or -24 semitones (FluidR3 has 64 such
   instrument zones and 13 preset zones) are lost.
3. **scaleTuning (56) is treated as 100** (one semitone per key) whatever its value; FluidR3 uses
   0-55 cents per key for some effects and percussion.
4. **Its sample cache is keyed by (sample start, key) only** (and the start is shifted left by 8
   bits in 32-bit arithmetic), while the cached audio already carries the zone's tuning, loop
   points and attenuation: two zones that share sample data but differ in those play with
   whichever was rendered first in the process.
5. **Preset-level generators are added to the instrument's with the instrument-level
   defaults**, so a preset that leaves an envelope time unset adds -12000 timecents to the
   instrument's: attacks, decays and releases collapse to a few milliseconds.
6. **Attenuation is read as a linear gain** ``1 - a / 1000`` (fluidsynth: -0.04 dB per cB) and
   **velocity only picks zones**; pan is read in percent instead of 0.1 %.

Items 1-3 and 5 were each reproduced with a one-sample font built in
``tests/unit/test_soundfont.py``.

:func:`for_symusic` rewrites the soundfont into the subset prestosynth reads correctly. The
pitches stay those the SoundFont spec gives the original; pan and attenuation are rewritten
into prestosynth's own units, so the copy is for symusic only (fluidsynth keeps the original):

* every instrument zone gets its own sample header whose ``originalPitch``/``pitchCorrection``
  carry the zone's real root key and total tuning (root key shifted by whole semitones, the
  remainder within ±50 cents); generators 51, 52, 58 and the sample-address offsets
  (0-4, 12, 45, 50) are folded into that header and removed;
* preset-level tuning (51, 52, 56) and attenuation (48) are pushed down into a copy of the
  instrument, one per distinct preset setting (a few dozen in FluidR3);
* a zone with a scaleTuning other than 100 becomes an instrument of its own with one zone per
  key, each with the root key and correction that give fluidsynth's pitch for that key;
* a header that would meet another in prestosynth's cache starts 1-13 samples later (at most
  0.3 ms of the attack is skipped) rather than pointing at a copy of the data, so the file
  holds the same sample data as the original;
* every preset gets a global zone that sets the envelope, LFO and filter generators to 0 —
  the neutral value of an additive preset generator — so prestosynth adds nothing to the
  instrument's values;
* pan is divided by 10: prestosynth reads it in percent where the file has 0.1 % units, so
  a pan of 10 % would otherwise become hard left or right;
* initialAttenuation is rewritten for prestosynth's linear reading (gain ``1 - a / 1000``) so
  that it gives fluidsynth's gain (-0.04 dB per centibel, measured).

prestosynth also ignores note velocity for loudness (:mod:`cadenza.render.symusic` makes up for
it), pitch and filter envelopes, LFOs, modulators, reverb and chorus; those differences remain
(FluidR3's Synth Drum, program 118, glides in pitch in fluidsynth and not here). The tables are
built by :mod:`cadenza.render.soundfont_builder`; :func:`corrected_soundfont` builds the copy
once per source file (keyed by its SHA-256) in a cache folder, atomically, and reuses it
afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Final

from cadenza.render import sf2
from cadenza.render.sf2 import SoundFont, SoundFontError
from cadenza.render.soundfont_builder import Builder, zone_tables

log = logging.getLogger(__name__)

#: Bumped whenever the rewrite changes, so that stale cached copies are rebuilt.
FORMAT_VERSION: Final = 1


def for_symusic(font: SoundFont) -> SoundFont:
    """A copy of ``font`` (SoundFont 2, PCM samples) that symusic 0.5.9 plays at the pitches
    a spec-following synthesizer plays the original at (see the module docstring)."""
    if font.version[0] != 2:
        raise SoundFontError(f"only SoundFont 2 files can be rewritten, not version {font.version}")
    builder = Builder(font)
    for index in range(len(font.tables["phdr"]) - 1):
        builder.preset(index)
    shdr = builder.samples()
    if builder.left_out:
        log.warning("%d zones play pitches no root key can express; left out", builder.left_out)
    phdr, pbag, pgen, pmod = zone_tables(builder.presets, sf2.PHDR, name_only=False)  # type: ignore[arg-type]
    inst, ibag, igen, imod = zone_tables(builder.instruments, sf2.INST, name_only=True)  # type: ignore[arg-type]
    info = [(cid, payload) for cid, payload in font.info if cid != b"ISFT"]
    info.append((b"ISFT", b"cadenza symusic_font %d\0" % FORMAT_VERSION))
    tables = {
        "phdr": phdr,
        "pbag": pbag,
        "pmod": pmod,
        "pgen": pgen,
        "inst": inst,
        "ibag": ibag,
        "imod": imod,
        "igen": igen,
        "shdr": shdr,
    }
    return SoundFont(info=info, smpl=font.smpl, sm24=font.sm24, tables=tables)


# --- the cached copy --------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where rewritten soundfonts are kept: ``CADENZA_CACHE_DIR`` if set, else the user's
    cache folder (``$XDG_CACHE_HOME/cadenza`` or ``~/.cache/cadenza``)."""
    configured = os.environ.get("CADENZA_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cadenza"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def corrected_soundfont(source: Path, folder: Path | None = None) -> Path:
    """The path of ``source`` rewritten by :func:`for_symusic`, built on first use.

    The copy is named after the source's SHA-256 and :data:`FORMAT_VERSION`, so a changed
    source or a changed rewrite gives a new file. It is written to a temporary file and renamed
    into place, under an exclusive lock so that concurrent workers build it once; a reader
    never sees a partial file. Raises :class:`SoundFontError` for a font that cannot be
    rewritten (not SoundFont 2, or too many zones) and ``OSError`` if the folder is not
    writable.
    """
    import fcntl

    source = Path(source).resolve()
    folder = Path(folder) if folder is not None else cache_dir() / "soundfonts"
    target = folder / f"{source.stem}.{_sha256(source)[:32]}.symusic{FORMAT_VERSION}.sf2"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f".{target.name}.lock").open("a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same copy
        if not target.is_file():
            log.info("rewriting %s for symusic into %s", source, target)
            sf2.write(for_symusic(sf2.read(source)), target)
    return target
