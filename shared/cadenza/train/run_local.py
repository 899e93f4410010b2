"""Train from an .npz corpus into a folder, without any server: alone or under torchrun.

    python -m cadenza.train.run_local --data corpus.npz --architecture music-transformer \\
        --preset tiny --out runs/demo [--set max_steps=200 --set batch_size=8]
    torchrun --nproc_per_node=2 -m cadenza.train.run_local --data corpus.npz ... --out runs/ddp

The .npz holds 1-D token arrays `train_data` and `val_data` (the layout `cadenza.tokenize`
exports a corpus in), optionally `test_data`, `vocab_size` and `tokenizer_hash`. Checkpoints go
to OUT/checkpoints (atomic write-then-rename, newest `keep_last_n` kept, plus OUT/best.pt),
metrics to OUT/metrics.jsonl,
the result to OUT/result.json. Rerunning the same command resumes from the newest checkpoint;
`touch OUT/STOP` or SIGTERM stops it after saving one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from cadenza.atomic import write_atomic
from cadenza.models.checkpoint import export_safetensors
from cadenza.train.checkpoint import checkpoints_to_prune
from cadenza.train.config import TrainConfig
from cadenza.train.distributed import cleanup_distributed, init_distributed
from cadenza.train.loop import TrainResult, train

_CKPT_PREFIX = "step-"
_CKPT_SUFFIX = ".pt"


class FileHooks:
    """`TrainHooks` backed by a local folder; the job-backed hooks do the same against SQL/S3."""

    def __init__(self, out_dir: Path, *, keep_last_n: int, echo: bool = True) -> None:
        self.out_dir = out_dir
        self.ckpt_dir = out_dir / "checkpoints"
        self.keep_last_n = keep_last_n
        self.echo = echo
        self.stop_requested = False
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: k8s sends SIGTERM before killing a pod; finish the step and save."""
        self.stop_requested = True

    def on_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line (readable while training runs: `tail -f metrics.jsonl`)."""
        with (self.out_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_progress(self, fraction: float, message: str) -> None:
        """Keep progress.json current and echo the line to stderr."""
        body = json.dumps({"progress": fraction, "message": message}).encode()
        write_atomic(self.out_dir / "progress.json", body)
        if self.echo:
            print(f"[{fraction:6.1%}] {message}", file=sys.stderr, flush=True)

    def should_stop(self) -> bool:
        """Cancelled by a signal or by `touch OUT/STOP`."""
        return self.stop_requested or (self.out_dir / "STOP").exists()

    def _steps(self) -> list[int]:
        steps = []
        for path in self.ckpt_dir.glob(f"{_CKPT_PREFIX}*{_CKPT_SUFFIX}"):
            digits = path.name[len(_CKPT_PREFIX) : -len(_CKPT_SUFFIX)]
            if digits.isdigit():
                steps.append(int(digits))
        return steps

    def _path(self, step: int) -> Path:
        return self.ckpt_dir / f"{_CKPT_PREFIX}{step:09d}{_CKPT_SUFFIX}"

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        """Write atomically, copy to best.pt when best, then prune the oldest beyond keep_last_n."""
        write_atomic(self._path(step), payload)
        if is_best:
            write_atomic(self.out_dir / "best.pt", payload)
        for old in checkpoints_to_prune(self._steps(), keep_last_n=self.keep_last_n):
            self._path(old).unlink(missing_ok=True)

    def load_latest_checkpoint(self) -> bytes | None:
        """The newest step file, or None on a fresh folder."""
        steps = self._steps()
        return self._path(max(steps)).read_bytes() if steps else None


def _parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """`key=value` pairs; values parsed as JSON when possible (numbers, true, null, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def load_npz(path: Path) -> tuple[dict[str, np.ndarray], int | None, str | None]:
    """Token splits plus the optional vocab_size / tokenizer_hash stored with them."""
    with np.load(path, allow_pickle=False) as npz:
        names = set(npz.files)
        data: dict[str, np.ndarray] = {}
        for split in ("train", "val", "test"):
            for key in (f"{split}_data", split):
                if key in names:
                    data[split] = np.asarray(npz[key]).reshape(-1)
                    break
        vocab = int(npz["vocab_size"]) if "vocab_size" in names else None
        token_hash = str(npz["tokenizer_hash"]) if "tokenizer_hash" in names else None
    missing = [s for s in ("train", "val") if s not in data]
    if missing:
        raise SystemExit(
            f"{path} has no {' or '.join(missing)} split; expected arrays train_data and "
            f"val_data (found: {', '.join(sorted(names)) or 'nothing'})"
        )
    return data, vocab, token_hash


def build_parser() -> argparse.ArgumentParser:
    """The command line (kept separate so `--help` documents every option)."""
    parser = argparse.ArgumentParser(
        prog="python -m cadenza.train.run_local",
        description="Train a Cadenza model from an .npz token corpus into a folder.",
    )
    parser.add_argument("--data", type=Path, required=True, help=".npz with train_data/val_data")
    parser.add_argument("--architecture", required=True, help="gpt, music-transformer, gru, lstm")
    parser.add_argument("--preset", default="tiny", help="model + training preset (default tiny)")
    parser.add_argument("--out", type=Path, required=True, help="run folder (resumes if present)")
    parser.add_argument(
        "--set",
        dest="train_set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="training override, e.g. --set max_steps=500 --set precision=fp32",
    )
    parser.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model config override, e.g. --model-set dropout=0.1",
    )
    parser.add_argument("--vocab-size", type=int, default=None, help="default: from the .npz")
    parser.add_argument("--tokenizer-hash", default=None, help="default: from the .npz")
    parser.add_argument("--init-from", type=Path, default=None, help="checkpoint to fine-tune")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--bos-id",
        type=int,
        default=None,
        help="the tokenizer's BOS id, needed with --set window_grid=N (file starts)",
    )
    parser.add_argument(
        "--export-safetensors",
        action="store_true",
        help="also write OUT/model.safetensors (best weights) at the end",
    )
    return parser


def main(argv: list[str] | None = None) -> TrainResult:
    """Parse arguments, join torchrun's process group if any, train, write result.json."""
    args = build_parser().parse_args(argv)
    from cadenza.models import resolve_config

    data, npz_vocab, npz_hash = load_npz(args.data)
    vocab_size = args.vocab_size or npz_vocab
    if vocab_size is None:
        vocab_size = int(max(int(np.max(a)) for a in data.values() if a.size)) + 1
    tokenizer_hash = args.tokenizer_hash or npz_hash or f"unknown-vocab-{vocab_size}"
    model_config = resolve_config(
        args.architecture, args.preset, _parse_assignments(args.model_set, "--model-set")
    )
    cfg = TrainConfig.from_preset(
        args.architecture, args.preset, _parse_assignments(args.train_set, "--set")
    )
    spec = {"architecture": args.architecture, "config": model_config, "vocab_size": vocab_size}

    info = init_distributed()
    hooks = FileHooks(args.out, keep_last_n=cfg.keep_last_n, echo=info.is_main)
    signal.signal(signal.SIGTERM, hooks.request_stop)
    signal.signal(signal.SIGINT, hooks.request_stop)
    init_from = args.init_from.read_bytes() if args.init_from else None
    try:
        result = train(
            spec,
            data,
            cfg,
            hooks,
            tokenizer_hash=tokenizer_hash,
            init_from=init_from,
            device=args.device,
            bos_id=args.bos_id,
        )
        if info.is_main:
            write_atomic(
                args.out / "result.json",
                json.dumps(dataclasses.asdict(result), indent=2).encode(),
            )
            if args.export_safetensors:
                best = args.out / "best.pt"
                source = best if best.exists() else None
                payload = source.read_bytes() if source else hooks.load_latest_checkpoint()
                if payload is not None:
                    write_atomic(args.out / "model.safetensors", export_safetensors(payload))
            print(json.dumps(dataclasses.asdict(result)))
    finally:
        cleanup_distributed()
    return result


if __name__ == "__main__":
    main()
