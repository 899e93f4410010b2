"""Audio generation on CPU: the audio-vq tokenizer's reconstruction per level, a waveform
VQ-VAE trained for the same seconds (why the tokenizer is a mel one), a GPT prior's val loss,
and the real-time factor of continuing a recording.

    PYTHONPATH=shared .venv/bin/python bench/audio_gen.py --files 6 --seconds 30

Data: the first ``--files`` Bach chorales of music21's corpus, rendered with the project's
renderer (General MIDI soundfont) and cut to ``--seconds`` each, at 16 kHz mono; 3 of 4 files
train, the rest is the validation split (the continuation's primer is a validation file).
Everything runs in this process, on ``--threads`` torch threads; the load average is printed
beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cadenza.datasets import export_bach_chorales
from cadenza.models.audio_vqvae import (
    _Codebook,
    _flat,
    _unflat,
    mel_magnitude,
    mel_snr_db,
    multi_resolution_stft,
)
from cadenza.models.checkpoint import model_from_checkpoint
from cadenza.models.registry import resolve_config
from cadenza.render.audio import render_midi
from cadenza.sample.audio import sample_audio
from cadenza.tokenize import build_corpus
from cadenza.tokenize.audio_vq import AudioVQTokenizer, decode_audio_bytes
from cadenza.tokenize.spec import TokenizerSpec
from cadenza.train import TrainConfig, train
from cadenza.train.loop import NullHooks

CACHE = Path(os.environ.get("CADENZA_TEST_CACHE", Path(__file__).parents[1] / ".cache"))


class Last(NullHooks):
    """Keeps the newest checkpoint payload (with ``best``, the one of the lowest val loss)."""

    def __init__(self, best: bool = False) -> None:
        self.best = best
        self.payload = b""
        self.step: int | None = None

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        if is_best or not self.best:
            self.payload, self.step = payload, step


def recordings(n: int, seconds: float) -> list[tuple[str, bytes]]:
    from symusic import Score

    out_dir = CACHE / f"bach-wav-bench-{int(seconds)}s"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for src in export_bach_chorales(CACHE / "bach-midi", n):
        dst = out_dir / f"{src.stem}.wav"
        if not dst.exists():
            cut = Score.from_midi(src.read_bytes()).to("second").clip(0.0, seconds).to("tick")
            dst.write_bytes(render_midi(cut.dumps_midi(), fmt="wav", sample_rate=16000))
        out.append((src.stem, dst.read_bytes()))
    return out


def prior_train_config(
    steps: int, window_grid: int | None, seed: int = 1337, eval_every: int | None = None
) -> TrainConfig:
    """The bench's prior training: batch 8 × 100 ids, fp32, one evaluation at the end (else
    every ``eval_every`` steps, each a checkpoint), warm-up over the first quarter (the default
    100 of 400 steps; shorter runs keep the proportion). ``bench/audio_prior.py`` trains its
    priors with it too."""
    return TrainConfig(
        max_steps=steps,
        eval_interval=eval_every or steps,
        checkpoint_interval=eval_every or 1000,
        warmup_steps=min(100, steps // 4),
        batch_size=8,
        seq_len=100,
        precision="fp32",
        compile=False,
        log_interval=50,
        keep_last_n=1,
        window_grid=window_grid,
        seed=seed,
    )


# ---- the waveform VQ-VAE it was measured against -----------------------------------------------


class WaveVQ(nn.Module):
    """Strided 1-D convolutions (4 × stride 4: one code per 256 samples, the mel hop), one EMA
    codebook, transposed convolutions back; SoundStream's shape without its GAN."""

    def __init__(self, ch: int = 64, dim: int = 64, codes: int = 256) -> None:
        super().__init__()
        enc: list[nn.Module] = [nn.Conv1d(1, ch, 7, padding=3)]
        dec: list[nn.Module] = []
        for _ in range(4):
            enc += [nn.ELU(), nn.Conv1d(ch, ch, 8, stride=4, padding=2)]
            dec += [nn.ELU(), nn.ConvTranspose1d(ch, ch, 8, stride=4, padding=2)]
        self.enc = nn.Sequential(*enc, nn.ELU(), nn.Conv1d(ch, dim, 1))
        self.dec = nn.Sequential(
            nn.Conv1d(dim, ch, 7, padding=3), *dec, nn.Conv1d(ch, 1, 7, padding=3)
        )
        self.book = _Codebook(codes, dim, 0.99)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = _flat(self.enc(x))
        idx = self.book.nearest(z)
        q = self.book.codebook[idx]
        if self.training:
            self.book.update(z.detach(), idx)
        y = self.dec(_unflat(z + (q - z).detach(), x.shape[0]))
        return y, F.mse_loss(z, q.detach())


def stft_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    total = torch.zeros(())
    for n in (256, 512, 1024):
        w = torch.hann_window(n)
        sa = torch.stft(a, n, n // 4, window=w, return_complex=True).abs()
        sb = torch.stft(b, n, n // 4, window=w, return_complex=True).abs()
        total = total + (torch.log(sa + 1e-5) - torch.log(sb + 1e-5)).abs().mean()
    return total


def waveform_vq(
    train_waves: list[np.ndarray], held: list[np.ndarray], seconds: float, tok: AudioVQTokenizer
) -> dict[str, Any]:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = WaveVQ()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    seg, steps, t0 = 16384, 0, time.perf_counter()
    with torch.no_grad():
        x = torch.from_numpy(np.stack([w[:seg] for w in train_waves[:4]]))[:, None]
        z = _flat(model.enc(x))
        pick = torch.from_numpy(rng.integers(0, z.shape[0], 256))
        model.book.codebook.copy_(z[pick])
        model.book.ema_sum.copy_(z[pick])
    while time.perf_counter() - t0 < seconds:
        crops = []
        for _ in range(8):
            w = train_waves[int(rng.integers(len(train_waves)))]
            s = int(rng.integers(0, w.size - seg))
            crops.append(w[s : s + seg])
        x = torch.from_numpy(np.stack(crops))[:, None]
        y, commit = model(x)
        loss = F.l1_loss(y, x) + stft_loss(y[:, 0], x[:, 0]) + 0.25 * commit
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    snr, log_snr, mr = [], [], []
    floor = float(np.log(1e-5))
    with torch.no_grad():
        for w in held:
            n = (w.size // 256) * 256
            y = model(torch.from_numpy(w[:n])[None, None])[0][0, 0].numpy()
            ref, est = mel_magnitude(w[:n], tok.cfg), mel_magnitude(y, tok.cfg)
            snr.append(mel_snr_db(ref, est))
            log_snr.append(mel_snr_db(np.log(ref + 1e-5) - floor, np.log(est + 1e-5) - floor))
            mr.append(multi_resolution_stft(w[:n], y, tok.cfg.sample_rate))
    return {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "steps": steps,
        "mel_snr_db": round(float(np.mean(snr)), 3),
        "log_mel_snr_db": round(float(np.mean(log_snr)), 3),
        "mr_stft": round(float(np.mean(mr)), 4),
        "codes_per_second": 16000 / 256,
    }


# ---- the run -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--vq-steps", type=int, default=600)
    ap.add_argument("--prior-steps", type=int, default=400)
    ap.add_argument("--primer-seconds", type=float, default=4.0)
    ap.add_argument("--gen-seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-waveform", action="store_true", help="skip the waveform VQ-VAE")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                           "threads": args.threads, "args": vars(args)}  # fmt: skip
    files = recordings(args.files, args.seconds)
    spec = TokenizerSpec(name="audio-vq", config={"steps": args.vq_steps})
    t0 = time.perf_counter()
    build = build_corpus(files, spec, split=(0.75, 0.25, 0.0), workers=1)
    out["corpus_seconds"] = round(time.perf_counter() - t0, 1)
    tok = build.tokenizer
    assert isinstance(tok, AudioVQTokenizer)
    out["tokenizer"] = tok.fit_stats()
    out["load_after_tokenizer"] = os.getloadavg()
    print(json.dumps(out, indent=1), flush=True)

    if not args.no_waveform:
        waves = {fid: decode_audio_bytes(data, 16000, 3600) for fid, data in files}
        train_ids = build.file_splits["train"]
        train_w, held_w = [], []
        for fid in train_ids:  # the same held-out tails the mel tokenizer was measured on
            w = waves[fid]
            steps = w.size // tok.samples_per_step
            cut = (steps - int(steps * tok.cfg.holdout_fraction)) * tok.samples_per_step
            train_w.append(w[:cut])
            held_w.append(w[cut : steps * tok.samples_per_step])
        seconds = float(out["tokenizer"]["fit_seconds"])
        out["waveform_vq"] = waveform_vq(train_w, held_w, seconds, tok)
        out["load_after_waveform"] = os.getloadavg()
        print(json.dumps(out["waveform_vq"], indent=1), flush=True)

    data = {k: np.asarray(v, "int64") for k, v in build.splits.items() if v.size}
    cfg = resolve_config("gpt", "tiny", {}).model_dump(mode="json")
    model_spec = {"architecture": "gpt", "config": cfg, "vocab_size": tok.vocab_size}
    tcfg = prior_train_config(args.prior_steps, tok.cfg.group)
    hooks = Last()
    result = train(model_spec, data, tcfg, hooks, tokenizer_hash="bench", bos_id=tok.bos_id)
    out["prior"] = {
        "architecture": "gpt tiny",
        "steps": result.steps,
        "params": result.num_params,
        "val_loss": result.final_val_loss,
        "train_seconds": round(result.elapsed_s, 1),
        "tokens": {k: int(v.size) for k, v in data.items()},
    }
    out["load_after_prior"] = os.getloadavg()
    print(json.dumps(out["prior"], indent=1), flush=True)

    model = model_from_checkpoint(hooks.payload)
    model.eval()
    val_id = build.file_splits["val"][0]
    primer_full = decode_audio_bytes(dict(files)[val_id], 16000, 3600)
    primer = primer_full[
        : int(args.primer_seconds * 16000) // tok.samples_per_step * tok.samples_per_step
    ]
    options = {"temperature": 0.9, "top_k": 32, "seed": 7}
    rows = []
    for _ in range(2):  # the first run pays one-off costs (mel basis, allocations)
        t1 = time.perf_counter()
        v = sample_audio(model, tok, primer, options, n=1, max_seconds=args.gen_seconds)[0]
        rows.append((time.perf_counter() - t1, v))
    wall, v = rows[-1]
    out["generation"] = {
        "primer_seconds": round(primer.size / 16000, 3),
        "new_seconds": round(v.new_seconds, 3),
        "seconds": v.seconds,
        "real_time_factor": round(v.real_time_factor, 3),
        "wall_seconds": round(wall, 2),
        "metrics": v.metrics,
        "new_ids": len(v.new_ids),
        "ids_per_second_generated": round(len(v.new_ids) / v.seconds["generate"], 1),
    }
    out["load_after_generation"] = os.getloadavg()
    build.close()
    print(json.dumps(out["generation"], indent=1), flush=True)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
