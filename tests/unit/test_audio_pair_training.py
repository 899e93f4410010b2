"""A pair model's training path (`train.audio_prior` pair): the option's validation, the
streams each half trains on, the upsampler's loop, and its entry in a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from sqlalchemy import select

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


def stream(files: list[tuple[np.ndarray, np.ndarray]], tok: AudioVQTokenizer) -> np.ndarray:
    """A corpus stream of ``files``: BOS, its flattened codes, EOS each."""
    parts = [np.asarray([tok.bos_id, *tok.codes_to_ids(c, f), tok.eos_id]) for c, f in files]
    return np.concatenate(parts).astype(np.int64)


def test_the_train_job_writes_the_upsampler_into_every_checkpoint_and_again_on_resume(
    tmp_path: Path,
) -> None:
    """The job's second phase adds the upsampler to `best` and `latest` alike, keeping their
    rows and the prior's weights; a resumed attempt, whose loop may have re-saved the latest
    without it, retrains it and writes it again, leaving no stray objects."""
    from cadenza.db.models import Checkpoint, Owner
    from cadenza.jobs.handlers.train import _Hooks, _train_upsampler
    from cadenza.jobs.runner import claim_context
    from cadenza.models.checkpoint import build_from_spec, model_checkpoint, model_from_checkpoint
    from cadenza.models.configs import GPTConfig
    from cadenza.storage import job_key, open_store
    from tests.unit.test_jobs import embedded_with_owner, make_model, new_job

    settings, factory, owner_id = embedded_with_owner(tmp_path, "dora")
    with factory() as s:
        owner = s.get(Owner, owner_id)
        assert owner is not None
        job_id = new_job(s, owner).id
        model = make_model(s, owner, job_id)
        s.expunge_all()
    ctx = claim_context(job_id, settings)
    assert ctx is not None
    cfg = TrainConfig(audio_prior="pair", max_steps=20, upsampler_steps=20, warmup_steps=2,
                      eval_interval=10, batch_size=4, seq_len=32, keep_last_n=1)  # fmt: skip
    hooks = _Hooks(ctx, model, cfg, share=0.5)
    tok = tokenizer()
    config = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=32, dropout=0.0, bias=True)
    spec = {"architecture": "gpt", "config": config.model_dump(mode="json"),
            "vocab_size": tok.fine_base}  # fmt: skip
    payloads = {}
    for step, best in ((10, True), (20, False)):
        prior = build_from_spec(spec)
        ckpt = model_checkpoint(prior.state_dict(), spec, tokenizer_hash="h", step=step)
        payloads[step] = dump_checkpoint(ckpt)
        hooks.save_checkpoint(step, payloads[step], val_loss=1.0 if best else 2.0, is_best=best)
    data = {"train": stream(learnable(3, 30, 0), tok), "val": stream(learnable(1, 20, 1), tok)}
    store = open_store(settings)

    def rows() -> list[tuple[int, bool, dict[str, Any]]]:
        with factory() as s:
            got = s.scalars(
                select(Checkpoint).filter_by(model_id=model.id).order_by(Checkpoint.step)
            )
            return [(c.step, c.is_best, load_checkpoint(store.get(c.object_key))) for c in got]

    for attempt in range(2):
        summary = _train_upsampler(ctx, hooks, tok, data, cfg, spec, 0.5)
        assert summary["steps"] == 20 and summary["kept_step"] in (10, 20)
        assert summary["val_nll"] > 0 and summary["stopped"] is False
        got = rows()
        assert [(step, best) for step, best, _ in got] == [(10, True), (20, False)]
        for step, _, payload in got:
            prior = model_from_checkpoint(payload)  # the prior loads as any model's weights
            saved = load_checkpoint(payloads[step])["model"]
            assert all(torch.equal(v, saved[k]) for k, v in prior.state_dict().items())
            up = upsampler_from_entry(payload[UPSAMPLER_KEY])
            assert up.arch["n_embd"] == 16 and up.window == 8
        with factory() as s:
            named = set(s.scalars(select(Checkpoint.object_key).filter_by(model_id=model.id)))
        assert {o.key for o in store.list(job_key(job_id, "checkpoints"))} == named
        if attempt == 0:  # a resumed loop re-saves its last checkpoint as it trained it
            hooks.save_checkpoint(20, payloads[20], val_loss=2.0, is_best=False)
            assert UPSAMPLER_KEY not in rows()[1][2]
