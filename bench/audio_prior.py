"""One flattened prior against a coarse prior + an upsampler, on the audio-vq codes.

    PYTHONPATH=shared .venv/bin/python bench/audio_prior.py --files 6 --seconds 30 --threads 1

The question (Jukebox's design against MusicGen's flattening): does modelling the coarse codes
with one prior and the fine codes with a separate upsampler that sees the coarse codes on both
sides describe the audio in fewer bits than one prior over the flattened stream?

Data and tokenizer are ``bench/audio_gen.py``'s: the same chorales rendered to 16 kHz, the same
``audio-vq`` fit and split. The fitted tokenizer and the corpus's ids are cached under
``.cache/audio-prior-*`` (the fit is most of the run's time); ``--refit`` fits again.

* flat: ``gpt`` ``tiny`` on the flattened stream (coarse id, then its 4 fine ids), trained as
  ``audio_gen.py`` trains it (:func:`audio_gen.prior_train_config`, windows on step starts).
* pair: the same architecture on the coarse ids alone (the same 100 ids per window are then
  100 steps, 12.8 s, instead of 20), plus
  :class:`cadenza.models.audio_upsampler.Upsampler`: a causal transformer over the fine
  codes of a window of steps, whose every position's input adds the coarse codes around it,
  past and future (embedded, a non-causal residual convolution stack over the window and
  ``--cond-pad`` steps beyond each side, repeated ×4 with a learned per-phase vector): Jukebox's
  conditioner. It trains by :func:`cadenza.train.upsampler.train_upsampler`, the `train`
  job's loop for a pair model (``train.audio_prior`` pair).
* Budget: every model sees batches of 8 × 100 ids; the pair's two models share the flat prior's
  optimizer steps (``--coarse-share`` of them for the coarse prior), and their widths
  (``--pair-width``, 48 against the flat prior's 64) are chosen so the pair's parameters total
  about the flat prior's (all counts are printed). Wall seconds are reported beside them.
* Which weights: each model's last, or with ``--eval-every N`` the ones of its lowest
  validation loss over evaluations every N steps (the trainer's best checkpoint, which is
  what sampling uses by default; the upsampler's loop keeps its best likewise).
* The figure: negative log-likelihood of every code of the validation split, in bits per second
  of audio, per level and in total (the pair's fine level is scored given the true coarse
  codes, which is what it adds to the coarse prior's bits). Each code is scored with the
  context its model trained with: windows as long as the training ones, every half window,
  a code scored in the first window that holds it after the previous window's codes.
* Generation: both continue the first ``--primer-seconds`` of a validation recording by
  ``--gen-seconds`` (temperature 0.9, top-k 32): the flat prior by
  :func:`cadenza.sample.audio.sample_audio` (the sample job's path), the pair by
  :func:`cadenza.sample.audio.sample_audio_pair` (coarse codes, then the upsampler's fine
  ones), both decoded and measured alike. ``--gen-seeds N`` repeats it with sampling seeds
  7 .. 7+N-1 and counts, per prior, the seams whose |Δ RMS| (or flux) exceeds the output's own
  95th percentile.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from audio_gen import CACHE, Last, prior_train_config, recordings
from torch import nn

from cadenza.models.audio_upsampler import (
    Upsampler,
    coarse_stream,
    file_codes,
    upsampler_nll,
    window_starts,
)
from cadenza.models.checkpoint import model_from_checkpoint
from cadenza.models.registry import resolve_config
from cadenza.sample.audio import AudioVariation, primer_cut, sample_audio, sample_audio_pair
from cadenza.tokenize import build_corpus, tokenizer_from_bytes
from cadenza.tokenize.audio_vq import AudioVQTokenizer, decode_audio_bytes
from cadenza.tokenize.spec import TokenizerSpec
from cadenza.train import train
from cadenza.train.upsampler import train_upsampler

LN2 = math.log(2.0)


# ---- data --------------------------------------------------------------------------------------


def fitted(
    files: Sequence[tuple[str, bytes]], vq_steps: int, refit: bool, key: str
) -> tuple[AudioVQTokenizer, dict[str, np.ndarray], dict[str, list[str]], float | None]:
    """The audio-vq tokenizer fitted on ``files`` as audio_gen.py fits it, the splits' ids and
    which file is in which split; cached, so a second run (another seed) skips the fit.
    The fourth value is the fit's seconds (None when read from the cache)."""
    where = CACHE / f"audio-prior-{key}"
    if not refit and (where / "splits.npz").exists():
        tok = tokenizer_from_bytes((where / "tokenizer.bin").read_bytes())
        assert isinstance(tok, AudioVQTokenizer)
        with np.load(where / "splits.npz") as z:
            splits = {k: z[k] for k in z.files}
        return tok, splits, json.loads((where / "file_splits.json").read_text()), None
    spec = TokenizerSpec(name="audio-vq", config={"steps": vq_steps})
    t0 = time.perf_counter()
    build = build_corpus(list(files), spec, split=(0.75, 0.25, 0.0), workers=1)
    seconds = time.perf_counter() - t0
    tok = build.tokenizer
    assert isinstance(tok, AudioVQTokenizer)
    splits = {k: np.asarray(v, np.int64) for k, v in build.splits.items() if v.size}
    file_splits = {k: list(v) for k, v in build.file_splits.items()}
    build.close()
    where.mkdir(parents=True, exist_ok=True)
    (where / "tokenizer.bin").write_bytes(tok.to_bytes())
    np.savez(where / "splits.npz", **splits)
    (where / "file_splits.json").write_text(json.dumps(file_splits))
    return tok, splits, file_splits, seconds


def segments(arr: np.ndarray, bos: int) -> list[np.ndarray]:
    """A corpus stream cut at each BOS: one array per file (BOS, its ids, EOS)."""
    starts = np.flatnonzero(arr == bos).tolist() + [arr.size]
    return [arr[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]


# ---- scoring -----------------------------------------------------------------------------------


@torch.no_grad()
def stream_nll(
    model: nn.Module, seg: np.ndarray, ctx: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """NLL (nats) of every id of a file's stream after its BOS, by a causal LM whose windows
    hold ``ctx`` ids; windows start on BOS or ``stride`` ids after it. Returns (ids, nll)."""
    nll = np.zeros(seg.size)
    for s, first in window_starts(seg.size, ctx, stride, 1):
        x = torch.from_numpy(seg[s : s + ctx])[None]
        logits = model(x)[0][0]
        lp = torch.log_softmax(logits.float(), -1)
        tgt = torch.from_numpy(seg[s + 1 : s + ctx + 1])
        got = -lp[torch.arange(tgt.numel()), tgt].numpy()
        nll[first : s + 1 + tgt.numel()] = got[first - s - 1 :]
    return seg[1:], nll[1:]


def levels(
    tok: AudioVQTokenizer, model: nn.Module, arr: np.ndarray, ctx: int, stride: int
) -> tuple[float, float]:
    """Total NLL (nats) of the coarse ids and of the fine ids of a split's stream (specials,
    which the two kinds of stream place alike, are left out)."""
    coarse, fine = 0.0, 0.0
    for seg in segments(arr, tok.bos_id):
        ids, nll = stream_nll(model, seg, ctx, stride)
        is_c = (ids >= tok.coarse_base) & (ids < tok.fine_base)
        is_f = (ids >= tok.fine_base) & (ids < tok.fine_base + tok.cfg.fine_codebook)
        coarse += float(nll[is_c].sum())
        fine += float(nll[is_f].sum())
    return coarse, fine


# ---- the run -----------------------------------------------------------------------------------


def bits(nats: float, seconds: float) -> float:
    return round(nats / LN2 / seconds, 1)


def run(args: argparse.Namespace, seed: int, tok: AudioVQTokenizer,
        splits: dict[str, np.ndarray], primer: np.ndarray) -> dict[str, Any]:  # fmt: skip
    """Train the flat prior and the pair with ``seed``; score and generate."""
    fpc, group, bos = tok.cfg.fine_per_coarse, tok.cfg.group, tok.bos_id
    val_steps = sum(c.size for c, _ in file_codes(splits["val"], tok))
    val_seconds = val_steps * tok.samples_per_step / tok.cfg.sample_rate
    out: dict[str, Any] = {"seed": seed, "val_seconds": round(val_seconds, 2)}
    base = resolve_config("gpt", "tiny", {}).model_dump(mode="json")
    ctx = 100

    # (a) flat
    every = args.eval_every
    hooks = Last(best=every is not None)
    f_cfg = {**base, "n_embd": args.flat_width or base["n_embd"]}
    spec = {"architecture": "gpt", "config": f_cfg, "vocab_size": tok.vocab_size}
    res = train(spec, splits, prior_train_config(args.steps, group, seed, every), hooks,
                tokenizer_hash="bench", bos_id=bos)  # fmt: skip
    flat = model_from_checkpoint(hooks.payload).eval()
    coarse_n, fine_n = levels(tok, flat, splits["val"], ctx, ctx // 2 // group * group)
    out["flat"] = {
        "params": res.num_params, "steps": res.steps, "kept_step": hooks.step,
        "train_seconds": round(res.elapsed_s, 1),
        "val_loss_trainer": res.final_val_loss,
        "bits_per_s": {"coarse": bits(coarse_n, val_seconds), "fine": bits(fine_n, val_seconds),
                       "total": bits(coarse_n + fine_n, val_seconds)},
        "load": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(out["flat"]), flush=True)

    # (b) coarse prior + upsampler
    c_steps = max(1, round(args.steps * args.coarse_share))
    u_steps = args.steps - c_steps
    c_cfg = {**base, "n_embd": args.pair_width}
    c_data = {k: coarse_stream(v, tok) for k, v in splits.items()}
    hooks = Last(best=every is not None)
    spec = {"architecture": "gpt", "config": c_cfg, "vocab_size": tok.fine_base}
    c_res = train(spec, c_data, prior_train_config(c_steps, None, seed, every), hooks,
                  tokenizer_hash="bench", bos_id=bos)  # fmt: skip
    cprior = model_from_checkpoint(hooks.payload).eval()
    up = Upsampler(tok.cfg.coarse_codebook, tok.cfg.fine_codebook, fpc, ctx // fpc, args.cond_pad,
                   n_embd=args.pair_width, n_layer=args.up_layers, n_head=2,
                   cond_blocks=args.cond_blocks)  # fmt: skip
    u_cfg = prior_train_config(max(u_steps, 1), None, seed, every)
    val_codes = file_codes(splits["val"], tok)

    def up_val() -> float:
        return sum(float(upsampler_nll(up, c, f).sum()) for c, f in val_codes)

    t0 = time.perf_counter()
    u_kept = train_upsampler(up, file_codes(splits["train"], tok), u_cfg,
                             up_val if every else None)[1]  # fmt: skip
    u_seconds = time.perf_counter() - t0
    coarse_n = levels(tok, cprior, c_data["val"], ctx, ctx // 2)[0]
    fine_n = up_val()
    out["pair"] = {
        "params": {"coarse": c_res.num_params, "upsampler": up.num_params(),
                   "total": c_res.num_params + up.num_params()},
        "steps": {"coarse": c_res.steps, "upsampler": u_steps},
        "kept_step": {"coarse": hooks.step, "upsampler": u_kept},
        "train_seconds": {"coarse": round(c_res.elapsed_s, 1), "upsampler": round(u_seconds, 1),
                          "total": round(c_res.elapsed_s + u_seconds, 1)},
        "bits_per_s": {"coarse": bits(coarse_n, val_seconds), "fine": bits(fine_n, val_seconds),
                       "total": bits(coarse_n + fine_n, val_seconds)},
        "load": os.getloadavg(),
    }  # fmt: skip
    print(json.dumps(out["pair"]), flush=True)
    a, b = out["flat"]["bits_per_s"]["total"], out["pair"]["bits_per_s"]["total"]
    out["pair_saves_percent"] = round(100 * (a - b) / a, 1)

    # generation: the same primer, options and seed for both, through the product's paths
    options = {"temperature": 0.9, "top_k": 32, "seed": 7}
    gens: dict[str, Callable[[], AudioVariation]] = {
        "flat": lambda: sample_audio(flat, tok, primer, options, max_seconds=args.gen_seconds)[0],
        "pair": lambda: sample_audio_pair(
            cprior, up, tok, primer, options, max_seconds=args.gen_seconds
        )[0],
    }
    out["generation"] = {name: timed(fn) for name, fn in gens.items()}
    if args.gen_seeds > 1:  # the seam over more sampling seeds: is one prior's rougher?
        seams: dict[str, list[dict[str, float]]] = {"flat": [], "pair": []}
        for k in range(args.gen_seeds):
            opts = {**options, "seed": 7 + k}
            seams["flat"].append(
                sample_audio(flat, tok, primer, opts, max_seconds=args.gen_seconds)[0].metrics[
                    "seam"
                ]
            )
            seams["pair"].append(sample_audio_pair(cprior, up, tok, primer, opts,
                                                   max_seconds=args.gen_seconds)[0]
                                 .metrics["seam"])  # fmt: skip
        out["seams"] = {name: seam_summary(got) for name, got in seams.items()}
    out["load_after"] = os.getloadavg()
    print(json.dumps(out["generation"]), flush=True)
    return out


def seam_summary(seams: Sequence[dict[str, float]]) -> dict[str, Any]:
    """How often the seam's |Δ RMS| and spectral flux exceed the output's own 95th percentile,
    and their medians beside the medians of those percentiles."""

    def med(key: str) -> float:
        return round(float(np.median([s[key] for s in seams])), 3)

    return {
        "n": len(seams),
        "rms_over_p95": sum(s["rms_jump_db"] > s["rms_jump_db_p95"] for s in seams),
        "flux_over_p95": sum(s["flux"] > s["flux_p95"] for s in seams),
        "click": sum(s["sample_step"] > 2 * s["sample_step_p999"] + 1e-3 for s in seams),
        "rms_jump_db": med("rms_jump_db"), "rms_jump_db_p95": med("rms_jump_db_p95"),
        "flux": med("flux"), "flux_p95": med("flux_p95"),
    }  # fmt: skip


def timed(fn: Callable[[], AudioVariation]) -> dict[str, Any]:
    """Generate twice (the first run pays one-off costs) and report the second."""
    v = fn()
    v = fn()
    return {
        "new_seconds": round(v.new_seconds, 3),
        "seconds": v.seconds,
        "real_time_factor": round(v.real_time_factor, 3),
        "spectral_flatness": v.metrics["spectral_flatness"],
        "rms_dbfs": v.metrics["rms_dbfs"],
        "seam": v.metrics["seam"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--vq-steps", type=int, default=600)
    ap.add_argument("--steps", type=int, default=400, help="optimizer steps of each side")
    ap.add_argument("--coarse-share", type=float, default=0.25,
                    help="the pair's steps spent on the coarse prior")  # fmt: skip
    ap.add_argument("--pair-width", type=int, default=48, help="n_embd of both pair models")
    ap.add_argument("--flat-width", type=int, default=None,
                    help="n_embd of the flat prior (default: the tiny preset's, 64)")  # fmt: skip
    ap.add_argument("--up-layers", type=int, default=1)
    ap.add_argument("--cond-blocks", type=int, default=1)
    ap.add_argument("--cond-pad", type=int, default=4, help="coarse steps seen beyond a window")
    ap.add_argument(
        "--eval-every",
        type=int,
        default=None,
        help="score val every N steps, keep each model's best (else its last)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--primer-seconds", type=float, default=4.0)
    ap.add_argument("--gen-seconds", type=float, default=5.0)
    ap.add_argument("--gen-seeds", type=int, default=1,
                    help="also continue the primer with sampling seeds 7.. 7+N-1 and count "
                    "the seams over the output's 95th percentile")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--refit", action="store_true", help="fit the tokenizer again")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out: dict[str, Any] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                           "torch": torch.__version__, "args": vars(args)}  # fmt: skip
    files = recordings(args.files, args.seconds)
    key = f"{args.files}f-{int(args.seconds)}s-{args.vq_steps}"
    tok, splits, file_splits, fit_s = fitted(files, args.vq_steps, args.refit, key)
    out["tokenizer"] = {"fit_seconds": fit_s, "vocab": tok.vocab_size,
                        "ids": {k: int(v.size) for k, v in splits.items()}}  # fmt: skip
    val_id = file_splits["val"][0]
    primer = primer_cut(tok, decode_audio_bytes(dict(files)[val_id], 16000, 3600),
                        args.primer_seconds)  # fmt: skip
    out["load_start"] = os.getloadavg()
    print(json.dumps(out), flush=True)
    out["runs"] = [run(args, seed, tok, splits, primer) for seed in args.seeds]
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
