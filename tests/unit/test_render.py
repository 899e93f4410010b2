"""MIDI rendering (soundfont synthesis), piano-roll pictures and loss-curve pictures."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from symusic.core import NoteTick, ScoreTick, TempoTick, TimeSignatureTick, TrackTick

from cadenza.render import audio as render_module
from cadenza.render import symusic as symusic_engine
from cadenza.render.audio import SoundfontMissing, default_soundfont, render_midi
from cadenza.render.pianoroll import pianoroll_png, pitch_name, program_name
from cadenza.render.plots import loss_curve_png
from tests.support.music import midi_bytes


def _midi(
    notes: Sequence[tuple[float, float, int, int]],
    *,
    program: int = 0,
    qpm: float = 120.0,
    tracks: int = 1,
) -> bytes:
    """A MIDI file from (start beat, length in beats, pitch, velocity), copied onto ``tracks``
    tracks with consecutive programs."""
    ticks = [(round(s * 480), round(n * 480), p, v) for s, n, p, v in notes]
    return midi_bytes(ticks, program=program, qpm=qpm, tracks=tracks)


SCALE = _midi([(i, 0.9, p, 90) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])])
SCALE_END_S = 3.95  # last note: beat 7 (3.5 s) + 0.9 beats at 120 bpm


def _read(wav: bytes) -> tuple[np.ndarray, int]:
    data, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=True)
    return data, rate


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    n = 1 << 17
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n))
    return float(np.argmax(spectrum) * rate / n)


# --- soundfont --------------------------------------------------------------------------------


def test_default_soundfont_is_the_debian_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CADENZA_SOUNDFONT", raising=False)
    assert default_soundfont() == Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


def test_soundfont_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    font = tmp_path / "mine.sf2"
    font.write_bytes(b"RIFF")
    monkeypatch.setenv("CADENZA_SOUNDFONT", str(font))
    assert default_soundfont() == font
    monkeypatch.setenv("CADENZA_SOUNDFONT", str(tmp_path / "missing.sf2"))
    with pytest.raises(SoundfontMissing, match="CADENZA_SOUNDFONT"):
        default_soundfont()


def test_missing_default_soundfont_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("CADENZA_SOUNDFONT", raising=False)
    monkeypatch.setattr(render_module, "DEFAULT_SOUNDFONT", tmp_path / "none.sf2")
    with pytest.raises(SoundfontMissing, match="apt-get install fluid-soundfont-gm"):
        default_soundfont()


# --- rendering --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scale_wav() -> bytes:
    return render_midi(SCALE)


def test_render_is_audible_unclipped_and_as_long_as_the_music(scale_wav: bytes) -> None:
    data, rate = _read(scale_wav)
    assert rate == 44100 and data.shape[1] == 2
    assert sf.info(io.BytesIO(scale_wav)).subtype == "PCM_16"
    duration = len(data) / rate
    assert SCALE_END_S <= duration <= SCALE_END_S + 3.0  # plus the release, trimmed at -60 dB
    peak = float(np.max(np.abs(data)))
    assert peak == pytest.approx(10 ** (-1 / 20), abs=0.01)  # normalised to -1 dBFS
    assert float(np.sqrt(np.mean(data**2))) > 0.02
    # Every beat sounds: no silent gap where a note should be.
    for beat in range(8):
        chunk = data[int((beat * 0.5 + 0.1) * rate) : int((beat * 0.5 + 0.4) * rate)]
        assert np.sqrt(np.mean(chunk**2)) > 0.01, beat


def test_render_plays_in_tune(scale_wav: bytes) -> None:
    """The default engine must play the written pitches (symusic 0.5.9 with FluidR3 does not)."""
    data, rate = _read(scale_wav)
    mono = data.mean(axis=1)
    for beat, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 72]):
        found = _dominant_hz(
            mono[int((beat * 0.5 + 0.05) * rate) : int((beat * 0.5 + 0.4) * rate)], rate
        )
        expected = 440 * 2 ** ((pitch - 69) / 12)
        assert abs(1200 * math.log2(found / expected)) < 35, (pitch, found)


def test_symusic_plays_fluidr3_out_of_tune_and_its_rewritten_copy_in_tune() -> None:
    original = default_soundfont()
    assert not symusic_engine.symusic_in_tune(str(original))
    copy = symusic_engine.symusic_soundfont(original)
    assert copy is not None and copy != original and copy.suffix == ".sf2"
    assert symusic_engine.symusic_in_tune(str(copy))


MUSESCORE = Path("/usr/share/sounds/sf3/MuseScore_General.sf3")


@pytest.mark.skipif(
    not MUSESCORE.is_file(), reason="musescore-general-soundfont-small not installed"
)
def test_auto_engine_uses_symusic_where_it_plays_in_tune() -> None:
    """symusic plays MuseScore General correctly, so "auto" takes the fast in-process path."""
    assert symusic_engine.symusic_in_tune(str(MUSESCORE.resolve()))
    assert render_module.choose_engine("auto", MUSESCORE) == "symusic"
    data, rate = _read(render_midi(SCALE, soundfont=MUSESCORE))
    mono = data.mean(axis=1)
    found = _dominant_hz(mono[int(2.05 * rate) : int(2.4 * rate)], rate)  # beat 4: G4
    assert abs(1200 * math.log2(found / 392.0)) < 35


def test_auto_engine_uses_symusic_for_fluidr3() -> None:
    assert render_module.choose_engine("auto", default_soundfont()) == "symusic"


def test_auto_engine_falls_back_to_fluidsynth_when_no_copy_can_be_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    monkeypatch.setenv("CADENZA_CACHE_DIR", str(blocker / "cache"))  # cannot be a folder
    symusic_engine._symusic_soundfont.cache_clear()
    try:
        assert symusic_engine.symusic_soundfont(default_soundfont()) is None
        assert render_module.choose_engine("auto", default_soundfont()) == "fluidsynth"
    finally:
        symusic_engine._symusic_soundfont.cache_clear()


@pytest.mark.parametrize("engine", ["auto", "fluidsynth"])
def test_velocity_sets_loudness_as_fluidsynth_does(engine: str) -> None:
    """symusic ignores velocity; the renderer makes up for it (-11.9 dB at 64, as fluidsynth)."""
    velocities = [127, 100, 64, 32]
    data, rate = _read(
        render_midi(_midi([(2 * i, 1, 60, v) for i, v in enumerate(velocities)]), engine=engine)  # type: ignore[arg-type]
    )
    mono = data.mean(axis=1)
    level = [
        20
        * math.log10(
            float(np.sqrt(np.mean(mono[int((i + 0.05) * rate) : int((i + 0.45) * rate)] ** 2)))
        )
        for i in range(len(velocities))
    ]
    for v, db in zip(velocities, level, strict=True):
        assert db - level[0] == pytest.approx(40 * math.log10(v / 127), abs=1.5), v


def test_in_process_fluidsynth_is_deterministic_and_matches_the_command() -> None:
    """A fresh synth per render: nothing (reverb tail, chorus phase) leaks between renders."""
    first = render_midi(SCALE, engine="fluidsynth")
    render_midi(_midi([(0, 8, 48, 127)], program=48))  # something loud in between
    assert render_midi(SCALE, engine="fluidsynth") == first
    lib, cli = _read(first)[0], _read(render_midi(SCALE, engine="fluidsynth-cli"))[0]
    assert abs(len(lib) - len(cli)) <= 4410
    n = min(len(lib), len(cli))
    assert np.corrcoef(lib[:n, 0], cli[:n, 0])[0, 1] > 0.95


@pytest.mark.parametrize("engine", ["fluidsynth", "fluidsynth-cli", "symusic"])
def test_every_engine_renders(engine: str) -> None:
    data, rate = _read(render_midi(SCALE, engine=engine, sample_rate=22050))  # type: ignore[arg-type]
    assert rate == 22050
    assert SCALE_END_S <= len(data) / rate <= SCALE_END_S + 3.0
    assert 0.05 < float(np.max(np.abs(data))) <= 0.9


def test_symusic_balances_instruments_and_velocities_as_fluidsynth_does() -> None:
    """Piano loud, violin loud, piano soft, snare soft, one a second, on three tracks: each note's
    level relative to the first agrees within 2 dB between the two engines (the rewritten
    soundfont carries fluidsynth's attenuation; velocity groups carry its velocity curve)."""
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=60.0))
    notes = {(0, False): [(0, 60, 127), (960, 60, 64)], (40, False): [(480, 67, 127)]}
    notes[(0, True)] = [(1440, 38, 64)]
    for (program, drum), track_notes in notes.items():
        track = TrackTick(f"p{program}", program, drum)
        for start, pitch, velocity in track_notes:
            track.notes.append(NoteTick(start, 240, pitch, velocity))
        score.tracks.append(track)
    levels = {}
    for engine in ("symusic", "fluidsynth"):
        data, rate = _read(render_midi(score.dumps_midi(), engine=engine))  # type: ignore[arg-type]
        mono = data.mean(axis=1)
        levels[engine] = np.array(
            [
                20
                * math.log10(
                    float(
                        np.sqrt(np.mean(mono[int((i + 0.05) * rate) : int((i + 0.45) * rate)] ** 2))
                    )
                )
                for i in range(4)
            ]
        )
    ours, theirs = levels["symusic"], levels["fluidsynth"]
    assert np.abs((ours - ours[0]) - (theirs - theirs[0])).max() < 2.0, (ours, theirs)


def test_dense_loud_music_does_not_clip() -> None:
    cluster = [(b, 2.0, p, 127) for b in range(0, 8, 2) for p in range(36, 96, 2)]
    data, _ = _read(render_midi(_midi(cluster, program=48, tracks=4)))
    assert float(np.max(np.abs(data))) <= 0.9
    assert np.count_nonzero(np.abs(data) >= 0.999) == 0


def test_render_mp3(tmp_path: Path, scale_wav: bytes) -> None:
    from cadenza.audio.probe import probe_audio

    mp3 = render_midi(SCALE, fmt="mp3")
    path = tmp_path / "scale.mp3"
    path.write_bytes(mp3)
    info = probe_audio(path)
    assert (info.format, info.codec, info.sample_rate, info.channels) == ("mp3", "mp3", 44100, 2)
    wav_seconds = len(_read(scale_wav)[0]) / 44100
    assert info.duration_s == pytest.approx(wav_seconds, abs=0.1)


def test_render_of_an_empty_score_is_short_silence() -> None:
    data, rate = _read(render_midi(_midi([])))
    assert len(data) == rate // 2 and not np.any(data)


def test_render_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="render limit"):
        render_midi(_midi([(0, 4, 60, 80)], qpm=10.0), max_seconds=10)
    with pytest.raises(ValueError, match="fmt"):
        render_midi(SCALE, fmt="ogg")  # type: ignore[arg-type]
    with pytest.raises(SoundfontMissing):
        render_midi(SCALE, soundfont=Path("/nonexistent.sf2"))
    with pytest.raises(ValueError, match="not a readable MIDI"):
        render_midi(b"RIFF not a midi file at all")
    with pytest.raises(ValueError, match="engine"):
        render_midi(SCALE, engine="timidity")  # type: ignore[arg-type]


# --- pictures ---------------------------------------------------------------------------------


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def _pixels(png: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: float = 0.06) -> bool:
    target = np.array(rgb) / 255
    return bool(np.any(np.all(np.abs(pixels[..., :3] - target) < tolerance, axis=-1)))


def test_pianoroll_is_a_png_of_the_stated_size() -> None:
    png = pianoroll_png(SCALE)
    assert _png_size(png) == (1600, 800)
    assert _png_size(pianoroll_png(SCALE, width_px=900, height_px=500, title="scale")) == (900, 500)


def test_pianoroll_draws_each_track_in_its_own_colour() -> None:
    score = ScoreTick(480)
    score.tempos.append(TempoTick(0, qpm=90.0))
    score.time_signatures.append(TimeSignatureTick(0, 3, 4))
    for k, (program, low) in enumerate([(0, 60), (32, 36)]):
        track = TrackTick(f"part {k}", program, False)
        for i in range(24):
            track.notes.append(NoteTick(i * 480, 440, low + i % 12, 100))
        score.tracks.append(track)
    pixels = _pixels(pianoroll_png(score.dumps_midi()))
    assert _has_colour(pixels, (31, 119, 180))  # tab10 blue: first track
    assert _has_colour(pixels, (255, 127, 14))  # tab10 orange: second track
    assert not _has_colour(pixels, (44, 160, 44))  # no third track, no green


def test_pianoroll_of_an_empty_file() -> None:
    assert _png_size(pianoroll_png(_midi([]), width_px=640)) == (640, 320)


def test_pianoroll_refuses_absurd_sizes_and_non_midi() -> None:
    with pytest.raises(ValueError, match="picture size"):
        pianoroll_png(SCALE, width_px=50)
    with pytest.raises(ValueError, match="not a readable MIDI"):
        pianoroll_png(b"\x89PNG\r\n")


def test_pitch_and_program_names() -> None:
    assert [pitch_name(p) for p in (21, 60, 61, 108)] == ["A0", "C4", "C♯4", "C8"]
    assert program_name(0) == "Acoustic Grand Piano"
    assert program_name(40) == "Violin"
    assert program_name(127) == "Gunshot"
    assert program_name(5, is_drum=True) == "Drum kit"


def _history(steps: int = 300) -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    records: list[dict[str, object]] = []
    for step in range(0, steps * 10, 10):
        loss = 5 * math.exp(-step / 500) + 1.2 + 0.1 * rng.standard_normal()
        records.append({"step": step, "split": "train", "loss": loss})
        if step % 250 == 0:
            records.append({"step": step, "split": "val", "loss": loss + 0.2})
    return records


def test_loss_curve_png_has_the_stated_size_and_both_curves() -> None:
    png = loss_curve_png(_history())
    assert _png_size(png) == (1200, 600)
    pixels = _pixels(png)
    assert _has_colour(pixels, (31, 119, 180))  # train
    assert _has_colour(pixels, (214, 39, 40))  # val
    assert _png_size(loss_curve_png(_history(), log_y=True, width_px=800, height_px=400)) == (
        800,
        400,
    )


def test_loss_curve_handles_empty_and_non_finite_history() -> None:
    assert _png_size(loss_curve_png([])) == (1200, 600)
    records = _history(5) + [{"step": 60, "split": "train", "loss": float("nan")}]
    assert _png_size(loss_curve_png(records)) == (1200, 600)


def test_loss_curve_refuses_bad_records() -> None:
    with pytest.raises(ValueError, match="no 'loss'"):
        loss_curve_png([{"step": 1, "split": "train"}])
    with pytest.raises(ValueError, match="non-numeric"):
        loss_curve_png([{"step": "one", "split": "train", "loss": 1.0}])
    with pytest.raises(ValueError, match="positive"):
        loss_curve_png([{"step": 1, "split": "train", "loss": -1.0}], log_y=True)
