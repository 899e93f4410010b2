"""The tables of a soundfont rewritten for symusic's synthesizer (prestosynth).

:class:`Builder` walks the presets of a SoundFont 2 file and produces presets, instruments and
sample headers in the subset prestosynth reads correctly; :func:`zone_tables` packs them into
the format's ``*hdr``/``*bag``/``*gen``/``*mod`` tables. Why each rewrite is needed, and what it
does, is listed in :mod:`cadenza.render.soundfont`, which puts the pieces together.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Final

import numpy as np

from cadenza.render import sf2
from cadenza.render.sf2 import SoundFont, SoundFontError, key_range, range_amount

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


class Builder:
    """Builds the tables of :func:`cadenza.render.soundfont.for_symusic`, one preset at a time."""

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
    and root key, within ``_CACHE_CENTS`` and ``_CACHE_DB``. Zones that layer one sample with
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


def zone_tables(
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
