"""Audio probing, conversion, cropping and transcription, on audio these tests make themselves.

Tones are synthesised with numpy and encoded with ffmpeg; the transcription test renders a known
MIDI (a C-major scale and four chords) with the FluidR3 soundfont and checks the notes that come
back against it with mir_eval.
"""

from __future__ import annotations

import importlib.util
import io
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from cadenza.audio.convert import (
    convert,
    crop_interval,
    crop_positions,
    wav_info,
)
from cadenza.audio.positions import parse_positions
from cadenza.audio.probe import (
    AUDIO_KINDS,
    AudioLimits,
    AudioRejected,
    probe_audio,
    sniff_audio,
)

RATE = 16000


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def _tone(path: Path, seconds: float, *, rate: int = 44100, stereo: bool = False) -> Path:
    """A 440 Hz tone (660 Hz on the right channel when stereo) as 16-bit WAV."""
    t = np.arange(int(round(seconds * rate))) / rate
    left = 0.4 * np.sin(2 * np.pi * 440 * t)
    data = np.column_stack([left, 0.4 * np.sin(2 * np.pi * 660 * t)]) if stereo else left
    sf.write(str(path), data, rate, subtype="PCM_16")
    return path


def _ramp(path: Path, frames: int, *, rate: int = RATE) -> Path:
    """A mono WAV whose sample i holds i mod 30000: any cut can be checked to the sample."""
    sf.write(str(path), (np.arange(frames) % 30000).astype(np.int16), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def encoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two seconds of stereo tone in every accepted kind."""
    d = tmp_path_factory.mktemp("encoded")
    wav = _tone(d / "tone.wav", 2.0, stereo=True)
    out = {"wav": wav}
    for name, args in {
        "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
        "flac": ["-c:a", "flac"],
        "ogg": ["-c:a", "libvorbis"],
        "opus": ["-c:a", "libopus", "-f", "ogg"],
        "m4a": ["-c:a", "aac", "-b:a", "128k"],
        "aac": ["-c:a", "aac", "-b:a", "128k", "-f", "adts"],
    }.items():
        path = d / f"tone.{name}"
        _ffmpeg("-i", str(wav), *args, str(path))
        out[name] = path
    return out


# --- sniffing ---------------------------------------------------------------------------------

SNIFFED = {"wav": "wav", "mp3": "mp3", "flac": "flac", "ogg": "ogg", "opus": "ogg"}
SNIFFED |= {"m4a": "m4a", "aac": "aac"}


@pytest.mark.parametrize("name", sorted(SNIFFED))
def test_sniff_recognises_every_kind(encoded: dict[str, Path], name: str) -> None:
    kind = sniff_audio(encoded[name].read_bytes()[:4096])
    assert kind == SNIFFED[name]
    assert kind in AUDIO_KINDS


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"hello, this is not audio\n" * 20,
        b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0",  # a MIDI file
        b"\x89PNG\r\n\x1a\n" + bytes(100),
        b"RIFF\x00\x10\x00\x00AVI LIST",  # RIFF, but a video
        b"OggS\x00\x02" + bytes(20) + b"\x01\x2a" + b"\x80theora" + bytes(40),  # Ogg video
        b"\xff\xfb\xff\xff" + bytes(100),  # frame sync with an invalid bitrate index
        bytes(range(256)) * 4,
    ],
)
def test_sniff_rejects_non_audio(head: bytes) -> None:
    assert sniff_audio(head) is None


def test_sniff_needs_a_second_frame_when_it_can_see_one() -> None:
    frame = b"\xff\xfb\x90\x64" + bytes(413)  # MPEG-1 Layer III, 128 kbit/s, 44.1 kHz: 417 B
    assert sniff_audio(frame + frame) == "mp3"
    assert sniff_audio(frame + b"garbage!" * 10) is None


# --- probing ----------------------------------------------------------------------------------

EXPECTED_CODEC = {"wav": "pcm_s16le", "mp3": "mp3", "flac": "flac", "ogg": "vorbis"}
EXPECTED_CODEC |= {"opus": "opus", "m4a": "aac", "aac": "aac"}


@pytest.mark.parametrize("name", sorted(EXPECTED_CODEC))
def test_probe_describes_every_kind(encoded: dict[str, Path], name: str) -> None:
    info = probe_audio(encoded[name])
    assert info.format == SNIFFED[name]
    assert info.codec == EXPECTED_CODEC[name]
    assert info.channels == 2
    assert info.sample_rate == (48000 if name == "opus" else 44100)
    assert info.duration_s == pytest.approx(2.0, abs=0.06)


def _rejected(path: Path, limits: AudioLimits | None = None) -> AudioRejected:
    with pytest.raises(AudioRejected) as caught:
        probe_audio(path, limits or AudioLimits())
    message = str(caught.value)
    assert str(path.parent) not in message, "rejections must not leak server paths"
    return caught.value


def test_text_file_named_wav_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "song.wav"
    path.write_text("definitely a song\n" * 50)
    error = _rejected(path)
    assert error.code == "not_audio"
    assert "export" in str(error)


def test_empty_file_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    assert _rejected(path).code == "not_audio"


def test_truncated_mp3_is_corrupt(tmp_path: Path) -> None:
    full = tmp_path / "full.mp3"
    _ffmpeg(
        "-i",
        str(_tone(tmp_path / "ten.wav", 10.0)),
        "-c:a",
        "libmp3lame",
        "-b:a",
        "128k",
        str(full),
    )
    cut = tmp_path / "cut.mp3"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 4 // 10])
    error = _rejected(cut)
    assert error.code == "corrupt"
    assert "cut off" in str(error) and "10.0 s" in str(error)


def test_mp3_cut_inside_its_header_is_corrupt(tmp_path: Path, encoded: dict[str, Path]) -> None:
    cut = tmp_path / "stub.mp3"
    cut.write_bytes(encoded["mp3"].read_bytes()[:200])
    assert _rejected(cut).code == "corrupt"


def test_m4a_without_its_index_is_corrupt(tmp_path: Path, encoded: dict[str, Path]) -> None:
    cut = tmp_path / "cut.m4a"
    data = encoded["m4a"].read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # ffmpeg writes the moov atom last
    assert _rejected(cut).code == "corrupt"


def _wav_chunks(data: bytes) -> dict[bytes, int]:
    """Offset of each chunk header in a RIFF file."""
    found, pos = {}, 12
    while pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        found[chunk] = pos
        pos += 8 + size + (size & 1)
    return found


def test_one_second_wav_claiming_hours_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_tone(tmp_path / "one.wav", 1.0, rate=RATE).read_bytes())
    at = _wav_chunks(bytes(data))[b"data"]
    data[at + 4 : at + 8] = struct.pack("<I", 3 * 3600 * RATE * 2)  # 3 h of 16-bit mono
    forged = tmp_path / "forged.wav"
    forged.write_bytes(bytes(data))
    error = _rejected(forged)
    assert error.code == "corrupt"
    assert "3 h 00 min" in str(error) and "1.0 s" in str(error)


def test_one_second_flac_claiming_hours_is_corrupt(tmp_path: Path) -> None:
    flac = tmp_path / "one.flac"
    _ffmpeg("-i", str(_tone(tmp_path / "one.wav", 1.0)), str(flac))
    data = bytearray(flac.read_bytes())
    # STREAMINFO starts at byte 8; its total-samples field is the low 36 bits of bytes 18..25.
    bits = int.from_bytes(data[18:26], "big")
    bits = (bits & ~((1 << 36) - 1)) | (3 * 3600 * 44100)
    data[18:26] = bits.to_bytes(8, "big")
    forged = tmp_path / "forged.flac"
    forged.write_bytes(bytes(data))
    error = _rejected(forged)
    assert error.code == "corrupt"
    assert "3 h 00 min" in str(error)


@pytest.mark.parametrize(
    ("field", "offset", "value"),
    [
        ("channels", 10, struct.pack("<H", 60000)),
        ("channels", 10, struct.pack("<H", 0)),
        ("sample rate", 12, struct.pack("<I", 0xFFFFFFF0)),
        ("byte rate", 16, struct.pack("<I", 7)),
        ("bits", 22, struct.pack("<H", 13)),
    ],
)
def test_wav_with_absurd_header_is_corrupt(
    tmp_path: Path, field: str, offset: int, value: bytes
) -> None:
    data = bytearray(_tone(tmp_path / "ok.wav", 1.0, rate=RATE).read_bytes())
    at = _wav_chunks(bytes(data))[b"fmt "]
    data[at + offset : at + offset + len(value)] = value  # offset from the chunk's header
    forged = tmp_path / f"absurd-{field}.wav"
    forged.write_bytes(bytes(data))
    error = _rejected(forged)
    assert error.code == "corrupt", field
    assert "WAV header" in str(error)


def test_limits_reject_long_large_and_slow(encoded: dict[str, Path]) -> None:
    path = encoded["flac"]
    assert _rejected(path, AudioLimits(max_duration_s=1.5)).code == "too_long"
    assert _rejected(path, AudioLimits(max_bytes=1000)).code == "too_large"
    # 2 s of 44.1 kHz stereo float32 is 706 kB decoded.
    error = _rejected(path, AudioLimits(max_decoded_bytes=500_000))
    assert error.code == "too_large" and "decoded" in str(error)
    assert _rejected(path, AudioLimits(probe_timeout_s=1e-4)).code == "timeout"
    assert probe_audio(path, AudioLimits(max_duration_s=2.5, max_decoded_bytes=800_000))


def test_reject_codes_and_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="unknown"):
        AudioRejected("nope", "x")
    with pytest.raises(ValueError, match="max_bytes"):
        AudioLimits(max_bytes=0)


# --- conversion -------------------------------------------------------------------------------


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate / len(x))


def test_convert_gives_mono_at_the_asked_rate(tmp_path: Path, encoded: dict[str, Path]) -> None:
    info = convert(encoded["wav"], tmp_path / "out.wav")
    assert (info.format, info.codec, info.sample_rate, info.channels) == (
        "wav",
        "pcm_s16le",
        RATE,
        1,
    )
    assert info.duration_s == pytest.approx(2.0, abs=1 / RATE)
    data, rate = sf.read(str(tmp_path / "out.wav"))
    assert rate == RATE and data.ndim == 1
    # Both channels' tones survive the downmix (averaged, not just the left channel kept).
    spectrum = np.abs(np.fft.rfft(data))
    freqs = np.fft.rfftfreq(len(data), 1 / RATE)
    for hz in (440, 660):
        assert spectrum[np.argmin(np.abs(freqs - hz))] > 0.2 * spectrum.max()
    assert info == wav_info(tmp_path / "out.wav")


@pytest.mark.parametrize("name", ["mp3", "opus", "m4a"])
def test_convert_decodes_compressed_kinds(
    tmp_path: Path, encoded: dict[str, Path], name: str
) -> None:
    info = convert(encoded[name], tmp_path / "out.wav", sample_rate=22050, mono=False)
    assert (info.sample_rate, info.channels) == (22050, 2)
    assert info.duration_s == pytest.approx(2.0, abs=0.03)
    data, _ = sf.read(str(tmp_path / "out.wav"))
    assert _dominant_hz(data[:, 0], 22050) == pytest.approx(440, abs=2)


def test_convert_is_deterministic_and_atomic(tmp_path: Path, encoded: dict[str, Path]) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    convert(encoded["flac"], a)
    convert(encoded["flac"], b)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # no temp leftovers


def test_convert_refuses_non_audio(tmp_path: Path) -> None:
    src = tmp_path / "notes.wav"
    src.write_text("not audio")
    with pytest.raises(AudioRejected) as caught:
        convert(src, tmp_path / "out.wav")
    assert caught.value.code == "not_audio"
    assert not (tmp_path / "out.wav").exists()


# --- cropping ---------------------------------------------------------------------------------


def _check_segments(segments: list, ramp_frames: int, bounds: list[int], rate: int = RATE) -> None:
    """Every segment holds exactly ramp samples [bounds[i], bounds[i+1])."""
    assert len(segments) == len(bounds) - 1
    source = np.arange(ramp_frames) % 30000
    for segment, start, end in zip(segments, bounds, bounds[1:], strict=False):
        assert segment.start_s == start / rate and segment.end_s == end / rate
        data, seg_rate = sf.read(str(segment.path), dtype="int16")
        assert seg_rate == rate
        np.testing.assert_array_equal(data, source[start:end])


def test_crop_interval_keeps_the_partial_tail(tmp_path: Path) -> None:
    frames = 7 * RATE + 5000  # 7.3125 s
    src = _ramp(tmp_path / "ramp.wav", frames)
    segments = crop_interval(src, tmp_path / "out", interval_s=2.0)
    _check_segments(segments, frames, [0, 2 * RATE, 4 * RATE, 6 * RATE, frames])
    assert segments[-1].duration_s == pytest.approx(1.3125)


def test_crop_interval_keeps_the_last_full_chunk_on_exact_multiples(tmp_path: Path) -> None:
    src = _ramp(tmp_path / "ramp.wav", 6 * RATE)
    segments = crop_interval(src, tmp_path / "out", interval_s=2.0)
    _check_segments(segments, 6 * RATE, [0, 2 * RATE, 4 * RATE, 6 * RATE])


def test_crop_interval_joins_a_short_tail_to_the_previous_piece(tmp_path: Path) -> None:
    frames = 7 * RATE + 5000
    src = _ramp(tmp_path / "ramp.wav", frames)
    segments = crop_interval(src, tmp_path / "out", interval_s=2.0, min_tail_s=1.5)
    _check_segments(segments, frames, [0, 2 * RATE, 4 * RATE, frames])


def test_crop_interval_boundaries_are_sample_accurate_for_odd_intervals(tmp_path: Path) -> None:
    frames = 5 * RATE
    src = _ramp(tmp_path / "ramp.wav", frames)
    interval = 1.2345
    segments = crop_interval(src, tmp_path / "out", interval_s=interval)
    bounds = [round(k * interval * RATE) for k in range(5)] + [frames]
    _check_segments(segments, frames, bounds)
    for k, segment in enumerate(segments):
        assert abs(segment.start_s - k * interval) <= 0.5 / RATE  # well within a millisecond


def test_crop_interval_on_compressed_input_covers_the_decoded_audio(
    tmp_path: Path, encoded: dict[str, Path]
) -> None:
    segments = crop_interval(encoded["mp3"], tmp_path / "out", interval_s=0.75)
    assert [round(s.start_s, 3) for s in segments] == [0.0, 0.75, 1.5]
    assert segments[-1].end_s == pytest.approx(2.0, abs=0.03)
    assert all(sf.info(str(s.path)).samplerate == 44100 for s in segments)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "segment_0000.wav",
        "segment_0001.wav",
        "segment_0002.wav",
    ]  # the temporary decode is gone


def test_crop_positions_cuts_exactly_and_keeps_the_tail(tmp_path: Path) -> None:
    frames = 7 * RATE + 5000
    src = _ramp(tmp_path / "ramp.wav", frames)
    segments = crop_positions(src, tmp_path / "out", [3.25, 1.5, 5.0011])
    _check_segments(segments, frames, [0, 24000, 52000, 80018, frames])
    assert abs(segments[3].start_s - 5.0011) <= 0.5 / RATE


@pytest.mark.parametrize(
    ("positions", "message"),
    [([8.0], "past the end"), ([2.0, 2.0], "twice"), ([0.0], "not after the start")],
)
def test_crop_positions_refuses_bad_positions(
    tmp_path: Path, positions: list[float], message: str
) -> None:
    src = _ramp(tmp_path / "ramp.wav", 7 * RATE)
    with pytest.raises(ValueError, match=message):
        crop_positions(src, tmp_path / "out", positions)


def test_parse_positions_accepts_the_old_format_and_clock_times() -> None:
    assert parse_positions("179,500,748") == [179.0, 500.0, 748.0]
    assert parse_positions(" 748, 179\n500, ") == [179.0, 500.0, 748.0]
    assert parse_positions("2:59; 1:00:00.5 12.25") == [12.25, 179.0, 3600.5]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no cut positions"),
        ("12,abc", "position 2"),
        ("-3", "not a time"),
        ("0", "at 0 s"),
        ("5,5.0", "repeats"),
        ("nan", "not a time"),
        ("inf", "not a time"),
        ("1:75", "60 or more seconds"),
        ("1:75:00", "60 or more minutes"),
    ],
)
def test_parse_positions_explains_bad_input(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_positions(text)


# --- transcription ----------------------------------------------------------------------------

needs_basic_pitch = pytest.mark.skipif(
    importlib.util.find_spec("basic_pitch") is None,
    reason="basic-pitch is not installed (make setup installs it)",
)

SCALE = [60, 62, 64, 65, 67, 69, 71, 72, 71, 69, 67, 65, 64, 62, 60]
CHORDS = [[48, 60, 64, 67], [53, 60, 65, 69], [55, 59, 62, 67, 71], [48, 60, 64, 67, 72]]


def _scale_and_chords_midi() -> bytes:
    """Solo piano at 100 bpm: a C-major scale up and down in quarters, then four half-note
    chords (C, F, G7, C)."""
    from tests.support.music import midi_bytes

    notes = [(i * 480, 440, pitch, 90) for i, pitch in enumerate(SCALE)]
    tick = len(SCALE) * 480
    for chord in CHORDS:
        notes += [(tick, 900, pitch, 85) for pitch in chord]
        tick += 960
    return midi_bytes(notes, qpm=100.0)


def _intervals_and_hz(midi: bytes) -> tuple[np.ndarray, np.ndarray]:
    import pretty_midi

    notes = [n for inst in pretty_midi.PrettyMIDI(io.BytesIO(midi)).instruments for n in inst.notes]
    notes.sort(key=lambda n: (n.start, n.pitch))
    intervals = np.array([[n.start, n.end] for n in notes]).reshape(-1, 2)
    hz = np.array([440.0 * 2 ** ((n.pitch - 69) / 12) for n in notes])
    return intervals, hz


@pytest.fixture(scope="module")
def piano(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path, Path]:
    """The reference MIDI, its FluidR3 rendering as WAV, and the same audio as MP3."""
    from cadenza.render.audio import render_midi

    d = tmp_path_factory.mktemp("piano")
    midi = _scale_and_chords_midi()
    wav = d / "piano.wav"
    wav.write_bytes(render_midi(midi, sample_rate=44100))
    mp3 = d / "piano.mp3"
    _ffmpeg("-i", str(wav), "-c:a", "libmp3lame", "-b:a", "192k", str(mp3))
    return midi, wav, mp3


@pytest.fixture(scope="module")
def transcribed(piano: tuple[bytes, Path, Path]) -> tuple[list[bytes], list[tuple[float, str]]]:
    from cadenza.audio.transcribe import TranscribeParams, transcribe

    _midi, wav, mp3 = piano
    calls: list[tuple[float, str]] = []
    out = transcribe([wav, mp3], TranscribeParams(), progress=lambda f, m: calls.append((f, m)))
    return out, calls


@needs_basic_pitch
def test_transcription_finds_the_notes_of_a_rendered_piano(
    piano: tuple[bytes, Path, Path], transcribed: tuple[list[bytes], list[tuple[float, str]]]
) -> None:
    import mir_eval

    midi, _wav, _mp3 = piano
    ref_iv, ref_hz = _intervals_and_hz(midi)
    for est in transcribed[0]:  # WAV and MP3 of the same performance
        est_iv, est_hz = _intervals_and_hz(est)
        precision, recall, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
            ref_iv, ref_hz, est_iv, est_hz, onset_tolerance=0.05, offset_ratio=None
        )
        # Measured here: precision 0.85, recall 1.00, F1 0.92 (the chords' low octaves add a
        # few ghost notes; every played note is found).
        assert f1 >= 0.6, (precision, recall, f1)
        assert recall >= 0.8, (precision, recall, f1)


@needs_basic_pitch
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # audioread, imported by librosa.load
def test_transcription_matches_basic_pitch_predict(
    piano: tuple[bytes, Path, Path], transcribed: tuple[list[bytes], list[tuple[float, str]]]
) -> None:
    """Same model, windowing and note decoding as basic-pitch: the same notes come out."""
    from basic_pitch import FilenameSuffix, build_icassp_2022_model_path
    from basic_pitch.inference import predict

    _midi, wav, _mp3 = piano
    _output, reference, _events = predict(wav, build_icassp_2022_model_path(FilenameSuffix.onnx))
    buffer = io.BytesIO()
    reference.write(buffer)
    ours, theirs = _intervals_and_hz(transcribed[0][0]), _intervals_and_hz(buffer.getvalue())
    assert len(ours[1]) == len(theirs[1]) > 0
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-3)
    np.testing.assert_allclose(ours[1], theirs[1])


@needs_basic_pitch
def test_transcription_reports_progress_in_order(
    transcribed: tuple[list[bytes], list[tuple[float, str]]],
) -> None:
    out, calls = transcribed
    assert len(out) == 2 and all(m.startswith(b"MThd") for m in out)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert calls[-1][1] == "file 2/2: transcribed"


@needs_basic_pitch
def test_transcription_of_near_silence_and_tiny_files(tmp_path: Path) -> None:
    from cadenza.audio.transcribe import transcribe

    tiny = tmp_path / "tiny.wav"
    sf.write(str(tiny), np.zeros(100, dtype=np.int16), 22050)  # shorter than one model frame
    quiet = tmp_path / "quiet.wav"
    sf.write(str(quiet), np.zeros(22050 * 3, dtype=np.int16), 22050)
    for midi in transcribe([tiny, quiet]):
        intervals, _ = _intervals_and_hz(midi)
        assert len(intervals) == 0


@needs_basic_pitch
def test_transcription_names_the_input_that_failed(
    tmp_path: Path, encoded: dict[str, Path]
) -> None:
    from cadenza.audio.transcribe import transcribe

    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all" * 10)
    with pytest.raises(AudioRejected, match="input 2"):
        transcribe([encoded["wav"], bad])


def _activations(seed: int, frames: int = 700) -> tuple[np.ndarray, np.ndarray]:
    """Model-like (frames, onsets): sparse noise plus held notes, values rounded to 0.01 so
    many cells tie (the note search must break ties as basic-pitch does)."""
    rng = np.random.default_rng(seed)
    note = rng.random((frames, 88)) ** 8
    onset = rng.random((frames, 88)) ** 12
    for _ in range(120):
        start, pitch = int(rng.integers(0, frames - 40)), int(rng.integers(0, 88))
        length = int(rng.integers(5, 60))
        note[start : start + length, pitch] = np.maximum(
            note[start : start + length, pitch], rng.uniform(0.3, 0.95)
        )
        onset[start, pitch] = rng.uniform(0.3, 1.0)
    return np.round(note, 2).astype(np.float32), np.round(onset, 2).astype(np.float32)


@needs_basic_pitch
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "knobs",
    [
        {"onset_thresh": 0.5, "frame_thresh": 0.3, "min_note_len": 11},
        {"onset_thresh": 0.3, "frame_thresh": 0.1, "min_note_len": 2},
        {
            "onset_thresh": 0.6,
            "frame_thresh": 0.4,
            "min_note_len": 5,
            "min_freq": 80.0,
            "max_freq": 900.0,
        },
    ],
)
def test_note_search_equals_basic_pitch(seed: int, knobs: dict[str, float]) -> None:
    """Our faster note search returns basic-pitch's notes, in its order, on hard inputs."""
    from basic_pitch.note_creation import output_to_notes_polyphonic

    from cadenza.audio.transcribe import polyphonic_notes

    note, onset = _activations(seed)
    args: dict[str, Any] = {"min_freq": None, "max_freq": None, **knobs}
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = output_to_notes_polyphonic(
            note.copy(), onset.copy(), infer_onsets=True, melodia_trick=True, **args
        )
        got = polyphonic_notes(note.copy(), onset.copy(), **args)
    assert len(expected) > 50
    assert got == expected


@needs_basic_pitch
@pytest.mark.parametrize("seed", [0, 1])
def test_pitch_bends_equal_basic_pitch(seed: int) -> None:
    """Same bends, of the same types, for every pitch (the edges of the contour range too) and
    for contours with many ties."""
    from basic_pitch.note_creation import get_pitch_bends

    from cadenza.audio.transcribe import pitch_bends

    rng = np.random.default_rng(seed)
    contours = np.round(rng.random((600, 264)) ** 3, 2).astype(np.float32)
    notes = []
    for pitch in [*range(21, 109), 21, 108, 60]:
        start = int(rng.integers(0, 580))
        end = start + int(rng.integers(0, 20))  # empty notes too
        notes.append((start, end, pitch, float(rng.random())))
    expected = get_pitch_bends(contours, notes)
    got = pitch_bends(contours, notes)
    assert got == expected
    kinds = {type(b) for *_, bends in expected for b in bends}
    assert {type(b) for *_, bends in got for b in bends} == kinds


@needs_basic_pitch
@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLAC"])
def test_decoding_equals_librosa_load(tmp_path: Path, subtype: str) -> None:
    """The model input is exactly what basic-pitch's librosa.load would give, including the
    length rule for rates that do not divide 22,050 Hz."""
    import librosa

    from cadenza.audio.transcribe import decode_for_model

    rng = np.random.default_rng(3)
    data = (0.3 * rng.standard_normal((48000 * 3 + 17, 2))).astype(np.float32)
    path = tmp_path / ("x.flac" if subtype == "FLAC" else "x.wav")
    sf.write(str(path), data, 48000, subtype="PCM_24" if subtype == "FLAC" else subtype)
    expected, _ = librosa.load(str(path), sr=22050, mono=True)
    np.testing.assert_array_equal(decode_for_model(path), expected)


def test_transcribe_params_have_limits() -> None:
    from pydantic import ValidationError

    from cadenza.audio.transcribe import TranscribeParams

    params = TranscribeParams()
    assert (params.onset_threshold, params.frame_threshold) == (0.5, 0.3)
    assert params.minimum_note_length_ms == pytest.approx(127.7)
    for bad in (
        {"onset_threshold": 1.5},
        {"frame_threshold": 0.0},
        {"minimum_note_length_ms": 0},
        {"minimum_frequency": 500, "maximum_frequency": 200},
        {"midi_tempo": 1000},
        {"onset_treshold": 0.4},  # a typo must not be silently ignored
    ):
        with pytest.raises(ValidationError):
            TranscribeParams(**bad)
    assert math.isclose(TranscribeParams(minimum_frequency=100).minimum_frequency or 0, 100)


def test_transcribe_params_import_stays_light() -> None:
    """The API validates with TranscribeParams: importing it (through the package or its own
    module) must not load numpy, ONNX Runtime or basic-pitch; the model's names load on use."""
    code = (
        "import sys\n"
        "from cadenza.audio.transcribe import TranscribeParams\n"
        "import cadenza.audio.transcribe.params\n"
        "TranscribeParams(onset_threshold=0.4)\n"
        "heavy = {'numpy', 'onnxruntime', 'basic_pitch', 'scipy', 'soundfile'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
        "from cadenza.audio.transcribe import transcribe\n"
        "assert transcribe.__module__ == 'cadenza.audio.transcribe.pipeline'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@needs_basic_pitch
@pytest.mark.parametrize(("channels", "rate"), [(1, 44100), (2, 22050), (6, 48000)])
def test_decoding_equals_librosa_load_for_any_channel_count(
    tmp_path: Path, channels: int, rate: int
) -> None:
    """Mono and stereo take a faster mix-down than the mean over channels; every channel count,
    resampled or not, still gives librosa.load's samples."""
    import librosa

    from cadenza.audio.transcribe import decode_for_model

    rng = np.random.default_rng(channels)
    data = (0.3 * rng.standard_normal((rate * 2 + 5, channels))).astype(np.float32)
    path = tmp_path / "x.wav"
    sf.write(str(path), data, rate, subtype="PCM_24")
    expected, _ = librosa.load(str(path), sr=22050, mono=True)
    np.testing.assert_array_equal(decode_for_model(path), expected)


# --- the rewritten model graph ------------------------------------------------------------------


def _bundled_model() -> bytes:
    from basic_pitch import FilenameSuffix, build_icassp_2022_model_path

    return build_icassp_2022_model_path(FilenameSuffix.onnx).read_bytes()


@pytest.fixture(scope="module")
def models() -> tuple[Any, Any]:
    """The process's model (rewritten graph where it is exact here) and the bundled graph."""
    from cadenza.audio.transcribe.session import Model, shared_model

    return shared_model(), Model(rewrite=False)


@needs_basic_pitch
def test_protobuf_codec_round_trips_the_bundled_model() -> None:
    from cadenza.audio.transcribe import protobuf as pb

    model = _bundled_model()
    assert pb.write(pb.read(model)) == model
    (graph,) = [value for number, _, value in pb.read(model) if number == 7]
    assert isinstance(graph, bytes) and pb.write(pb.read(graph)) == graph


@needs_basic_pitch
def test_rewritten_graph_is_used_and_gives_identical_outputs(
    models: tuple[Any, Any], piano: tuple[bytes, Path, Path]
) -> None:
    """On real music (and the probe) the rewritten graph's note, onset and contour outputs are
    bit for bit the bundled model's, so the notes cannot differ. Where they would not be (another
    CPU's kernels), ``Model`` keeps the bundled graph: the test then says so."""
    from cadenza.audio.transcribe.audio import decode_for_model, window_count

    fast, bundled = models
    if not fast.rewritten:
        pytest.skip("the rewritten graph is not exact on this CPU, so it is not used here")
    assert fast.session is not bundled.session
    audio = decode_for_model(piano[1])
    n = window_count(len(audio))
    ours, reference = fast.run(audio, 0, n), bundled.run(audio, 0, n)
    for key in ("note", "onset", "contour"):
        assert ours[key].shape == reference[key].shape == (n, 172, 264 if key == "contour" else 88)
        np.testing.assert_array_equal(ours[key], reference[key])


@needs_basic_pitch
def test_batched_inference_equals_window_by_window(
    models: tuple[Any, Any], piano: tuple[bytes, Path, Path]
) -> None:
    from cadenza.audio.transcribe.audio import decode_for_model, window_count

    fast, _bundled = models
    audio = decode_for_model(piano[1])
    n = window_count(len(audio))
    assert n >= 5
    batched = fast.run(audio, 0, n)
    for key in ("note", "onset", "contour"):
        single = np.concatenate([fast.run(audio, w, w + 1)[key] for w in range(n)])
        # Bit-identical here; the tolerance only allows a kernel that blocks batches differently.
        np.testing.assert_allclose(batched[key], single, rtol=0, atol=1e-6)


@needs_basic_pitch
def test_rewrite_applies_only_to_the_model_it_was_written_for() -> None:
    from cadenza.audio.transcribe import protobuf as pb
    from cadenza.audio.transcribe.graph import faster_graph, rewrite

    model = _bundled_model()
    assert faster_graph(b"not a model") is None
    assert faster_graph(model[:-1] + bytes([model[-1] ^ 1])) is None  # another file
    # A graph missing one of the nodes to rewrite (here: renamed) is refused as a whole.
    top = pb.read(model)
    (at,) = [i for i, field in enumerate(top) if field[0] == 7]
    graph = pb.read(pb.as_bytes(top[at][2]))
    old, new = b"model_1/re_lu_1/Relu;", b"renamed/re_lu_1/Relu;"  # same length
    graph = [(n, k, pb.as_bytes(v).replace(old, new) if n == 1 else v) for n, k, v in graph]
    top[at] = (7, 2, pb.write(graph))
    with pytest.raises(pb.NotTheExpectedGraph, match="10 of the 11"):
        rewrite(pb.write(top))


@needs_basic_pitch
def test_model_keeps_the_bundled_graph_when_the_rewrite_differs(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """If the rewritten graph's outputs differ at all on the probe, it is not used."""
    from cadenza.audio.transcribe import protobuf as pb
    from cadenza.audio.transcribe import session as module

    real = module.faster_graph

    def off_by_a_little(model: bytes) -> bytes | None:
        faster = real(model)
        assert faster is not None
        # One weight of the first split convolution, changed by a relative 1e-6.
        name = b"cadenza_split0_w"
        raw = faster.index(bytes([0x42, len(name)]) + name) + 2 + len(name)  # tensor name, then
        assert faster[raw] == 0x4A  # its raw_data (field 9, length-delimited)
        _, start = pb.varint(faster, raw + 1)
        weights = np.frombuffer(faster, dtype="<f4", count=16, offset=start).copy()
        k = int(np.argmax(np.abs(weights)))
        weights[k] *= np.float32(1 + 1e-6)
        return faster[:start] + weights.tobytes() + faster[start + 64 :]

    monkeypatch.setattr(module, "faster_graph", off_by_a_little)
    with caplog.at_level("WARNING", logger="cadenza.audio.transcribe"):
        model = module.Model()
    assert not model.rewritten
    assert "not used" in caplog.text
