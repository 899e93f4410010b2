"""Does a model's music sound like its corpus? Likelihood, sample metrics and near-empty samples.

    .venv/bin/python bench/quality.py                         # the full experiment (slow on CPU)
    .venv/bin/python bench/quality.py --files 24 --steps 300  # the demo's size
    .venv/bin/python bench/quality.py --files 4 --steps 5 --n 2 --lengths 32  # smoke run

The experiment: Bach chorales from music21 (``--files``), the ``remi-chords-tempos`` tokenizer,
a 80/10/10 file split with ``--seed``, then per architecture (``--archs``) a model of the
``--preset`` size trained ``--steps`` steps, and from it

* val and test NLL (nats per token, the training loop's own evaluation);
* unprimed samples: ``--n`` variations of each length in ``--lengths`` from BOS alone;
* primed continuations: the first ``--primer-bars`` bars of each held-out (test) piece;

for which it reports the share of (sample, metric) pairs whose value lies within one standard
deviation of the training files' mean (the comparison every stored sample carries), and the
number of near-empty samples (fewer than ``--min-notes`` notes; for continuations, new notes).
Near-empty samples are listed with the first tokens they are made of, to see *why*.

It runs in-process through the functions the jobs call, not through HTTP: ``build_corpus`` and
``corpus_metrics`` (the tokenize job), ``TrainConfig.from_preset`` + ``train`` (the train job;
the best checkpoint is reloaded with ``load_for_inference`` as the sample job does), and
``cadenza.jobs.handlers.sample.sample_variations`` (the sample job's prompt, generation,
re-sampling guard, decoding and metrics). The web layer adds storage and queues, not music.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from cadenza.datasets import export_bach_chorales  # noqa: E402
from cadenza.evaluate import corpus_metrics  # noqa: E402
from cadenza.jobs.handlers.tokenize import token_names  # noqa: E402
from cadenza.models.checkpoint import load_for_inference  # noqa: E402
from cadenza.sample.params import SampleRequest, SamplingOptions  # noqa: E402
from cadenza.sample.variations import Variation, sample_variations  # noqa: E402
from cadenza.tokenize import build_corpus, encode_primer, tokenizer_hash, vocab_size  # noqa: E402
from cadenza.tokenize.presets import resolve_spec  # noqa: E402
from cadenza.train import TrainConfig, train  # noqa: E402
from cadenza.train.loop import NullHooks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_T0 = time.perf_counter()


def say(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"# {time.perf_counter() - _T0:6.0f} s  {message}", file=sys.stderr, flush=True)


class KeepBest(NullHooks):
    """Hooks that keep the best (else the newest) checkpoint payload in memory."""

    def __init__(self) -> None:
        self.best: bytes | None = None
        self.latest: bytes | None = None

    def on_metrics(self, record: dict[str, Any]) -> None:
        if record.get("split") != "train" or record.get("step", 0) % 100 == 0:
            say(f"step {record.get('step')} {record.get('split')} loss {record.get('loss'):.3f}")

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        self.latest = payload
        if is_best:
            self.best = payload


@dataclass
class Tally:
    """Samples of one kind (unprimed or primed) of one architecture."""

    samples: int = 0
    within: int = 0  # (sample, metric) pairs within 1 sigma of the corpus
    pairs: int = 0
    near_empty: int = 0
    resampled: int = 0
    notes: list[int] = field(default_factory=list)
    empty_heads: list[str] = field(default_factory=list)
    per_metric: Counter[str] = field(default_factory=Counter)  # within 1 sigma, per metric

    def add(self, v: Variation, names: list[str], min_notes: int) -> None:
        self.samples += 1
        self.notes.append(v.new_notes)
        self.resampled += v.attempts - 1
        for name, m in v.metrics.items():
            if isinstance(m, dict) and m.get("corpus_std"):
                self.pairs += 1
                z = m.get("z")
                ok = z is not None and abs(z) <= 1.0
                self.within += int(ok)
                self.per_metric[name] += int(ok)
        if v.new_notes < min_notes:
            self.near_empty += 1
            head = [names[t] if 0 <= t < len(names) else str(t) for t in v.new_ids[:12]]
            kinds = Counter(
                n.split("_", 1)[0] for n in (names[t] for t in v.new_ids if t < len(names))
            )
            self.empty_heads.append(f"{v.new_notes} notes; {' '.join(head)} … {dict(kinds)}")

    @property
    def share(self) -> float:
        return self.within / self.pairs if self.pairs else float("nan")


def build(args: argparse.Namespace) -> tuple[Any, dict[str, Any], dict[str, Any], dict[str, bytes]]:
    """The corpus as the tokenize job builds it, its train-file metrics, and the test files."""
    paths = export_bach_chorales(args.data_dir, args.files)
    files = [(p.stem, p.read_bytes()) for p in paths]
    spec = resolve_spec(preset=args.tokenizer)
    corpus = build_corpus(files, spec, split=(0.8, 0.1, 0.1), seed=args.seed, workers=1)
    by_id = dict(files)
    stats = corpus_metrics(by_id[f] for f in corpus.file_splits.get("train", []))
    test = {f: by_id[f] for f in corpus.file_splits.get("test", [])}
    return corpus, stats, {"splits": {k: len(v) for k, v in corpus.file_splits.items()}}, test


def train_one(arch: str, corpus: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    overrides: dict[str, Any] = {
        "max_steps": args.steps,
        "batch_size": args.batch,
        "seq_len": args.seq_len,
        "seed": args.seed,
        "eval_interval": max(args.steps // 4, 1),
        "eval_batches": args.eval_batches,
    }
    cfg = TrainConfig.from_preset(arch, args.preset, overrides)
    from cadenza.models.registry import resolve_config

    spec = {
        "architecture": arch,
        "config": resolve_config(arch, args.preset, _overrides(args.model)).model_dump(),
        "vocab_size": vocab_size(corpus.tokenizer),
    }
    hooks = KeepBest()
    data = {k: v for k, v in corpus.splits.items() if v.size}
    result = train(spec, data, cfg, hooks, tokenizer_hash=tokenizer_hash(corpus.tokenizer))
    payload = hooks.best or hooks.latest
    assert payload is not None, "training saved no checkpoint"
    model, _ = load_for_inference(payload, "cpu")
    return model, result


def _overrides(text: str) -> dict[str, Any]:
    """`k=v,k=v` → a dict, values parsed as JSON where they can be (ints, floats, bools)."""
    out: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


#: Sampling setups compared by default. The first is what a sample job decoded before the
#: near-empty fixes (stop at the first EOS, no re-sampling); the rest use the job's guard.
SETUPS: dict[str, str] = {
    "stop_at_eos=true,resample_empty=0": "before: cut at the first EOS, no guard",
    "resample_empty=0": "whole row decoded, no guard",
    "": "the job's defaults",
    "temperature=0.9,top_p=0.95": "slightly cooler, nucleus",
    "min_p=0.1": "min-p",
}


def request(setup: str, length: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sampling options, guard options) of a setup, validated as the API validates a request.

    The base is the experiment's: temperature 1, no filters, `stop_at_eos` off, the job's
    near-empty guard; the setup's k=v pairs override it.
    """
    fields = {"max_new_tokens": length, "seed": seed, "stop_at_eos": False, **_overrides(setup)}
    req = SampleRequest.model_validate(fields)
    opts = {name: getattr(req, name) for name in SamplingOptions.model_fields}
    return opts, {"resample_empty": req.resample_empty}


def _sample_setup(
    model: Any,
    tok: Any,
    stats: dict[str, Any],
    test: dict[str, bytes],
    setup: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Unprimed and primed samples of one sampling setup, tallied."""
    names = token_names(tok)
    bos = tok.bos_id
    rows = {"unprimed": Tally(), "primed": Tally()}
    for length in args.lengths:
        opts, guard = request(setup, length, args.seed)
        for v in sample_variations(
            model, tok, [bos], opts, n=args.n, corpus_stats=stats, min_notes=args.min_notes, **guard
        ):
            rows["unprimed"].add(v, names, args.min_notes)
    for k, (_fid, midi) in enumerate(sorted(test.items())[: args.primed]):
        try:
            primer = [bos, *encode_primer(tok, midi, bars=args.primer_bars)]
        except ValueError:
            continue
        opts, guard = request(setup, args.primed_length, args.seed + k)
        for v in sample_variations(
            model, tok, primer, opts, n=1, corpus_stats=stats, min_notes=args.min_notes, **guard
        ):
            rows["primed"].add(v, names, args.min_notes)
    return {
        kind: {
            "samples": t.samples,
            "within_1sd": t.share,
            "near_empty": t.near_empty,
            "resampled": t.resampled,
            "notes": t.notes,
            "empty_heads": t.empty_heads,
            "within_1sd_per_metric": {k: c / max(t.samples, 1) for k, c in t.per_metric.items()},
        }
        for kind, t in rows.items()
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=150)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--archs", nargs="+", default=["gpt", "music-transformer"])
    ap.add_argument("--preset", default="tiny", help="model + training preset")
    ap.add_argument(
        "--model",
        default="n_layer=4,n_head=4,n_embd=128,block_size=512,dropout=0.1",
        help="model config overrides over the preset, k=v,k=v ('' = the preset as is)",
    )
    ap.add_argument("--tokenizer", default="remi-chords-tempos")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--eval-batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="split, training and sampling seed")
    ap.add_argument("--n", type=int, default=8, help="unprimed variations per length")
    ap.add_argument("--lengths", type=int, nargs="+", default=[240, 512])
    ap.add_argument("--primed", type=int, default=8, help="held-out pieces to continue (max)")
    ap.add_argument("--primer-bars", type=int, default=4)
    ap.add_argument("--primed-length", type=int, default=256)
    ap.add_argument(
        "--sampling",
        nargs="+",
        default=list(SETUPS),
        help="sampling setups to compare, each k=v,k=v over the request's fields (temperature,\n"
        "top_p, min_p, stop_at_eos, resample_empty, ...); '' = the defaults below",
    )
    ap.add_argument("--min-notes", type=int, default=10, help="fewer new notes = near-empty")
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".cache" / "bach-midi")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-sample lines")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    say(f"tokenizing {args.files} chorales")
    corpus, stats, info, test = build(args)
    report: dict[str, Any] = {"splits": info["splits"], "archs": {}}
    for arch in args.archs:
        say(f"training {arch} for {args.steps} steps")
        model, result = train_one(arch, corpus, args)
        say(f"{arch}: val NLL {result.best_val_loss}, test NLL {result.test_loss}")
        setups: dict[str, Any] = {}
        for setup in args.sampling:
            say(f"{arch}: sampling with {setup or 'the defaults'}")
            setups[setup] = _sample_setup(model, corpus.tokenizer, stats, test, setup, args)
        report["archs"][arch] = {
            "params": result.num_params,
            "val_nll": result.best_val_loss,
            "test_nll": result.test_loss,
            "setups": setups,
        }
    report["seconds"] = time.perf_counter() - t0
    _print(report, args, argv)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


def _print(report: dict[str, Any], args: argparse.Namespace, argv: list[str] | None) -> None:
    cmd = "python bench/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"Command: `{cmd.strip()}`  ")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
        f"{report['seconds']:.0f} s; files train/val/test {report['splits']}; model "
        f"{args.preset} + `{args.model}`, {args.steps} steps of {args.batch} x {args.seq_len}  "
    )
    print(
        f"Samples: unprimed {args.n} x {args.lengths} new tokens from BOS; primed: first "
        f"{args.primer_bars} bars of up to {args.primed} test pieces + {args.primed_length} new "
        f"tokens; base sampling temperature 1, stop_at_eos off; near-empty = < {args.min_notes} "
        "new notes\n"
    )
    print(
        "| architecture | val NLL | test NLL | sampling | unprimed within 1σ "
        "| unprimed near-empty | primed within 1σ | primed near-empty | re-sampled |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|")
    for arch, r in report["archs"].items():

        def nll(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        for setup, t in r["setups"].items():
            u, p = t["unprimed"], t["primed"]
            print(
                f"| {arch} ({r['params'] / 1e6:.2f} M) | {nll(r['val_nll'])} "
                f"| {nll(r['test_nll'])} | `{setup or 'defaults'}` | {u['within_1sd']:.0%} "
                f"| {u['near_empty']}/{u['samples']} | {p['within_1sd']:.0%} "
                f"| {p['near_empty']}/{p['samples']} | {u['resampled'] + p['resampled']} |"
            )
    if args.quiet:
        return
    for arch, r in report["archs"].items():
        for setup, t in r["setups"].items():
            for kind in ("unprimed", "primed"):
                k = t[kind]
                print(f"\n{arch} `{setup or 'defaults'}` {kind}: new notes {k['notes']}")
                for line in k["empty_heads"]:
                    print(f"  near-empty: {line}")


if __name__ == "__main__":
    main()
