"""A minimal SoundFont 2 (RIFF ``sfbk``) reader and writer.

Only what Cadenza needs to inspect and rewrite a General MIDI soundfont: the INFO list is kept
as raw sub-chunks, the sample data (``smpl``, optional ``sm24``) as bytes, and the nine
``pdta`` tables as numpy structured arrays laid out exactly as in the file (little-endian,
packed), so that reading and writing an unmodified font gives back the same bytes.

Layout (SoundFont 2.04 specification, section 4)::

    RIFF 'sfbk'
      LIST 'INFO'  ifil, isng, INAM, ... (strings and versions)
      LIST 'sdta'  smpl (16-bit mono PCM of every sample, back to back), [sm24]
      LIST 'pdta'  phdr pbag pmod pgen inst ibag imod igen shdr

Presets (``phdr``) own zones (``pbag``) that carry generators (``pgen``) and modulators
(``pmod``); a preset zone ending in an ``instrument`` generator points at an instrument
(``inst``) whose zones (``ibag``) carry generators (``igen``) ending in ``sampleID``, an index
into the sample headers (``shdr``). Each table ends with a terminal record, so zone *i* of a
table spans ``bag[i]`` up to ``bag[i + 1]``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import numpy.typing as npt

from cadenza.atomic import atomic_path

# --- generator operators (SF2.04 section 8.1.2) ---------------------------------------------
START_ADDRS_OFFSET: Final = 0
END_ADDRS_OFFSET: Final = 1
STARTLOOP_ADDRS_OFFSET: Final = 2
ENDLOOP_ADDRS_OFFSET: Final = 3
START_ADDRS_COARSE_OFFSET: Final = 4
MOD_ENV_TO_PITCH: Final = 7
INITIAL_FILTER_FC: Final = 8
END_ADDRS_COARSE_OFFSET: Final = 12
PAN: Final = 17
DELAY_MOD_LFO: Final = 21
DELAY_VIB_LFO: Final = 23
DELAY_MOD_ENV: Final = 25
ATTACK_MOD_ENV: Final = 26
HOLD_MOD_ENV: Final = 27
DECAY_MOD_ENV: Final = 28
RELEASE_MOD_ENV: Final = 30
DELAY_VOL_ENV: Final = 33
ATTACK_VOL_ENV: Final = 34
HOLD_VOL_ENV: Final = 35
DECAY_VOL_ENV: Final = 36
SUSTAIN_VOL_ENV: Final = 37
RELEASE_VOL_ENV: Final = 38
INSTRUMENT: Final = 41
KEY_RANGE: Final = 43
VEL_RANGE: Final = 44
STARTLOOP_ADDRS_COARSE_OFFSET: Final = 45
KEYNUM: Final = 46
VELOCITY: Final = 47
INITIAL_ATTENUATION: Final = 48
ENDLOOP_ADDRS_COARSE_OFFSET: Final = 50
COARSE_TUNE: Final = 51
FINE_TUNE: Final = 52
SAMPLE_ID: Final = 53
SAMPLE_MODES: Final = 54
SCALE_TUNING: Final = 56
EXCLUSIVE_CLASS: Final = 57
OVERRIDING_ROOT_KEY: Final = 58
END_OPER: Final = 60

#: Generators whose amount is a (low, high) byte pair rather than a signed 16-bit number.
RANGE_GENERATORS: Final = frozenset({KEY_RANGE, VEL_RANGE})

# --- record layouts (SF2.04 section 7) --------------------------------------------------------
PHDR: Final = np.dtype(
    [
        ("name", "S20"),
        ("preset", "<u2"),
        ("bank", "<u2"),
        ("bag", "<u2"),
        ("library", "<u4"),
        ("genre", "<u4"),
        ("morphology", "<u4"),
    ]
)
BAG: Final = np.dtype([("gen", "<u2"), ("mod", "<u2")])
MOD: Final = np.dtype(
    [("src", "<u2"), ("dest", "<u2"), ("amount", "<i2"), ("amount_src", "<u2"), ("trans", "<u2")]
)
GEN: Final = np.dtype([("oper", "<u2"), ("amount", "<i2")])
INST: Final = np.dtype([("name", "S20"), ("bag", "<u2")])
SHDR: Final = np.dtype(
    [
        ("name", "S20"),
        ("start", "<u4"),
        ("end", "<u4"),
        ("loop_start", "<u4"),
        ("loop_end", "<u4"),
        ("rate", "<u4"),
        ("root", "u1"),
        ("correction", "i1"),
        ("link", "<u2"),
        ("type", "<u2"),
    ]
)
PDTA_LAYOUT: Final[tuple[tuple[str, np.dtype[np.void]], ...]] = (
    ("phdr", PHDR),
    ("pbag", BAG),
    ("pmod", MOD),
    ("pgen", GEN),
    ("inst", INST),
    ("ibag", BAG),
    ("imod", MOD),
    ("igen", GEN),
    ("shdr", SHDR),
)
assert [d.itemsize for _, d in PDTA_LAYOUT] == [38, 4, 10, 4, 22, 4, 10, 4, 46]

Table = npt.NDArray[np.void]


class SoundFontError(ValueError):
    """The bytes are not a SoundFont 2 file this module can read."""


@dataclass
class SoundFont:
    """Every chunk of a SoundFont 2 file; see the module docstring for the layout."""

    info: list[tuple[bytes, bytes]]  # INFO sub-chunks in file order: (4-byte id, payload)
    smpl: bytes | memoryview  # 16-bit little-endian mono samples (sf2) or Ogg data (sf3)
    sm24: bytes | memoryview | None = None  # the optional low bytes of 24-bit samples
    tables: dict[str, Table] = field(default_factory=dict)  # the nine pdta tables

    @property
    def version(self) -> tuple[int, int]:
        """``ifil``: (major, minor); major 2 is PCM sf2, 3 the Ogg-compressed sf3."""
        for cid, payload in self.info:
            if cid == b"ifil" and len(payload) >= 4:
                major, minor = struct.unpack("<HH", payload[:4])
                return int(major), int(minor)
        raise SoundFontError("no ifil (version) chunk in INFO")

    def preset_zones(self, preset: int) -> Iterator[tuple[int, dict[int, int]]]:
        """(zone index, {generator: amount}) for every zone of ``phdr[preset]``."""
        yield from _zones(self.tables["phdr"], self.tables["pbag"], self.tables["pgen"], preset)

    def instrument_zones(self, instrument: int) -> Iterator[tuple[int, dict[int, int]]]:
        """(zone index, {generator: amount}) for every zone of ``inst[instrument]``."""
        yield from _zones(self.tables["inst"], self.tables["ibag"], self.tables["igen"], instrument)


def _zones(
    heads: Table, bags: Table, gens: Table, index: int
) -> Iterator[tuple[int, dict[int, int]]]:
    bag_lo, bag_hi = int(heads[index]["bag"]), int(heads[index + 1]["bag"])
    opers, amounts = gens["oper"], gens["amount"]
    for bag in range(bag_lo, bag_hi):
        lo, hi = int(bags[bag]["gen"]), int(bags[bag + 1]["gen"])
        yield bag, {int(o): int(a) for o, a in zip(opers[lo:hi], amounts[lo:hi], strict=True)}


def key_range(amount: int) -> tuple[int, int]:
    """The (low, high) pair of a keyRange/velRange amount as stored (signed 16-bit)."""
    raw = amount & 0xFFFF
    return raw & 0xFF, raw >> 8


def range_amount(low: int, high: int) -> int:
    """The signed 16-bit amount of a (low, high) keyRange/velRange pair."""
    raw = (high << 8) | low
    return raw - 0x10000 if raw >= 0x8000 else raw


# --- reading ----------------------------------------------------------------------------------


def _chunks(data: memoryview, start: int, end: int) -> Iterator[tuple[bytes, memoryview]]:
    """The (id, payload) sub-chunks between ``start`` and ``end`` (each padded to even size)."""
    pos = start
    while pos + 8 <= end:
        cid = bytes(data[pos : pos + 4])
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if pos + 8 + size > end:
            raise SoundFontError(f"chunk {cid!r} at {pos} runs past its parent ({size} bytes)")
        yield cid, data[pos + 8 : pos + 8 + size]
        pos += 8 + size + (size & 1)
    if pos != end and pos + 1 != end:  # tolerate one stray pad byte, as readers usually do
        raise SoundFontError(f"{end - pos} stray bytes at {pos}")


def loads(data: bytes | memoryview) -> SoundFont:
    """Parse a whole SoundFont file held in memory (the sample data is not copied)."""
    view = memoryview(data)
    if len(view) < 12 or bytes(view[:4]) != b"RIFF" or bytes(view[8:12]) != b"sfbk":
        raise SoundFontError("not a RIFF sfbk (SoundFont) file")
    (riff_size,) = struct.unpack_from("<I", view, 4)
    if 8 + riff_size > len(view):
        raise SoundFontError(f"truncated: RIFF says {riff_size + 8} bytes, file has {len(view)}")
    lists: dict[bytes, memoryview] = {}
    for cid, payload in _chunks(view, 12, 8 + riff_size):
        if cid == b"LIST" and len(payload) >= 4:
            lists[bytes(payload[:4])] = payload[4:]
    missing = {b"INFO", b"sdta", b"pdta"} - lists.keys()
    if missing:
        raise SoundFontError(f"missing LIST chunks: {sorted(m.decode() for m in missing)}")
    info = [(cid, bytes(p)) for cid, p in _chunks(lists[b"INFO"], 0, len(lists[b"INFO"]))]
    sdta = dict(_chunks(lists[b"sdta"], 0, len(lists[b"sdta"])))
    if b"smpl" not in sdta:
        raise SoundFontError("no smpl chunk in sdta")
    pdta = dict(_chunks(lists[b"pdta"], 0, len(lists[b"pdta"])))
    tables: dict[str, Table] = {}
    for name, dtype in PDTA_LAYOUT:
        if name.encode() not in pdta:
            raise SoundFontError(f"no {name} chunk in pdta")
        records = pdta[name.encode()]
        if len(records) % dtype.itemsize:
            raise SoundFontError(f"{name} is {len(records)} bytes, not whole records")
        tables[name] = np.frombuffer(records, dtype=dtype).copy()
        if len(tables[name]) < (1 if name in ("pmod", "imod") else 2):
            raise SoundFontError(f"{name} lacks its terminal record")
    sm24 = sdta.get(b"sm24")
    font = SoundFont(info=info, smpl=sdta[b"smpl"], sm24=sm24, tables=tables)
    font.version  # noqa: B018 - raises if ifil is missing
    return font


def read(path: Path) -> SoundFont:
    """Read a SoundFont file (the whole file is held in memory)."""
    return loads(Path(path).read_bytes())


# --- writing ----------------------------------------------------------------------------------


def _chunk(cid: bytes, payload: bytes | memoryview) -> list[bytes | memoryview]:
    pad = b"\0" if len(payload) & 1 else b""
    return [cid + struct.pack("<I", len(payload)), payload, pad]


def _list(kind: bytes, parts: list[bytes | memoryview]) -> list[bytes | memoryview]:
    size = 4 + sum(len(p) for p in parts)
    return [b"LIST" + struct.pack("<I", size) + kind, *parts]


def _parts(font: SoundFont) -> list[bytes | memoryview]:
    info: list[bytes | memoryview] = []
    for cid, payload in font.info:
        info += _chunk(cid, payload)
    sdta = _chunk(b"smpl", font.smpl)
    if font.sm24 is not None:
        sdta += _chunk(b"sm24", font.sm24)
    pdta: list[bytes | memoryview] = []
    for name, dtype in PDTA_LAYOUT:
        table = np.ascontiguousarray(font.tables[name], dtype=dtype)
        pdta += _chunk(name.encode(), table.tobytes())
    body = [b"sfbk", *_list(b"INFO", info), *_list(b"sdta", sdta), *_list(b"pdta", pdta)]
    size = sum(len(p) for p in body)
    if size > 0xFFFFFFFF:
        raise SoundFontError(f"a RIFF file cannot hold {size} bytes")
    return [b"RIFF" + struct.pack("<I", size), *body]


def dump(font: SoundFont, out: BinaryIO) -> int:
    """Write ``font`` to a binary stream; returns the number of bytes written."""
    written = 0
    for part in _parts(font):
        if len(part):
            written += out.write(part)
    return written


def dumps(font: SoundFont) -> bytes:
    """The file's bytes."""
    return b"".join(bytes(p) for p in _parts(font))


def write(font: SoundFont, path: Path) -> None:
    """Write ``font`` to ``path`` atomically (:func:`cadenza.atomic.atomic_path`), readable by
    every user, so a reader never sees a half-written font."""
    with atomic_path(path) as tmp, tmp.open("wb") as out:
        dump(font, out)
