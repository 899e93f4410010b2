"""A pair model's training path (`train.audio_prior` pair): the option's validation, the
streams each half trains on, the upsampler's loop, and its entry in a checkpoint."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cadenza.models.audio_upsampler import (
    UPSAMPLER_KEY,
    Upsampler,
    coarse_stream,
    file_codes,
    upsampler_entry,
    upsampler_from_entry,
)
from cadenza.models.checkpoint import dump_checkpoint, load_checkpoint
from cadenza.tokenize.audio_vq import AudioVQTokenizer
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import TokenizerSpec
from cadenza.train.config import TrainConfig
from cadenza.train.params import ModelRequest, resolve_model
from cadenza.train.upsampler import build_upsampler, train_upsampler, val_nll
from cadenza.validation import InvalidParams

AUDIO_SPEC = {"name": "audio-vq", "config": {"coarse_codebook": 16, "fine_codebook": 8}}


def test_pair_is_opt_in_and_its_options_need_it() -> None:
    assert TrainConfig().audio_prior == "flat"  # and every stored config without the field
    cfg = TrainConfig(audio_prior="pair", upsampler_steps=7, upsampler_width=32)
    assert (cfg.upsampler_steps, cfg.upsampler_width, cfg.upsampler_layers) == (7, 32, 1)
    for wrong in ({"upsampler_steps": 7}, {"upsampler_layers": 2}):
        with pytest.raises(ValidationError, match="audio_prior pair"):
            TrainConfig(**wrong)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TrainConfig(audio_prior="jukebox")  # type: ignore[arg-type]


def test_pair_needs_an_audio_vq_corpus_and_no_window_grid() -> None:
    req = ModelRequest(corpus_id="c", architecture="gpt", train={"audio_prior": "pair"})
    with pytest.raises(InvalidParams, match="audio_prior pair needs an audio-vq corpus") as info:
        resolve_model(req, tokenizer="REMI", tokenizer_spec={"name": "REMI"})
    assert info.value.details[0]["field"] == "train.audio_prior"
    _, train = resolve_model(req, tokenizer="audio-vq", tokenizer_spec=AUDIO_SPEC)
    assert train["audio_prior"] == "pair" and train["window_grid"] is None
    flat = ModelRequest(corpus_id="c", architecture="gpt")
    _, train = resolve_model(flat, tokenizer="audio-vq", tokenizer_spec=AUDIO_SPEC)
    assert train["audio_prior"] == "flat" and train["window_grid"] == 5


def tokenizer() -> AudioVQTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="audio-vq", config=AUDIO_SPEC["config"]))
    assert isinstance(tok, AudioVQTokenizer)
    return tok


def test_streams_split_a_corpus_into_coarse_ids_and_each_files_codes() -> None:
    tok = tokenizer()
    rng = np.random.default_rng(0)
    files = [(rng.integers(0, 16, n), rng.integers(0, 8, (n, 4))) for n in (3, 5)]
    ids = np.concatenate(
        [np.asarray([tok.bos_id, *tok.codes_to_ids(c, f), tok.eos_id]) for c, f in files]
    ).astype(np.int64)
    got = file_codes(ids, tok)
    assert len(got) == 2
    for (c, f), (gc, gf) in zip(files, got, strict=True):
        assert np.array_equal(c, gc) and np.array_equal(f, gf)
    coarse = coarse_stream(ids, tok)
    assert coarse.size == 2 * 2 + 3 + 5  # BOS and EOS of each file, one id per step
    assert coarse.max() < tok.fine_base
    assert np.array_equal(coarse[1:4] - tok.coarse_base, files[0][0])


def learnable(n_files: int, steps: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Codes whose fine codes follow from their coarse code: (c + phase) % 8."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_files):
        c = rng.integers(0, 16, steps).astype(np.int64)
        out.append((c, (c[:, None] + np.arange(4)[None, :]) % 8))
    return out


def test_the_upsampler_learns_keeps_its_best_and_stops_when_asked() -> None:
    cfg = TrainConfig(audio_prior="pair", max_steps=60, warmup_steps=5, eval_interval=20,
                      batch_size=8, seq_len=32, lr=3e-3, seed=1)  # fmt: skip
    up = build_upsampler(cfg, n_coarse=16, n_fine=8, fine_per_coarse=4, width=31)
    assert up.window == 8 and up.arch["n_embd"] == 32  # seq_len // 4 steps; heads split it
    train, val = learnable(4, 40, 0), learnable(2, 20, 1)
    before = val_nll(up, val, 1000)
    assert before == pytest.approx(math.log(8), rel=0.05)
    seen: list[tuple[int, float | None]] = []
    score, kept, stopped = train_upsampler(
        up, train, cfg, lambda: val_nll(up, val, 1000), on_progress=lambda s, v: seen.append((s, v))
    )
    assert [s for s, _ in seen] == [20, 40, 60] and not stopped
    best = min(seen, key=lambda sv: sv[1] if sv[1] is not None else math.inf)
    assert (kept, score) == best
    assert val_nll(up, val, 1000) == pytest.approx(score, abs=1e-5)  # the kept weights
    assert score < 0.5 * before

    calls = []
    fresh = build_upsampler(cfg, n_coarse=16, n_fine=8, fine_per_coarse=4, width=32)
    _, kept, stopped = train_upsampler(fresh, train, cfg, should_stop=lambda: len(calls) > 2
                                       or bool(calls.append(1)))  # fmt: skip
    assert stopped and kept == 4
    with pytest.raises(ValueError, match="training split has no codes"):
        train_upsampler(fresh, [], cfg)


def test_the_upsampler_travels_in_a_weights_only_checkpoint() -> None:
    torch.manual_seed(0)
    up = Upsampler(16, 8, 4, window=5, pad=2, n_embd=16, n_layer=2, n_head=2, cond_blocks=1)
    for p in up.parameters():
        torch.nn.init.normal_(p, std=0.3)
    up.eval()
    payload = dump_checkpoint({"model": {}, UPSAMPLER_KEY: upsampler_entry(up)})
    back = upsampler_from_entry(load_checkpoint(payload)[UPSAMPLER_KEY])
    assert back.arch == up.arch and not back.training
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.integers(0, 16, (1, 9)))
    fine = torch.from_numpy(rng.integers(0, 8, (1, 20)))
    with torch.no_grad():
        assert torch.equal(back(fine, back.conditioning(coarse)), up(fine, up.conditioning(coarse)))
