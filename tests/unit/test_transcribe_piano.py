"""transkun, the piano engine: its checkpoint loads without torchaudio, it transcribes a rendered
piano piece better than basic-pitch (notes with offsets), and it writes velocities and pedal."""

from __future__ import annotations

import importlib.util
import io
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadenza.audio.transcribe import TranscribeParams
from tests.support.music import note_scores

needs_engines = pytest.mark.skipif(
    importlib.util.find_spec("transkun") is None or importlib.util.find_spec("basic_pitch") is None,
    reason="transkun and basic-pitch are not installed (make setup installs them)",
)

#: A 5-second piece at 120 bpm (480 ticks per quarter): detached eighths at six velocities
#: (0-2 s), a held chord (2-3 s), a staccato arpeggio under the sustain pedal (3-4.4 s), and
#: a chord after the pedal is lifted (4.5-5 s).
MELODY = [(60, 100), (64, 60), (67, 110), (72, 45), (67, 80), (64, 120), (62, 55), (59, 95)]
ARPEGGIO = [53, 57, 60, 65, 69, 72, 77, 81]
PEDAL = (3000, 4200)  # ticks: 3.125 s down, 4.375 s up


def piano_piece() -> bytes:
    from tests.support.music import midi_bytes

    notes = [(i * 240, 180, p, v) for i, (p, v) in enumerate(MELODY)]
    notes += [(1920, 900, p, 85) for p in (48, 55, 64)]
    notes += [(3072 + i * 120, 60, p, 70 + 5 * i) for i, p in enumerate(ARPEGGIO)]
    notes += [(4320, 480, p, 90) for p in (67, 71, 74)]
    return midi_bytes(notes, qpm=120.0, pedals=[PEDAL])


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The piece, rendered by FluidSynth (symusic ignores the pedal), transcribed by each
    engine (transkun: one 16-second segment, ~10-20 s of CPU on 2 cores)."""
    from cadenza.audio.transcribe import transcribe
    from cadenza.render.audio import render_midi

    midi = piano_piece()
    wav = tmp_path_factory.mktemp("piano") / "piece.wav"
    wav.write_bytes(render_midi(midi, sample_rate=44100, engine="fluidsynth"))
    calls: list[tuple[float, str]] = []
    out: dict[str, Any] = {"reference": midi, "progress": calls}
    (out["basic-pitch"],) = transcribe([wav], TranscribeParams())
    (out["transkun"],) = transcribe(
        [wav], TranscribeParams(engine="transkun"), progress=lambda f, m: calls.append((f, m))
    )
    return out


@needs_engines
def test_transkun_reports_progress_per_segment(both: dict[str, Any]) -> None:
    assert both["progress"] == [
        (0.0, "file 1/1: piano model"),
        (1.0, "file 1/1: transcribed"),
    ]


@needs_engines
def test_transkun_transcribes_piano_better_than_basic_pitch(both: dict[str, Any]) -> None:
    scores = {e: note_scores(both["reference"], both[e]) for e in ("basic-pitch", "transkun")}
    basic_pitch, transkun = scores["basic-pitch"], scores["transkun"]
    assert transkun["onset"] >= 0.9, scores
    assert transkun["onset"] >= basic_pitch["onset"], scores
    assert transkun["offset"] > basic_pitch["offset"], scores


@needs_engines
def test_transkun_keeps_velocities_and_writes_the_sustain_pedal(both: dict[str, Any]) -> None:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(io.BytesIO(both["transkun"]))
    (piano,) = pm.instruments
    sustain = [c for c in piano.control_changes if c.number == 64]
    assert sustain, "no sustain pedal (CC64) in transkun's MIDI"
    # Pressed, then released: the controller alternates between a value and 0. (Where the
    # model puts the pedal on a soundfont's rendering is not checked: a soundfont holds notes
    # under the pedal without the damper resonance of a real piano, which the model hears.)
    assert [c.value > 0 for c in sustain] == [True, False] * (len(sustain) // 2), sustain
    assert all(a.time < b.time for a, b in zip(sustain[::2], sustain[1::2], strict=True))
    # Loud and soft notes of the melody come back loud and soft: velocities follow the source.
    found = {
        round(n.start * 4): n.velocity for n in piano.notes if n.start < 2.0
    }  # eighth-note slots
    pairs = [(v, found[i]) for i, (_p, v) in enumerate(MELODY) if i in found]
    assert len(pairs) >= 6, found
    source, estimated = np.array(pairs).T
    assert np.corrcoef(source, estimated)[0, 1] > 0.6, pairs


@needs_engines
def test_transkun_filters_the_band_and_writes_the_tempo(tmp_path: Path) -> None:
    import pretty_midi
    from transkun.Data import Note

    from cadenza.audio.transcribe.piano import events_to_midi

    events = [Note(0.0, 1.0, 40, 80), Note(0.5, 1.5, 72, 90), Note(0.2, 2.0, -64, 127)]
    params = TranscribeParams(engine="transkun", minimum_frequency=100.0, midi_tempo=90.0)
    pm = pretty_midi.PrettyMIDI(io.BytesIO(events_to_midi(events, params)))
    (piano,) = pm.instruments
    assert [(n.pitch, n.velocity) for n in piano.notes] == [(72, 90)]  # E2 (82 Hz) dropped
    assert [(c.number, c.value) for c in piano.control_changes] == [(64, 127), (64, 0)]
    assert pm.get_tempo_changes()[1][0] == pytest.approx(90.0, rel=1e-4)  # µs per beat


@pytest.mark.skipif(importlib.util.find_spec("transkun") is None, reason="transkun not installed")
def test_mel_filter_bank_equals_the_checkpoints() -> None:
    """Without torchaudio the model is built with our filter bank; it must be the one the
    checkpoint was trained with (the checkpoint's buffer then replaces it anyway)."""
    import json
    from importlib import resources

    import torch

    from cadenza.audio.transcribe.piano import melscale_fbanks

    pretrained = resources.files("transkun") / "pretrained"
    conf = json.loads((pretrained / "2.0.conf").read_text())["Model"]["config"]
    with resources.as_file(pretrained / "2.0.pt") as weights:
        state = torch.load(weights, map_location="cpu", weights_only=True)["state_dict"]
    ours = melscale_fbanks(
        conf["windowSize"] // 2 + 1, conf["f_min"], conf["f_max"], conf["n_mels"], conf["fs"]
    )
    torch.testing.assert_close(ours, state["framewiseFeatureExtractor.freq2mels"], rtol=0, atol=0)


def test_transcribe_params_refuse_basic_pitch_knobs_for_transkun() -> None:
    from pydantic import ValidationError

    TranscribeParams(engine="transkun", minimum_frequency=60.0, midi_tempo=100.0)
    with pytest.raises(ValidationError, match="onset_threshold.*engine 'transkun'"):
        TranscribeParams(engine="transkun", onset_threshold=0.4)
    with pytest.raises(ValidationError, match="engine"):
        TranscribeParams.model_validate({"engine": "onsets-and-frames"})
    assert TranscribeParams().engine == "basic-pitch"


def test_decoding_for_the_piano_model_keeps_channels(tmp_path: Path) -> None:
    """44.1 kHz stereo in: the samples themselves; 22.05 kHz in: soxr HQ per channel."""
    import soundfile as sf
    import soxr

    from cadenza.audio.transcribe import decode_for_model

    rng = np.random.default_rng(3)
    stereo = (0.3 * rng.standard_normal((30_000, 2))).astype(np.float32)
    for rate in (44100, 22050):
        path = tmp_path / f"s{rate}.wav"
        sf.write(path, stereo, rate, subtype="FLOAT")
        got = decode_for_model(path, rate=44100, mono=False)
        if rate == 44100:
            np.testing.assert_array_equal(got, stereo)
        else:
            expected = soxr.resample(stereo, rate, 44100, quality="soxr_hq")
            assert got.shape == (60_000, 2)
            np.testing.assert_allclose(got[: len(expected)], expected, atol=1e-6)
    # Formats libsndfile does not read go through ffmpeg, channels kept the same way.
    mp3 = tmp_path / "s.mp3"
    wav = str(tmp_path / "s22050.wav")
    subprocess.run(["ffmpeg", "-v", "error", "-i", wav, str(mp3)], check=True, timeout=60)
    got = decode_for_model(mp3, rate=44100, mono=False)
    assert got.ndim == 2 and got.shape[1] == 2 and abs(len(got) - 60_000) < 3000, got.shape


@pytest.mark.skipif(importlib.util.find_spec("transkun") is None, reason="transkun not installed")
def test_the_model_loads_without_transkuns_training_dependencies() -> None:
    """transkun is installed --no-deps: loading its model must not need (or import) what it
    declares only for training and its CLI; the deploy test leaves these out of the image."""
    import sys

    from tests.deploy.test_deploy_image_deps import TRANSKUN_UNUSED

    modules = sorted(name.replace("-", "_") for name in TRANSKUN_UNUSED)
    code = (
        "import sys\n"
        f"for m in {modules!r}: sys.modules[m] = None  # importing any of them raises\n"
        "from cadenza.audio.transcribe.piano import PianoModel\n"
        "model = PianoModel('cpu')\n"
        "assert model.model.fs == 44100 and not model.model.training\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
