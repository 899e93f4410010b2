"""The SoundFont 2 reader/writer and the rewrite that makes symusic play a soundfont in tune.

symusic 0.5.9 (prestosynth) plays Debian's FluidR3_GM out of tune; see
``cadenza.render.soundfont`` for why. These tests check the rewrite three ways: on small
fonts built here (each fault in isolation, heard through symusic), statically on FluidR3 (the
voices prestosynth would play from the rewritten font against the voices the SoundFont spec
plays from the original, for every preset and key), and by ear against libfluidsynth.
"""

from __future__ import annotations

import io
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from symusic.core import NoteTick, ScoreTick, Synthesizer, TempoTick, TrackTick

from cadenza.render import audio as render_module
from cadenza.render import fluidsynth, sf2, soundfont, soundfont_builder
from cadenza.render import symusic as symusic_engine
from cadenza.render.sf2 import SoundFont, SoundFontError, key_range, range_amount

FLUIDR3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
needs_fluidr3 = pytest.mark.skipif(
    not FLUIDR3.is_file(),
    reason="FluidR3_GM.sf2 not installed (apt-get install fluid-soundfont-gm)",
)
RATE = 44100


# --- small fonts built here ----------------------------------------------------------------


def _tiny_font(
    igens: list[tuple[int, int]],
    pgens: list[tuple[int, int]] = (),  # type: ignore[assignment]
    *,
    root: int = 69,
    freq: float = 440.0,
) -> SoundFont:
    """One preset (bank 0, program 0) → one instrument → one looped 440 Hz sine sample."""
    n = 2 * RATE
    t = np.arange(n) / RATE
    pcm = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    period = RATE / freq
    loop_start, loop_end = n // 2, n // 2 + round(100 * period)  # 100 whole periods
    shdr = np.array(
        [(b"sine", 0, n, loop_start, loop_end, RATE, root, 0, 0, 1), (b"EOS",) + (0,) * 9],
        dtype=sf2.SHDR,
    )
    igen = [*igens, (sf2.SAMPLE_MODES, 1), (sf2.SAMPLE_ID, 0), (0, 0)]
    pgen = [*pgens, (sf2.INSTRUMENT, 0), (0, 0)]
    tables = {
        "phdr": np.array([(b"p", 0, 0, 0, 0, 0, 0), (b"EOP", 0, 0, 1, 0, 0, 0)], dtype=sf2.PHDR),
        "pbag": np.array([(0, 0), (len(pgen) - 1, 0)], dtype=sf2.BAG),
        "pmod": np.zeros(1, dtype=sf2.MOD),
        "pgen": np.array(pgen, dtype=sf2.GEN),
        "inst": np.array([(b"i", 0), (b"EOI", 1)], dtype=sf2.INST),
        "ibag": np.array([(0, 0), (len(igen) - 1, 0)], dtype=sf2.BAG),
        "imod": np.zeros(1, dtype=sf2.MOD),
        "igen": np.array(igen, dtype=sf2.GEN),
        "shdr": shdr,
    }
    info = [(b"ifil", struct.pack("<HH", 2, 1)), (b"INAM", b"tiny\0")]  # odd size: padded
    return SoundFont(info=info, smpl=pcm.tobytes() + bytes(2 * 46), tables=tables)


def _symusic_hz(font: Path, key: int) -> float:
    """The frequency of the strongest partial of one note played by symusic."""
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=60.0))
    track = TrackTick("t", 0, False)
    track.notes.append(NoteTick(0, 240, key, 100))
    score.tracks.append(track)
    mono = np.asarray(Synthesizer(str(font), RATE, 0).render(score, True)).mean(axis=0)
    x = mono[int(0.1 * RATE) : int(0.4 * RATE)]
    n = 1 << 18
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    k = int(np.argmax(spectrum))
    a, b, c = spectrum[k - 1 : k + 2]
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / n


def _cents(found: float, expected: float) -> float:
    return 1200 * math.log2(found / expected)


def test_writer_pads_odd_chunks_and_reads_back(tmp_path: Path) -> None:
    font = _tiny_font([(sf2.OVERRIDING_ROOT_KEY, 57)])
    data = sf2.dumps(font)
    assert data[:4] == b"RIFF" and data[8:12] == b"sfbk"
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert len(data) % 2 == 0
    again = sf2.loads(data)
    assert again.info == font.info and again.version == (2, 1)
    for name, table in font.tables.items():
        assert again.tables[name].tobytes() == table.tobytes(), name
    assert sf2.dumps(again) == data
    sf2.write(font, tmp_path / "tiny.sf2")
    assert (tmp_path / "tiny.sf2").read_bytes() == data
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.sf2"]  # no temporary file left


def test_reader_refuses_broken_files() -> None:
    data = sf2.dumps(_tiny_font([]))
    with pytest.raises(SoundFontError, match="not a RIFF"):
        sf2.loads(b"RIFX" + data[4:])
    with pytest.raises(SoundFontError, match="truncated"):
        sf2.loads(data[:-100])
    pdta = data.index(b"pdta")
    with pytest.raises(SoundFontError, match="no phdr"):
        sf2.loads(data[: pdta + 4] + b"phdX" + data[pdta + 8 :])


def test_ranges_round_trip() -> None:
    assert key_range(range_amount(0, 127)) == (0, 127)
    assert key_range(range_amount(36, 200)) == (36, 200)  # high byte ≥ 128: negative amount
    assert range_amount(36, 200) < 0


@pytest.mark.parametrize(
    ("name", "igens", "pgens", "key", "hz"),
    [
        ("overridingRootKey", [(sf2.OVERRIDING_ROOT_KEY, 57)], [], 69, 880.0),
        ("coarse tune beyond ±1.2 semitones", [(sf2.COARSE_TUNE, -12)], [], 69, 220.0),
        ("preset coarse tune", [], [(sf2.COARSE_TUNE, 7)], 69, 440 * 2 ** (7 / 12)),
        ("scale tuning 50 cents per key", [(sf2.SCALE_TUNING, 50)], [], 81, 440 * 2**0.5),
        # scale 0: every key plays the sample's own pitch, + 24 semitones - 30 + 10 cents
        (
            "all of them",
            [(58, 81), (51, 24), (52, -30), (56, 0)],
            [(52, 10)],
            30,
            440 * 2 ** (2380 / 1200),
        ),
    ],
)
def test_rewrite_fixes_each_fault_symusic_has(
    tmp_path: Path,
    name: str,
    igens: list[tuple[int, int]],
    pgens: list[tuple[int, int]],
    key: int,
    hz: float,
) -> None:
    """Each generator symusic mishandles, alone: the original plays wrong, the rewrite right."""
    original, fixed = tmp_path / "original.sf2", tmp_path / "fixed.sf2"
    font = _tiny_font(igens, pgens)
    sf2.write(font, original)
    sf2.write(soundfont.for_symusic(font), fixed)
    assert abs(_cents(_symusic_hz(original, key), hz)) > 50, "symusic got this right already?"
    assert abs(_cents(_symusic_hz(fixed, key), hz)) < 3


def test_rewrite_keeps_preset_release_from_collapsing(tmp_path: Path) -> None:
    """prestosynth adds the instrument-level default (-12000 timecents) for an envelope time a
    preset leaves unset; the rewrite sets the preset's to 0, so a 1 s release rings on."""
    font = _tiny_font([(sf2.RELEASE_VOL_ENV, 0)])  # 0 timecents: 1 s
    original, fixed = tmp_path / "original.sf2", tmp_path / "fixed.sf2"
    sf2.write(font, original)
    sf2.write(soundfont.for_symusic(font), fixed)

    def seconds(path: Path) -> float:
        score = ScoreTick(480)
        score.tempos.append(TempoTick(0, qpm=60.0))
        track = TrackTick("t", 0, False)
        track.notes.append(NoteTick(0, 240, 69, 100))  # 0.5 s
        score.tracks.append(track)
        return np.asarray(Synthesizer(str(path), RATE, 0).render(score, True)).shape[1] / RATE

    assert seconds(original) < 0.6
    assert seconds(fixed) > 1.4


# --- FluidR3 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fluidr3() -> SoundFont:
    return sf2.read(FLUIDR3)


@pytest.fixture(scope="module")
def rewritten(fluidr3: SoundFont) -> SoundFont:
    return sf2.loads(sf2.dumps(soundfont.for_symusic(fluidr3)))


@needs_fluidr3
def test_fluidr3_round_trips_byte_for_byte(fluidr3: SoundFont) -> None:
    assert fluidr3.version == (2, 1)
    assert len(fluidr3.tables["phdr"]) == 190 and len(fluidr3.tables["shdr"]) == 1419
    assert sf2.dumps(fluidr3) == FLUIDR3.read_bytes()


_zone_cache: dict[tuple[int, str, int], tuple[SoundFont, list[dict[int, int]]]] = {}


def _zones(font: SoundFont, heads: str, index: int, terminal: int) -> list[dict[int, int]]:
    """Zones with their global zone's generators merged in (key/vel ranges included, as
    prestosynth inherits them)."""
    cached = _zone_cache.get((id(font), heads, index))
    if cached is None or cached[0] is not font:
        zones = list(font.preset_zones(index) if heads == "phdr" else font.instrument_zones(index))
        glob = zones[0][1] if zones and terminal not in zones[0][1] else {}
        cached = (font, [{**glob, **gens} for _bag, gens in zones if terminal in gens])
        _zone_cache[(id(font), heads, index)] = cached
    return cached[1]


def _plays(gens: dict[int, int], key: int, velocity: int) -> bool:
    lo, hi = key_range(gens.get(sf2.KEY_RANGE, range_amount(0, 127)))
    vlo, vhi = key_range(gens.get(sf2.VEL_RANGE, range_amount(0, 127)))
    return lo <= key <= hi and vlo <= velocity <= vhi


def _voices(font: SoundFont, preset: int, key: int, velocity: int, *, spec: bool) -> list[tuple]:
    """(sample start, cents above the sample's own pitch, loop, sample rate) of every voice a
    note starts: by the SoundFont spec (as fluidsynth plays it) or as prestosynth reads it."""
    shdr = font.tables["shdr"]
    out = []
    for pz in _zones(font, "phdr", preset, sf2.INSTRUMENT):
        if not _plays(pz, key, velocity):
            continue
        for iz in _zones(font, "inst", pz[sf2.INSTRUMENT], sf2.SAMPLE_ID):
            if not _plays(iz, key, velocity):
                continue
            sh = shdr[iz[sf2.SAMPLE_ID]]
            coarse = iz.get(sf2.COARSE_TUNE, 0) + pz.get(sf2.COARSE_TUNE, 0)
            fine = iz.get(sf2.FINE_TUNE, 0) + pz.get(sf2.FINE_TUNE, 0)
            correction = int(sh["correction"])
            if spec:
                root = iz.get(sf2.OVERRIDING_ROOT_KEY, -1)
                root = root if root >= 0 else int(sh["root"])
                scale = iz.get(sf2.SCALE_TUNING, 100) + pz.get(sf2.SCALE_TUNING, 0)
                cents = scale * (key - root + correction / 100) + 100 * coarse + fine
                start = int(sh["start"]) + iz.get(0, 0) + 32768 * iz.get(4, 0)
            else:  # prestosynth: root from the header, tuning clamped, no scale tuning
                tune = max(-120, min(120, correction + fine + 100 * coarse))
                cents = 100 * (key - int(sh["root"])) + tune
                start = int(sh["start"])
            out.append((start, round(cents), int(sh["rate"])))
    return sorted(out, key=lambda voice: (voice[1], voice[0]))


@needs_fluidr3
def test_rewritten_fluidr3_plays_every_voice_at_the_spec_pitch(
    fluidr3: SoundFont, rewritten: SoundFont
) -> None:
    """Every preset, every key, three velocities: prestosynth's reading of the rewritten font
    starts the same samples (at most a few samples later), at the pitch the spec gives the
    original within 1 cent. The original, read by prestosynth, fails this badly."""
    assert [bytes(p["name"]) for p in rewritten.tables["phdr"]] == [
        bytes(p["name"]) for p in fluidr3.tables["phdr"]
    ]
    checked = wrong_before = 0
    for preset in range(len(fluidr3.tables["phdr"]) - 1):
        for key in range(128):
            for velocity in (30, 80, 127):
                want = _voices(fluidr3, preset, key, velocity, spec=True)
                got = _voices(rewritten, preset, key, velocity, spec=False)
                assert len(got) == len(want), (preset, key, velocity)
                for (start_w, cents_w, rate_w), (start_g, cents_g, rate_g) in zip(
                    want, got, strict=True
                ):
                    assert 0 <= start_g - start_w <= soundfont_builder._MAX_SKIP, (preset, key)
                    assert abs(cents_g - cents_w) <= 1, (preset, key, velocity, want, got)
                    assert rate_g == rate_w
                checked += len(want)
                before = _voices(fluidr3, preset, key, velocity, spec=False)
                wrong_before += sum(abs(b[1] - w[1]) > 1 for b, w in zip(before, want, strict=True))
    assert checked > 100_000
    assert wrong_before > checked // 2  # what the rewrite is for


@needs_fluidr3
def test_rewritten_fluidr3_never_shares_a_symusic_cache_entry(rewritten: SoundFont) -> None:
    """prestosynth caches audio by (low 24 bits of the sample start, key) with the tuning,
    loop and level baked in: no two different headers may meet there."""
    shdr = rewritten.tables["shdr"]
    seen: dict[tuple[int, int], tuple] = {}
    for inst in range(len(rewritten.tables["inst"]) - 1):
        for iz in _zones(rewritten, "inst", inst, sf2.SAMPLE_ID):
            sh = shdr[iz[sf2.SAMPLE_ID]]
            what = (
                int(sh["start"]),
                int(sh["end"]),
                int(sh["loop_start"]),
                int(sh["loop_end"]),
                int(sh["root"]),
                int(sh["correction"]),
                iz.get(sf2.SAMPLE_MODES, 0),
                iz.get(sf2.INITIAL_ATTENUATION, 0),
            )
            lo, hi = key_range(iz.get(sf2.KEY_RANGE, range_amount(0, 127)))
            for key in range(lo, hi + 1):
                assert seen.setdefault((what[0] & 0xFFFFFF, key), what) == what, (inst, key)


# --- by ear, against libfluidsynth -----------------------------------------------------------

N_FFT = 1 << 16
_GRID = 10 * 2 ** (np.arange(2400, 8400, 2) / 1200)  # 40 Hz .. 8 kHz, every 2 cents


def _log_spectrum(x: np.ndarray) -> np.ndarray:
    magnitude = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(len(x)), N_FFT))
    v = np.interp(_GRID, np.fft.rfftfreq(N_FFT, 1 / RATE), magnitude)
    v = np.log1p(v / (v.max() + 1e-12) * 1000)
    return v - v.mean()


def _offset_cents(a: np.ndarray, b: np.ndarray, span: int) -> float:
    """How many cents ``a`` sounds above ``b``: the shift of the log-frequency spectrum that
    best lines them up, searched within ±span cents."""
    sa, sb = _log_spectrum(a), _log_spectrum(b)
    n = len(sa)
    lags = np.arange(-span // 2, span // 2 + 1)
    score = np.array(
        [np.dot(sa[max(0, g) : n + min(0, g)], sb[max(0, -g) : n - max(0, g)]) for g in lags]
    )
    k = int(np.argmax(score))
    shift = 0.0
    if 0 < k < len(score) - 1:
        y0, y1, y2 = score[k - 1 : k + 2]
        shift = 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    return float(2 * (lags[k] + shift))


@needs_fluidr3
@pytest.mark.skipif(fluidsynth.libfluidsynth() is None, reason="libfluidsynth not installed")
@pytest.mark.parametrize(
    ("program", "drum", "keys"),
    [
        (0, False, (48, 60, 72)),  # piano: C4 came out as D4
        (24, False, (48, 60, 72)),  # nylon guitar: was 15 semitones low at C3
        (40, False, (48, 60, 72)),  # violin
        (56, False, (48, 60, 72)),  # trumpet: coarse tune -4 and -12 semitones
        (73, False, (48, 60, 72)),  # flute: root key 72 in the header, 61 in the zone
        (0, True, (36, 38, 42)),  # drum kit: kick, snare, closed hi-hat
    ],
)
def test_symusic_with_the_rewritten_fluidr3_sounds_like_fluidsynth(
    program: int, drum: bool, keys: tuple[int, ...]
) -> None:
    """One note per second through symusic (rewritten font) and libfluidsynth (original):
    their spectra line up within 3 cents, also when searched over ±2 octaves (no octave
    error), for instruments that were off by up to two octaves before."""
    font = symusic_engine.symusic_soundfont(FLUIDR3)
    assert font is not None and font != FLUIDR3
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=60.0))
    track = TrackTick("t", program, drum)
    for i, key in enumerate(keys):
        track.notes.append(NoteTick(i * 480, 240, key, 100))
    score.tracks.append(track)
    ours = symusic_engine.render_symusic(score, font, RATE).mean(axis=0)
    theirs = fluidsynth.render_libfluidsynth(score.dumps_midi(), FLUIDR3, RATE, len(keys))
    theirs = theirs.mean(axis=0)
    for i, key in enumerate(keys):
        a = ours[int((i + 0.05) * RATE) : int((i + 0.4) * RATE)].astype(np.float64)
        b = theirs[int((i + 0.05) * RATE) : int((i + 0.4) * RATE)].astype(np.float64)
        assert abs(_offset_cents(a, b, 200)) <= 3, (program, key)
        assert abs(_offset_cents(a, b, 4800)) <= 3, (program, key)


# --- the cached copy -----------------------------------------------------------------------


@needs_fluidr3
def test_corrected_soundfont_is_built_once_and_named_by_the_source_hash(tmp_path: Path) -> None:
    first = soundfont.corrected_soundfont(FLUIDR3, tmp_path)
    stat = first.stat()
    again = soundfont.corrected_soundfont(FLUIDR3, tmp_path)
    assert again == first and again.stat().st_mtime_ns == stat.st_mtime_ns  # not rebuilt
    assert first.parent == tmp_path and first.name.startswith("FluidR3_GM.")
    assert f"symusic{soundfont.FORMAT_VERSION}" in first.name
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [first.name]
    font = sf2.read(first)
    assert font.tables["shdr"]["root"].max() > 60  # root keys now live in the headers
    assert not np.isin(font.tables["igen"]["oper"], [51, 52, 56, 58]).any()
    assert len(font.smpl) == len(sf2.read(FLUIDR3).smpl)  # no sample data was copied


def test_a_soundfont_that_cannot_be_rewritten_is_refused(tmp_path: Path) -> None:
    font = _tiny_font([])
    font.info[0] = (b"ifil", struct.pack("<HH", 3, 1))  # sf3: Ogg samples
    with pytest.raises(SoundFontError, match="only SoundFont 2"):
        soundfont.for_symusic(font)


def test_render_midi_plays_a_rewritten_copy_of_a_font_symusic_gets_wrong(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render_midi with a soundfont symusic plays wrongly takes the rewritten copy."""
    monkeypatch.setenv("CADENZA_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.sf2"
    # A sample recorded at A3 and marked so by the zone only: by the spec every key plays at
    # its pitch, symusic plays it all an octave low and the pitch check notices.
    sf2.write(_tiny_font([(sf2.OVERRIDING_ROOT_KEY, 57)], freq=220.0), path)
    assert not symusic_engine.symusic_in_tune(str(path.resolve()))
    assert render_module.choose_engine("auto", path) == "symusic"
    assert symusic_engine.symusic_soundfont(path) != path
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=60.0))
    track = TrackTick("t", 0, False)
    track.notes.append(NoteTick(0, 480, 69, 100))
    score.tracks.append(track)
    data, rate = sf.read(io.BytesIO(render_module.render_midi(score.dumps_midi(), soundfont=path)))
    mono = data.mean(axis=1)[int(0.1 * rate) : int(0.5 * rate)]
    spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono)), 1 << 17))
    assert abs(_cents(np.argmax(spectrum) * rate / (1 << 17), 440.0)) < 5
