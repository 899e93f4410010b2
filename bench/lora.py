"""LoRA adapters against full fine-tuning at equal steps, on Bach chorales, one process.

    .venv/bin/python bench/lora.py                 # ~5 min on 2 CPU cores
    .venv/bin/python bench/lora.py --quick         # ~1 min, smaller model, fewer steps

The experiment mirrors how a user adapts a shared model: a base `gpt` is trained on the first
chorales (the "public" corpus, REMI + BPE); a second corpus of *other* chorales is tokenized
with the base's saved tokenizer (`build_corpus(..., tokenizer=...)`, what
`POST /v1/corpora {"base_model_id"}` does); then, from the same base checkpoint and for the
same number of steps on that corpus, each row trains through the real loop
(`cadenza.train.train`, the one the `train` job runs):
  * `base, no adaptation`: the base's val loss on the new corpus (the bar to beat);
  * `full fine-tune`: every weight trains (`init_from`, what `init_checkpoint_id` does);
  * `lora rN`: only rank-N adapters train (`adapter=...`, what `base_model_id` + `adapter`
    does), at the full fine-tune's lr and at a higher one (LoRA usually wants more).
Reported per row: trainable parameters, the last checkpoint's bytes (a LoRA checkpoint holds
only the adapter and its optimizer state) and its ratio to the base checkpoint, training
tokens/s (the loop's own figure, eval excluded), and val loss on the new corpus's val split.
Prints a markdown table.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import contextlib  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cadenza.datasets import export_bach_chorales  # noqa: E402
from cadenza.models.adapters import resolve_adapter  # noqa: E402
from cadenza.models.checkpoint import model_from_checkpoint  # noqa: E402
from cadenza.tokenize import (  # noqa: E402
    build_corpus,
    tokenizer_from_bytes,
    tokenizer_hash,
    tokenizer_to_bytes,
)
from cadenza.tokenize.spec import TokenizerSpec  # noqa: E402
from cadenza.train import TrainConfig, train  # noqa: E402
from cadenza.train.data import Batcher  # noqa: E402
from cadenza.train.distributed import current_dist_info  # noqa: E402
from cadenza.train.evaluate import evaluate  # noqa: E402
from cadenza.train.loop import NullHooks  # noqa: E402

CACHE = Path(os.environ.get("CADENZA_TEST_CACHE", Path(__file__).parent.parent / ".cache"))


class Last(NullHooks):
    """Keeps the newest checkpoint payload."""

    payload: bytes = b""

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        self.payload = payload


def corpora(args: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """(base corpus, adaptation corpus tokenized with the base's tokenizer, vocab size)."""
    paths = export_bach_chorales(CACHE / "bach-midi", args.base_files + args.adapt_files)
    files = [(p.stem, p.read_bytes()) for p in paths]
    spec = TokenizerSpec.model_validate({"name": "REMI", "bpe": {"vocab_size": args.bpe}})
    base = build_corpus(files[: args.base_files], spec, split=(0.9, 0.1, 0.0), workers=1)
    saved = tokenizer_from_bytes(tokenizer_to_bytes(base.tokenizer))
    adapt = build_corpus(
        files[args.base_files :], spec, split=(0.8, 0.2, 0.0), workers=1, tokenizer=saved
    )
    assert tokenizer_hash(adapt.tokenizer) == tokenizer_hash(base.tokenizer)
    out = (
        {k: np.asarray(v, "int64") for k, v in base.splits.items() if v.size},
        {k: np.asarray(v, "int64") for k, v in adapt.splits.items() if v.size},
        base.tokenizer.vocab_size,
    )
    base.close()
    adapt.close()
    return out


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    torch.set_num_threads(args.threads)
    base_data, adapt_data, vocab = corpora(args)
    spec = {"architecture": "gpt", "config": dict(args.model), "vocab_size": vocab}
    common = {
        "batch_size": args.batch,
        "seq_len": args.seq,
        "precision": "fp32",
        "compile": False,
        "log_interval": 10,
        "keep_last_n": 1,
    }
    hooks = Last()
    print(f"base: {args.base_steps} steps on {base_data['train'].size:,} tokens", flush=True)
    base_cfg = TrainConfig(
        **common,
        max_steps=args.base_steps,
        eval_interval=args.base_steps,
        warmup_steps=20,
        lr=1e-3,
    )
    train(spec, base_data, base_cfg, hooks, tokenizer_hash="bench")
    base = hooks.payload

    adapt_cfg = TrainConfig(
        **common,
        max_steps=args.steps,
        eval_interval=args.steps,
        warmup_steps=5,
        lr=args.lr,
        seed=1,
    )
    model = model_from_checkpoint(base)
    cpu = torch.device("cpu")
    with torch.no_grad():
        val = evaluate(
            model,
            adapt_data["val"],
            adapt_cfg,
            current_dist_info("cpu"),
            Batcher(cpu),
            contextlib.nullcontext,
        )
    rows: list[dict[str, Any]] = [
        {
            "system": "base, no adaptation",
            "trainable": 0,
            "bytes": len(base),
            "tokens_per_s": None,
            "val_loss": val,
            "seconds": 0.0,
        }
    ]
    systems: list[tuple[str, dict[str, Any] | None, float]] = [
        (f"full fine-tune (lr {args.lr:g})", None, args.lr),
        (f"lora r{args.rank}, all layers (lr {args.lr:g})", {"rank": args.rank}, args.lr),
        (
            f"lora r{args.rank}, all layers (lr {args.lora_lr:g})",
            {"rank": args.rank},
            args.lora_lr,
        ),
        (
            f"lora r{args.rank}, attn.c_attn only (lr {args.lora_lr:g})",
            {"rank": args.rank, "targets": ["attn.c_attn"]},
            args.lora_lr,
        ),
    ]
    for name, adapter, lr in systems:
        print(f"{name}: {args.steps} steps", flush=True)
        cfg = adapt_cfg.model_copy(update={"lr": lr})
        hooks = Last()
        started = time.perf_counter()
        result = train(
            spec,
            adapt_data,
            cfg,
            hooks,
            tokenizer_hash="bench",
            init_from=base,
            adapter=resolve_adapter("gpt", {**adapter, "alpha": 2 * adapter["rank"]})
            if adapter
            else None,
        )
        rows.append(
            {
                "system": name,
                "trainable": result.trainable_params,
                "bytes": len(hooks.payload),
                "tokens_per_s": result.tokens_per_s,
                "val_loss": result.final_val_loss,
                "seconds": time.perf_counter() - started,
            }
        )
    return rows


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    base_bytes = rows[0]["bytes"]
    full = rows[1]
    lines = [
        f"`python bench/lora.py{' --quick' if args.quick else ''}`: `gpt` {args.model}, "
        f"base {args.base_steps} steps on {args.base_files} chorales, adaptation "
        f"{args.steps} steps on {args.adapt_files} other chorales (batch {args.batch} x "
        f"{args.seq}, fp32, {args.threads} threads); {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}.",
        "",
        "| system | trainable params | checkpoint bytes | vs base checkpoint | tokens/s | "
        "vs full fine-tune | val loss (new corpus) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        tps = r["tokens_per_s"]
        rate = "" if tps is None else f"{tps:,.0f}"
        ratio = "" if tps is None else f"{tps / full['tokens_per_s']:.2f}x"
        lines.append(
            f"| {r['system']} | {r['trainable']:,} | {r['bytes']:,} | "
            f"{r['bytes'] / base_bytes:.3f} | {rate} | {ratio} | {r['val_loss']:.4f} |"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--base-files", type=int, default=40)
    ap.add_argument("--adapt-files", type=int, default=16)
    ap.add_argument("--bpe", type=int, default=600)
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    args.model = {"n_layer": 4, "n_head": 4, "n_embd": 256, "block_size": 256, "dropout": 0.0}
    if args.quick:
        args.base_files, args.adapt_files, args.base_steps, args.steps = 16, 8, 60, 30
        args.model = {"n_layer": 2, "n_head": 2, "n_embd": 128, "block_size": 128, "dropout": 0.0}
    return args


def main(argv: list[str] | None = None) -> str:
    args = parse(argv)
    text = report(run(args), args)
    print(text)
    return text


if __name__ == "__main__":
    main()
