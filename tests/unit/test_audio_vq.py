"""The audio-vq tokenizer: options, the flattened id layout and its grammar, reconstruction of
held-out audio (rendered chorales), its bytes, and the seam of a continuation."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from cadenza.sample.audio import seam_report, spectral_flatness, splice
from cadenza.tokenize import tokenizer_from_bytes, tokenizer_to_bytes
from cadenza.tokenize.audio_vq import AudioVQTokenizer
from cadenza.tokenize.grammar import grammar_for
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import TokenizerSpec
from tests.support.music import chorale_recordings

SMALL = {"steps": 150, "channels": 48, "coarse_codebook": 64, "fine_codebook": 64}
#: What the small VQ-VAE must reach on held-out audio (log-mel above the silence floor, both
#: levels); BENCHMARKS.md has the default sizes' figures.
MIN_LOG_MEL_SNR_DB = 10.0


def tok_of(config: dict[str, object]) -> AudioVQTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="audio-vq", config=config))
    assert isinstance(tok, AudioVQTokenizer)
    return tok


@pytest.fixture(scope="module")
def fitted() -> Iterator[AudioVQTokenizer]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core box: one thread does not fight the others
    try:
        tok = tok_of(SMALL)
        tok.fit([tok.audio_symbols(p.read_bytes()) for p in chorale_recordings()[:2]])
        yield tok
    finally:
        torch.set_num_threads(before)


def test_options_are_checked_by_name() -> None:
    with pytest.raises(ValidationError, match="coarse_frames must be a multiple"):
        TokenizerSpec(name="audio-vq", config={"coarse_frames": 6})
    with pytest.raises(ValidationError, match="config.sample_rate"):
        TokenizerSpec(name="audio-vq", config={"sample_rate": 100})
    with pytest.raises(ValidationError, match="bpe"):
        TokenizerSpec(name="audio-vq", bpe={"vocab_size": 100})


def test_flattened_ids_round_trip_and_follow_the_grammar() -> None:
    tok = tok_of(SMALL)
    rng = np.random.default_rng(0)
    coarse, fine = rng.integers(0, 64, 10), rng.integers(0, 64, 40)
    ids = tok.codes_to_ids(coarse, fine)
    assert ids.size == 50 and ids[0] == 3 + coarse[0] and ids[1] == 3 + 64 + fine[0]
    c, f = tok.ids_to_codes([int(i) for i in ids])
    assert np.array_equal(c, coarse) and np.array_equal(f, fine)
    # a broken step (a fine id missing, specials, out-of-range ids) is skipped, not misread
    noisy = [1, *ids[:3], 999, *ids[5:], 2]
    c2, f2 = tok.ids_to_codes(noisy)
    assert np.array_equal(c2, coarse[1:]) and np.array_equal(f2, fine[4:])
    grammar = grammar_for(tok)
    assert grammar.first_violation([1, *[int(i) for i in ids], 2]) is None
    assert grammar.first_violation([1, int(ids[1])]) is not None  # a fine code first


def test_held_out_audio_round_trips_above_the_stated_snr(fitted: AudioVQTokenizer) -> None:
    report = fitted.fit_stats()
    assert report["measured_on"] == "held_out" and report["seconds_held_out"] > 2
    assert report["fine"]["log_mel_snr_db"] > MIN_LOG_MEL_SNR_DB, report
    assert report["fine"]["log_mel_snr_db"] >= report["coarse"]["log_mel_snr_db"] - 0.5, report
    assert report["fine"]["mr_stft"] < 3 * report["vocoder"]["mr_stft"], report
    assert report["codes_used"]["coarse"] > 4 and report["codes_used"]["fine"] > 4, report
    # the weights travel in the tokenizer's bytes: a reload encodes and decodes identically
    again = tokenizer_from_bytes(tokenizer_to_bytes(fitted))
    assert isinstance(again, AudioVQTokenizer)
    wave = AudioVQTokenizer.wave(fitted.audio_symbols(chorale_recordings()[2].read_bytes()))
    ids = fitted.wave_ids(wave[:32768])
    assert ids.size == (32768 // fitted.samples_per_step) * 5
    assert np.array_equal(again.wave_ids(wave[:32768]), ids)
    audio = again.decode_audio([int(i) for i in ids])
    assert audio.size == 32768 // fitted.samples_per_step * fitted.samples_per_step
    assert spectral_flatness(audio) < 0.3  # music, not noise


def test_splice_leaves_no_click_or_jump() -> None:
    sr = 16000
    t = np.arange(3 * sr) / sr
    recording = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    decoded = (0.6 * np.sin(2 * np.pi * 220 * t + 2.0)).astype(np.float32)  # other phase, louder
    out = splice(recording[: 2 * sr], decoded, sr)
    assert np.array_equal(out[: 2 * sr - 1600], recording[: 2 * sr - 1600])
    report = seam_report(out, 2.0, sr)
    assert report["rms_jump_db"] < 2.0, report  # the level was matched to the recording's
    assert report["sample_step"] <= 1.5 * report["sample_step_p999"], report
    # a hard cut to the unmatched decoding is what the measures catch
    cut = np.concatenate([recording[: 2 * sr], decoded[2 * sr :]])
    bad = seam_report(cut, 2.0, sr)
    assert bad["rms_jump_db"] > 3 and bad["sample_step"] > 2 * bad["sample_step_p999"], bad
    noise = np.random.default_rng(0).standard_normal(sr).astype(np.float32) * 0.1
    assert spectral_flatness(noise) > 0.5 > 0.05 > spectral_flatness(recording)


def test_compressed_recordings_decode_and_non_audio_is_refused() -> None:
    from cadenza.render.audio import _to_mp3

    tok = tok_of(SMALL)
    wav = chorale_recordings()[0].read_bytes()
    plain = tok.audio_symbols(wav).symbols.size
    mp3 = tok.audio_symbols(_to_mp3(wav, 60.0)).symbols.size
    import soundfile as sf

    assert plain == sf.info(str(chorale_recordings()[0])).frames
    assert abs(mp3 - plain) < 0.25 * 16000  # MP3 pads to whole frames
    with pytest.raises(ValueError):
        tok.audio_symbols(b"MThd not a recording at all")
    with pytest.raises(ValueError, match="max_file_seconds"):
        tok_of({**SMALL, "max_file_seconds": 5}).audio_symbols(wav)
