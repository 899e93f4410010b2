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

Items 1-3 and 5 were each reproduced with a one-sample font built in the tests.

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

prestosynth also ignores note velocity for loudness (``render.py`` makes up for it), pitch
and filter envelopes, LFOs, modulators, reverb and chorus; those differences remain (FluidR3's
Synth Drum, program 118, glides in pitch in fluidsynth and not here).
:func:`corrected_soundfont` builds the copy once per source file (keyed by its SHA-256) in a
cache folder, atomically, and reuses it afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import numpy as np

from cadenza.midi import sf2
from cadenza.midi.sf2 import SoundFont, SoundFontError, key_range, range_amount

log = logging.getLogger(__name__)

#: Bumped whenever the rewrite changes, so that stale cached copies are rebuilt.
FORMAT_VERSION: Final = 1

_ADDRESS_GENS: Final = frozenset(
    {
        sf2.START_ADDRS_OFFSET,
        sf2.END_ADDRS_OFFSET,
        sf2.STARTLOOP_ADDRS_OFFSET,
        sf2.ENDLOOP_ADDRS_OFFSET,
        sf2.START_ADDRS_COARSE_OFFSET,
        sf2.END_ADDRS_COARSE_OFFSET,
        sf2.STARTLOOP_ADDRS_COARSE_OFFSET,
        sf2.ENDLOOP_ADDRS_COARSE_OFFSET,
    }
)
_FOLDED_GENS: Final = _ADDRESS_GENS | {
    sf2.COARSE_TUNE,
    sf2.FINE_TUNE,
    sf2.SCALE_TUNING,
    sf2.OVERRIDING_ROOT_KEY,
}
#: Preset-level generators moved into (a copy of) the instrument: the tuning, and the
#: attenuation, which prestosynth bakes into its cached copy of the sample.
_PUSHED_GENS: Final = (sf2.COARSE_TUNE, sf2.FINE_TUNE, sf2.SCALE_TUNING, sf2.INITIAL_ATTENUATION)
#: Additive generators whose *instrument* default is not 0: prestosynth adds that default when a
#: preset leaves them unset, so each preset's global zone sets them to 0 explicitly.
_NONZERO_DEFAULT_GENS: Final = (
    sf2.INITIAL_FILTER_FC,
    sf2.DELAY_MOD_LFO,
    sf2.DELAY_VIB_LFO,
    sf2.DELAY_MOD_ENV,
    sf2.ATTACK_MOD_ENV,
    sf2.HOLD_MOD_ENV,
    sf2.DECAY_MOD_ENV,
    sf2.RELEASE_MOD_ENV,
    sf2.DELAY_VOL_ENV,
    sf2.ATTACK_VOL_ENV,
    sf2.HOLD_VOL_ENV,
    sf2.DECAY_VOL_ENV,
    sf2.RELEASE_VOL_ENV,
)
_FULL_RANGE: Final = range_amount(0, 127)
_CACHE_MASK: Final = 0xFFFFFF  # prestosynth's cache key keeps the low 24 bits of a sample start
_MONO: Final = 1
_CACHE_CENTS: Final = 0  # see _interchangeable
_MAX_SKIP: Final = 32  # samples: at most 0.7 ms of a sound's start is skipped (44.1 kHz)
_CACHE_DB: Final = 0.0


@dataclass(frozen=True)
class _Header:
    """A sample header of the output. ``mode`` and ``attenuation`` are not written to the
    header, but prestosynth caches them with the sample, so they are part of its identity."""

    name: bytes
    start: int
    end: int
    loop_start: int
    loop_end: int
    rate: int
    root: int
    correction: int
    mode: int
    attenuation: int


@dataclass
class _Zone:
    gens: list[tuple[int, int]]  # keyRange, velRange, others, then the terminal generator
    mods: bytes  # the zone's modulator records, copied unchanged


def _ordered(gens: dict[int, int]) -> list[tuple[int, int]]:
    """Generators in the order the spec requires: keyRange, velRange first, and the terminal
    (instrument or sampleID), if any, last."""
    first = (sf2.KEY_RANGE, sf2.VEL_RANGE)
    last = (sf2.INSTRUMENT, sf2.SAMPLE_ID)
    head = [(g, gens[g]) for g in first if g in gens]
    body = [(g, a) for g, a in sorted(gens.items()) if g not in first and g not in last]
    return head + body + [(g, gens[g]) for g in last if g in gens]


def _prestosynth_pan(gens: dict[int, int]) -> dict[int, int]:
    """prestosynth divides pan by 100 where the unit is 0.1 %: divide by 10 more."""
    if sf2.PAN in gens:
        return {**gens, sf2.PAN: round(gens[sf2.PAN] / 10)}
    return gens


def _kept(gens: dict[int, int]) -> dict[int, int]:
    """An instrument zone's generators less those folded into its sample header (and the
    sample itself), with pan in prestosynth's unit."""
    kept = {g: a for g, a in gens.items() if g not in _FOLDED_GENS and g != sf2.SAMPLE_ID}
    return _prestosynth_pan(kept)


def _linear_attenuation(centibels: int) -> int:
    """The attenuation that prestosynth, which reads it as a linear gain ``1 - a / 1000``,
    turns into fluidsynth's gain for ``centibels`` (fluidsynth, like the E-mu hardware,
    applies 0.4 of the nominal value: 200 cB is -8 dB; measured)."""
    gain = 10 ** (-0.4 * max(0, min(1440, centibels)) / 200)
    return round(1000 * (1 - gain))


_MOD_ID: Final = ("src", "dest", "amount_src", "trans")


def _merged_mods(glob: bytes, local: bytes) -> bytes:
    """A global zone's modulators overridden by a local zone's identical ones (spec 9.5.1),
    for a zone that becomes the global zone of an instrument of its own."""
    g = np.frombuffer(glob, dtype=sf2.MOD)
    loc = np.frombuffer(local, dtype=sf2.MOD)
    ids = {tuple(int(m[f]) for f in _MOD_ID) for m in loc}
    keep = [m for m in g if tuple(int(m[f]) for f in _MOD_ID) not in ids]
    return b"".join(m.tobytes() for m in keep) + local


class _Builder:
    """Builds the tables of :func:`for_symusic`, one preset at a time."""

    def __init__(self, font: SoundFont) -> None:
        self.font = font
        self.t = font.tables
        self.n_samples = len(font.smpl) // 2
        self.headers: list[_Header] = []
        self.header_index: dict[_Header, int] = {}
        self.header_keys: list[set[int]] = []  # keys each header may be played at
        self.instruments: list[tuple[bytes, list[_Zone]]] = []
        self.variants: dict[tuple[int, tuple[int, ...], tuple[int, int]], list[int]] = {}
        self.presets: list[tuple[np.void, list[_Zone]]] = []
        self.left_out = 0  # zones whose pitch no root key can express
        self.shared = 0  # headers that had to keep a start prestosynth confuses

    def _mods(self, bags: sf2.Table, mods: sf2.Table, bag: int) -> bytes:
        lo, hi = int(bags[bag]["mod"]), int(bags[bag + 1]["mod"])
        return bytes(mods[lo:hi].tobytes())

    def _header(self, header: _Header, keys: range) -> int:
        index = self.header_index.get(header)
        if index is None:
            index = self.header_index[header] = len(self.headers)
            self.headers.append(header)
            self.header_keys.append(set())
        self.header_keys[index].update(keys)
        return index

    # -- presets -------------------------------------------------------------------------------

    def preset(self, index: int) -> None:
        pbag, pmod = self.t["pbag"], self.t["pmod"]
        zones: list[_Zone] = []
        glob: dict[int, int] = {}
        glob_mods = b""
        for n, (bag, gens) in enumerate(self.font.preset_zones(index)):
            if sf2.INSTRUMENT not in gens:
                if n == 0:
                    glob, glob_mods = gens, self._mods(pbag, pmod, bag)
                continue  # a later zone without an instrument is to be ignored (spec 7.3)
            merged = {**glob, **gens}
            inst = merged[sf2.INSTRUMENT]
            if not 0 <= inst < len(self.t["inst"]) - 1:
                continue
            push = tuple(merged.get(g, 0) for g in _PUSHED_GENS)
            keys = key_range(merged.get(sf2.KEY_RANGE, _FULL_RANGE))
            own = _prestosynth_pan({g: a for g, a in gens.items() if g not in _PUSHED_GENS})
            for out in self._instruments(inst, push, keys):
                own[sf2.INSTRUMENT] = out
                zones.append(_Zone(_ordered(own), self._mods(pbag, pmod, bag)))
        neutral = {g: a for g, a in glob.items() if g not in _PUSHED_GENS}
        for g in _NONZERO_DEFAULT_GENS:
            neutral.setdefault(g, 0)
        zones.insert(0, _Zone(_ordered(_prestosynth_pan(neutral)), glob_mods))
        self.presets.append((self.t["phdr"][index], zones))

    # -- instruments ---------------------------------------------------------------------------

    def _instruments(self, inst: int, push: tuple[int, ...], keys: tuple[int, int]) -> list[int]:
        """The output instruments that together play ``inst`` with the preset-level ``push``
        generators added, for a preset zone that plays ``keys``."""
        split = self._scale_tuned(inst, push[2])
        variant = (inst, push, keys if split else (0, 127))
        found = self.variants.get(variant)
        if found is None:
            found = self.variants[variant] = self._build(inst, push, variant[2])
        return found

    def _scale_tuned(self, inst: int, scale_p: int) -> bool:
        glob: dict[int, int] = {}
        for n, (_bag, gens) in enumerate(self.font.instrument_zones(inst)):
            if sf2.SAMPLE_ID not in gens:
                glob = gens if n == 0 else glob
            elif {**glob, **gens}.get(sf2.SCALE_TUNING, 100) + scale_p != 100:
                return True
        return False

    def _base_header(self, sh: np.void, gens: dict[int, int], atten_p: int) -> _Header:
        """The zone's sample header with the address offsets applied, the attenuation made
        linear, and root key and correction still to be set."""

        def address(field: str, fine: int, coarse: int) -> int:
            return int(sh[field]) + gens.get(fine, 0) + 32768 * gens.get(coarse, 0)

        start = max(0, min(address("start", 0, 4), self.n_samples))
        end = max(start, min(address("end", 1, 12), self.n_samples))
        loop_start = max(start, min(address("loop_start", 2, 45), end))
        loop_end = max(loop_start, min(address("loop_end", 3, 50), end))
        return _Header(
            name=bytes(sh["name"]),
            start=start,
            end=end,
            loop_start=loop_start,
            loop_end=loop_end,
            rate=int(sh["rate"]),
            root=0,
            correction=0,
            mode=gens.get(sf2.SAMPLE_MODES, 0),
            attenuation=_linear_attenuation(gens.get(sf2.INITIAL_ATTENUATION, 0) + atten_p),
        )

    def _tuned(self, base: _Header, offset: int, keys: range) -> int | None:
        """The index of ``base`` set up to sound ``offset`` cents above "key - root key" at
        ``keys``: whole semitones go into the root key, the rest (±50 cents) into the
        correction (prestosynth clamps it to ±120). None if no root key (a byte) can do it."""
        semitones = round(offset / 100)
        if not 0 <= -semitones <= 255:
            self.left_out += 1
            return None
        return self._header(
            replace(base, root=-semitones, correction=offset - 100 * semitones), keys
        )

    def _add(self, name: bytes, zones: list[_Zone]) -> int:
        self.instruments.append((name, zones))
        return len(self.instruments) - 1

    def _build(self, inst: int, push: tuple[int, ...], keys: tuple[int, int]) -> list[int]:
        """Zones with a scaleTuning other than 100 become instruments of their own: a global
        zone with the zone's generators, then one zone per key (key range, velocity range and
        sample only), which keeps the generator count within the format's 16-bit indices."""
        coarse_p, fine_p, scale_p, atten_p = push
        ibag, imod, shdr = self.t["ibag"], self.t["imod"], self.t["shdr"]
        name = bytes(self.t["inst"][inst]["name"])
        main: list[_Zone] = []
        subs: list[list[_Zone]] = []
        glob: dict[int, int] = {}
        glob_mods = b""
        for n, (bag, gens) in enumerate(self.font.instrument_zones(inst)):
            mods = self._mods(ibag, imod, bag)
            if sf2.SAMPLE_ID not in gens:
                if n == 0:  # the global zone, less what is folded into each zone
                    glob, glob_mods = gens, mods
                    main.append(_Zone(_ordered(_kept(gens)), mods))
                continue  # a later zone without a sample is to be ignored (spec 7.9)
            merged = {**glob, **gens}
            sample = merged[sf2.SAMPLE_ID]
            if not 0 <= sample < len(shdr) - 1:
                continue
            base = self._base_header(shdr[sample], merged, atten_p)
            root = merged.get(sf2.OVERRIDING_ROOT_KEY, -1)
            if not 0 <= root <= 127:
                root = int(shdr[sample]["root"]) if int(shdr[sample]["root"]) <= 127 else 60
            correction = int(shdr[sample]["correction"])
            tune = 100 * (merged.get(sf2.COARSE_TUNE, 0) + coarse_p)
            tune += merged.get(sf2.FINE_TUNE, 0) + fine_p
            scale = merged.get(sf2.SCALE_TUNING, 100) + scale_p
            lo, hi = key_range(merged.get(sf2.KEY_RANGE, _FULL_RANGE))
            own = _kept(gens)
            own[sf2.INITIAL_ATTENUATION] = base.attenuation
            # fluidsynth plays key k at scale * (k - root + correction / 100) + tune cents above
            # the sample's pitch; prestosynth at 100 * (k - root') + correction'.
            if scale == 100:
                index = self._tuned(base, tune + correction - 100 * root, range(lo, hi + 1))
                if index is not None:
                    main.append(_Zone(_ordered({**own, sf2.SAMPLE_ID: index}), mods))
                continue
            sub_glob = {**_kept(glob), **own}
            sub_glob.pop(sf2.KEY_RANGE, None)
            velocity = sub_glob.pop(sf2.VEL_RANGE, None)
            sub = [_Zone(_ordered(sub_glob), _merged_mods(glob_mods, mods))]
            for k in range(max(lo, keys[0]), min(hi, keys[1]) + 1):
                cents = round(scale * (k - root + correction / 100)) + tune
                index = self._tuned(base, cents - 100 * k, range(k, k + 1))
                if index is not None:
                    zone = {sf2.KEY_RANGE: range_amount(k, k), sf2.SAMPLE_ID: index}
                    if velocity is not None:
                        zone[sf2.VEL_RANGE] = velocity
                    sub.append(_Zone(_ordered(zone), b""))
            if len(sub) > 1:
                subs.append(sub)
        indices = (
            [self._add(name, main)] if any(sf2.SAMPLE_ID in dict(z.gens) for z in main) else []
        )
        return indices + [self._add(name, sub) for sub in subs]

    # -- sample data ---------------------------------------------------------------------------

    def _cache_slots(self) -> list[int]:
        """For each header, which copy of its sample data it plays from (0: the original).
        prestosynth caches a sample's audio, with the header's tuning, loop and attenuation
        baked in, under the low 24 bits of its start and the key; headers that agree there and
        can be played at a common key must not share a position (nor, since its decoded-data
        cache is keyed by the start alone, may two headers with one start end differently)."""
        groups: dict[int, list[int]] = defaultdict(list)
        for i, h in enumerate(self.headers):
            groups[h.start & _CACHE_MASK].append(i)
        slot = [0] * len(self.headers)
        for members in groups.values():
            if len(members) < 2:
                continue
            copies: list[tuple[dict[int, _Header], dict[int, int]]] = []  # key map, start->end
            for i in members:
                h, keys = self.headers[i], self.header_keys[i]
                copy = next(
                    (
                        c
                        for c, (played, ends) in enumerate(copies)
                        if ends.get(h.start, h.end) == h.end
                        and all(_interchangeable(played.get(k, h), h) for k in keys)
                    ),
                    len(copies),
                )
                if copy == len(copies):
                    copies.append(({}, {}))
                copies[copy][0].update(dict.fromkeys(keys, h))
                copies[copy][1][h.start] = h.end
                slot[i] = copy
        return slot

    def samples(self) -> sf2.Table:
        """The sample headers. A header that may not share its start with others in
        prestosynth's cache starts one or a few samples later (the first 0.1 ms or less of
        the sound is skipped) instead of pointing at a copy of the data."""
        slots = self._cache_slots()
        used = {h.start & _CACHE_MASK for h in self.headers}
        placed: dict[tuple[int, int, int], int] = {}  # (start, end, copy) -> new start
        records = []
        for h, copy in zip(self.headers, slots, strict=True):
            start = h.start
            if copy:
                start = placed.get((h.start, h.end, copy), -1)
                if start < 0:
                    start = h.start + copy
                    while start & _CACHE_MASK in used:
                        start += 1
                    looped = h.mode in (1, 3) and h.loop_end > h.loop_start
                    if start - h.start > _MAX_SKIP or start >= (h.loop_start if looped else h.end):
                        self.shared += 1  # cannot move: it shares the cache entry after all
                        start = h.start
                    else:
                        used.add(start & _CACHE_MASK)
                    placed[(h.start, h.end, copy)] = start
            records.append(
                (h.name, start, h.end, h.loop_start, h.loop_end, h.rate, h.root, h.correction)
                + (0, _MONO)
            )
        records.append((b"EOS", 0, 0, 0, 0, 0, 0, 0, 0, 0))
        return np.array(records, dtype=sf2.SHDR)


def _interchangeable(a: _Header, b: _Header) -> bool:
    """Whether a note played with ``b`` may take ``a``'s cached audio: the same sample, loop
    and root key, within ``_CACHE_CENTS`` and ``_CACHE_CB``. Zones that layer one sample with
    slightly different tunings (a chorus-like detune) or levels thus share the data rather than
    duplicate it; the detune is lost, the pitch is right within the tolerance."""
    return (
        a.start == b.start
        and (a.end, a.loop_start, a.loop_end, a.rate, a.root, a.mode)
        == (b.end, b.loop_start, b.loop_end, b.rate, b.root, b.mode)
        and abs(a.correction - b.correction) <= _CACHE_CENTS
        and abs(_db(a.attenuation) - _db(b.attenuation)) <= _CACHE_DB
    )


def _db(attenuation: int) -> float:
    """The level in dB of prestosynth's linear attenuation (per mille)."""
    return 20 * math.log10(max(1e-3, 1 - attenuation / 1000))


def _table(
    heads: list[tuple[np.void | bytes, list[_Zone]]], head_dtype: np.dtype[np.void], name_only: bool
) -> tuple[sf2.Table, sf2.Table, sf2.Table, sf2.Table]:
    """(heads, bags, gens, mods) tables from heads and their zones, with terminal records."""
    bags: list[tuple[int, int]] = []
    gens: list[tuple[int, int]] = []
    mods = bytearray()
    out_heads = []
    for head, zones in heads:
        out_heads.append((head, len(bags)))
        for zone in zones:
            bags.append((len(gens), len(mods) // sf2.MOD.itemsize))
            gens.extend(zone.gens)
            mods += zone.mods
    bags.append((len(gens), len(mods) // sf2.MOD.itemsize))
    gens.append((0, 0))
    mods += bytes(sf2.MOD.itemsize)
    if len(bags) > 0xFFFF or len(gens) > 0xFFFF or len(mods) // sf2.MOD.itemsize > 0xFFFF:
        raise SoundFontError(
            f"the rewritten soundfont has too many zones ({len(bags)}) or generators "
            f"({len(gens)}) for 16-bit indices"
        )
    head_table = np.zeros(len(out_heads) + 1, dtype=head_dtype)
    for i, (head, bag) in enumerate(out_heads):
        if name_only:
            head_table[i]["name"] = head
        else:
            head_table[i] = head
        head_table[i]["bag"] = bag
    head_table[-1]["name"] = b"EOI" if name_only else b"EOP"
    head_table[-1]["bag"] = len(bags) - 1
    return (
        head_table,
        np.array(bags, dtype=sf2.BAG),
        np.array(gens, dtype=sf2.GEN),
        np.frombuffer(bytes(mods), dtype=sf2.MOD).copy(),
    )


def for_symusic(font: SoundFont) -> SoundFont:
    """A copy of ``font`` (SoundFont 2, PCM samples) that symusic 0.5.9 plays at the pitches
    a spec-following synthesizer plays the original at (see the module docstring)."""
    if font.version[0] != 2:
        raise SoundFontError(f"only SoundFont 2 files can be rewritten, not version {font.version}")
    builder = _Builder(font)
    for index in range(len(font.tables["phdr"]) - 1):
        builder.preset(index)
    shdr = builder.samples()
    if builder.left_out:
        log.warning("%d zones play pitches no root key can express; left out", builder.left_out)
    phdr, pbag, pgen, pmod = _table(builder.presets, sf2.PHDR, name_only=False)  # type: ignore[arg-type]
    inst, ibag, igen, imod = _table(builder.instruments, sf2.INST, name_only=True)  # type: ignore[arg-type]
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
