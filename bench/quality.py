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
deviation of the reference's mean, and the number of near-empty samples (fewer than
``--min-notes`` notes; for continuations, new notes). Near-empty samples are listed with the
first tokens they are made of, to see *why*. Two references, both reported:

* ``excerpts`` (the headline): the openings of the training pieces cut to the sample's own
  length in tokens, decoded and measured like the sample (``cadenza.evaluate.excerpt_metrics``).
  A sample from BOS, or a primer's first bars plus a continuation, *is* a piece's opening of
  that length, and pitch range or pitches used depend on length;
* ``whole``: the training files whole, which is what a stored sample's metrics carry (the
  tokenize job's ``corpus_metrics``); a 4-bar sample misses them for being short alone.

The first row measures the held-out pieces' openings exactly as unprimed samples are: real
music does not score 100 % (about 68 % of a normal spread lies within 1σ), so it is the row
the models' shares are read against.

It runs in-process through the functions the jobs call, not through HTTP: ``build_corpus`` and
``corpus_metrics`` (the tokenize job), ``TrainConfig.from_preset`` + ``train`` (the train job;
the best checkpoint, in the inference format of ``cadenza.models.checkpoint``, is reloaded with
``load_for_inference`` as the sample job does), and ``cadenza.sample.variations`` (the sample
job's generation, re-sampling guard, decoding and metrics). The web layer adds storage and
queues, not music.

Stages, for training on another machine (one with a GPU and only torch, numpy and pydantic)::

    python bench/quality.py --stage corpus --out DIR            # corpus, splits, references
    python bench/quality.py --stage train --from DIR --device cuda --steps 800
    python bench/quality.py --stage sample --from DIR           # samples, metrics, the table

DIR holds plain files (token arrays as .npy, the tokenizer, the test pieces' MIDI, JSON, and
one inference checkpoint per architecture: a few MB). The train stage imports only torch,
numpy, pydantic, ``cadenza.models`` and ``cadenza.train``. Without ``--stage`` the script runs
the three stages in one process, through the same files (in ``--out`` or a temporary folder).
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
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

# Only the standard library at module level: each stage imports what it needs, so the train
# stage runs where MidiTok, symusic and music21 are not installed.

ROOT = Path(__file__).resolve().parent.parent
_T0 = time.perf_counter()
SPLITS = ("train", "val", "test")


def say(message: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"# {time.perf_counter() - _T0:6.0f} s  {message}", file=sys.stderr, flush=True)


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


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, indent=1))


# ----------------------------------------------------------------------------- stage: corpus


def stage_corpus(args: argparse.Namespace, out: Path) -> None:
    """Build the corpus as the tokenize job does and write what the other stages need.

    `corpus.json` (split sizes, vocabulary, tokenizer hash, BOS id, the arguments used),
    `tokenizer.bin`, `{train,val,test}.npy` (the token streams training reads),
    `corpus_stats.json` (the train files' whole-file metrics, as the tokenize job stores them)
    and `test/*.mid` (the held-out pieces whose first bars prime the continuations).
    """
    import numpy as np

    from cadenza.datasets import export_bach_chorales
    from cadenza.evaluate import corpus_metrics
    from cadenza.tokenize import build_corpus, tokenizer_hash, tokenizer_to_bytes, vocab_size
    from cadenza.tokenize.presets import resolve_spec

    say(f"tokenizing {args.files} chorales")
    paths = export_bach_chorales(args.data_dir, args.files)
    files = [(p.stem, p.read_bytes()) for p in paths]
    spec = resolve_spec(preset=args.tokenizer)
    corpus = build_corpus(files, spec, split=(0.8, 0.1, 0.1), seed=args.seed, workers=1)
    by_id = dict(files)
    out.mkdir(parents=True, exist_ok=True)
    (out / "test").mkdir(exist_ok=True)
    for name in SPLITS:
        arr = corpus.splits.get(name)
        if arr is not None and arr.size:
            np.save(out / f"{name}.npy", np.asarray(arr))
    for fid in corpus.file_splits.get("test", []):
        (out / "test" / f"{fid}.mid").write_bytes(by_id[fid])
    tok = corpus.tokenizer
    (out / "tokenizer.bin").write_bytes(tokenizer_to_bytes(tok))
    stats = corpus_metrics(by_id[f] for f in corpus.file_splits.get("train", []))
    _write_json(out / "corpus_stats.json", stats)
    _write_json(
        out / "corpus.json",
        {
            "splits": {k: len(v) for k, v in corpus.file_splits.items()},
            "vocab_size": vocab_size(tok),
            "tokenizer_hash": tokenizer_hash(tok),
            "bos_id": tok.bos_id,
            "files": args.files,
            "tokenizer": args.tokenizer,
            "seed": args.seed,
        },
    )


# ----------------------------------------------------------------------------- stage: train


def stage_train(args: argparse.Namespace, src: Path) -> None:
    """Train each architecture on the corpus in `src`; write checkpoints and NLL there.

    Imports only torch, numpy, pydantic, `cadenza.models` and `cadenza.train` (a GPU machine
    with nothing else installed runs it). The best checkpoint (else the newest) is kept in the
    inference format (`model_checkpoint`: weights, spec, tokenizer hash, step; no optimiser
    state, so it stays small) as `{arch}.pt`; `train.json` has the NLL and the arguments.
    """
    import numpy as np
    import torch

    from cadenza.models.checkpoint import (
        MODEL_SPEC_KEY,
        MODEL_STATE_KEY,
        STEP_KEY,
        dump_checkpoint,
        load_checkpoint,
        model_checkpoint,
    )
    from cadenza.models.registry import resolve_config
    from cadenza.train import NullHooks, TrainConfig, train

    class KeepBest(NullHooks):
        """Hooks that keep the best (else the newest) checkpoint payload in memory."""

        def __init__(self) -> None:
            self.best: bytes | None = None
            self.latest: bytes | None = None

        def on_metrics(self, record: dict[str, Any]) -> None:
            if record.get("split") != "train" or record.get("step", 0) % 100 == 0:
                say(
                    f"step {record.get('step')} {record.get('split')} loss {record.get('loss'):.3f}"
                )

        def save_checkpoint(
            self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
        ) -> None:
            self.latest = payload
            if is_best:
                self.best = payload

    meta = _read_json(src / "corpus.json")
    data = {n: np.load(src / f"{n}.npy") for n in SPLITS if (src / f"{n}.npy").exists()}
    torch.manual_seed(args.seed)
    report: dict[str, Any] = {
        "args": {
            k: getattr(args, k)
            for k in (
                "steps",
                "archs",
                "preset",
                "model",
                "train",
                "batch",
                "seq_len",
                "eval_batches",
            )
        },
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "torch": torch.__version__,
        "archs": {},
    }
    for arch in args.archs:
        say(f"training {arch} for {args.steps} steps")
        overrides: dict[str, Any] = {
            "max_steps": args.steps,
            "batch_size": args.batch,
            "seq_len": args.seq_len,
            "seed": args.seed,
            "eval_interval": max(args.steps // 4, 1),
            "eval_batches": args.eval_batches,
            **_overrides(args.train),
        }
        cfg = TrainConfig.from_preset(arch, args.preset, overrides)
        spec = {
            "architecture": arch,
            "config": resolve_config(arch, args.preset, _overrides(args.model)).model_dump(),
            "vocab_size": meta["vocab_size"],
        }
        hooks = KeepBest()
        t0 = time.perf_counter()
        result = train(
            spec, data, cfg, hooks, tokenizer_hash=meta["tokenizer_hash"], device=args.device
        )
        seconds = time.perf_counter() - t0
        payload = hooks.best or hooks.latest
        assert payload is not None, "training saved no checkpoint"
        full = load_checkpoint(payload)
        inference = model_checkpoint(
            full[MODEL_STATE_KEY],
            full[MODEL_SPEC_KEY],
            tokenizer_hash=meta["tokenizer_hash"],
            step=int(full[STEP_KEY]),
        )
        (src / f"{arch}.pt").write_bytes(dump_checkpoint(inference))
        say(f"{arch}: val NLL {result.best_val_loss}, test NLL {result.test_loss}, {seconds:.0f} s")
        report["archs"][arch] = {
            "params": result.num_params,
            "val_nll": result.best_val_loss,
            "test_nll": result.test_loss,
            "step": int(full[STEP_KEY]),
            "seconds": seconds,
        }
        _write_json(src / "train.json", report)  # after each arch: a partial run still counts


# ----------------------------------------------------------------------------- stage: sample


@dataclass
class Tally:
    """Samples of one kind (unprimed or primed) of one architecture."""

    samples: int = 0
    within: Counter[str] = field(default_factory=Counter)  # per reference: pairs within 1 σ
    pairs: Counter[str] = field(default_factory=Counter)  # per reference: (sample, metric) pairs
    near_empty: int = 0
    resampled: int = 0
    notes: list[int] = field(default_factory=list)
    empty_heads: list[str] = field(default_factory=list)
    per_metric: dict[str, Counter[str]] = field(default_factory=dict)  # reference → metric → n

    def add(
        self,
        v: Any,
        by_reference: dict[str, dict[str, Any]],
        names: list[str],
        min_notes: int,
    ) -> None:
        """Count one variation; `by_reference` is `compare(...)` against each reference."""
        self.samples += 1
        self.notes.append(v.new_notes)
        self.resampled += v.attempts - 1
        for ref, metrics in by_reference.items():
            counts = self.per_metric.setdefault(ref, Counter())
            for name, m in metrics.items():
                if m.get("corpus_std"):
                    self.pairs[ref] += 1
                    z = m.get("z")
                    ok = z is not None and abs(z) <= 1.0
                    self.within[ref] += int(ok)
                    counts[name] += int(ok)
        if v.new_notes < min_notes:
            self.near_empty += 1
            head = [names[t] if 0 <= t < len(names) else str(t) for t in v.new_ids[:12]]
            kinds = Counter(
                n.split("_", 1)[0] for n in (names[t] for t in v.new_ids if t < len(names))
            )
            self.empty_heads.append(f"{v.new_notes} notes; {' '.join(head)} … {dict(kinds)}")

    def share(self, ref: str) -> float:
        return self.within[ref] / self.pairs[ref] if self.pairs[ref] else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "within_1sd": {ref: self.share(ref) for ref in self.pairs},
            "near_empty": self.near_empty,
            "resampled": self.resampled,
            "notes": self.notes,
            "empty_heads": self.empty_heads,
            "within_1sd_per_metric": {
                ref: {k: c / max(self.samples, 1) for k, c in counts.items()}
                for ref, counts in self.per_metric.items()
            },
        }


class Excerpts:
    """The length-matched reference: metrics of the train pieces' openings, cached per length."""

    def __init__(self, tok: Any, stream: Any, max_excerpts: int, seed: int) -> None:
        import numpy as np

        self.tok = tok
        self.stream = stream
        self.starts = [int(i) for i in np.flatnonzero(stream == tok.bos_id)]
        self.max_excerpts = max_excerpts
        self.seed = seed
        self._cache: dict[tuple[int, bool], dict[str, dict[str, float]]] = {}

    def stats(self, length: int, stop_at_eos: bool) -> dict[str, dict[str, float]]:
        from cadenza.evaluate import excerpt_metrics
        from cadenza.tokenize import decode_to_midi

        key = (length, stop_at_eos)
        if key not in self._cache:
            self._cache[key] = excerpt_metrics(
                self.stream,
                self.starts,
                length,
                lambda ids: decode_to_midi(self.tok, ids, stop_at_eos=stop_at_eos),
                max_excerpts=self.max_excerpts,
                seed=self.seed,
            )
        return self._cache[key]


#: Sampling setups compared by default. The first is what a sample job decoded before the
#: near-empty fixes (stop at the first EOS, no re-sampling); the rest use the job's guard.
SETUPS: dict[str, str] = {
    "stop_at_eos=true,resample_empty=0": "before: cut at the first EOS, no guard",
    "": "the job's defaults",
    "temperature=0.9,top_p=0.95": "slightly cooler, nucleus",
    "min_p=0.1": "min-p",
    "min_p=0.2": "stronger min-p",
}


def request(setup: str, length: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(sampling options, guard options) of a setup, validated as the API validates a request.

    The base is the experiment's: temperature 1, no filters, `stop_at_eos` off, the job's
    near-empty guard; the setup's k=v pairs override it.
    """
    from cadenza.sample.params import SampleRequest, SamplingOptions

    fields = {"max_new_tokens": length, "seed": seed, "stop_at_eos": False, **_overrides(setup)}
    req = SampleRequest.model_validate(fields)
    opts = {name: getattr(req, name) for name in SamplingOptions.model_fields}
    return opts, {"resample_empty": req.resample_empty}


def _sample_setup(
    model: Any,
    tok: Any,
    whole: dict[str, Any],
    excerpts: Excerpts,
    test: dict[str, bytes],
    setup: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Unprimed and primed samples of one sampling setup, tallied against both references."""
    from cadenza.evaluate import compare
    from cadenza.jobs.handlers.tokenize import token_names
    from cadenza.sample.variations import sample_variations
    from cadenza.tokenize import encode_primer

    names = token_names(tok)
    bos = tok.bos_id
    rows = {"unprimed": Tally(), "primed": Tally()}

    def tally(kind: str, prompt: list[int], opts: dict[str, Any], guard: dict[str, Any], n: int):
        stop = bool(opts.get("stop_at_eos", True))
        for v in sample_variations(
            model, tok, prompt, opts, n=n, corpus_stats=whole, min_notes=args.min_notes, **guard
        ):
            raw = {name: m["sample"] for name, m in v.metrics.items()}
            refs = {"excerpts": compare(raw, excerpts.stats(len(v.ids), stop)), "whole": v.metrics}
            rows[kind].add(v, refs, names, args.min_notes)

    for length in args.lengths:
        opts, guard = request(setup, length, args.seed)
        tally("unprimed", [bos], opts, guard, args.n)
    for k, (_fid, midi) in enumerate(sorted(test.items())[: args.primed]):
        try:
            primer = [bos, *encode_primer(tok, midi, bars=args.primer_bars)]
        except ValueError:
            continue
        opts, guard = request(setup, args.primed_length, args.seed + k)
        tally("primed", primer, opts, guard, 1)
    return {kind: t.summary() for kind, t in rows.items()}


def _ceiling(tok: Any, whole: dict[str, Any], excerpts: Excerpts, src: Path, args: Any) -> Any:
    """Held-out pieces' openings (val and test) measured exactly as unprimed samples are.

    What a model that writes just like the corpus would score: within 1σ is not 100 % for
    real music (about 68 % of a normal spread lies within 1σ, less for skewed metrics), so the
    samples' shares are read against this row, not against 100 %.
    """
    import numpy as np

    from cadenza.evaluate import compare, midi_metrics
    from cadenza.sample.variations import decode_variation

    tally = Tally()
    for name in ("val", "test"):
        if not (src / f"{name}.npy").exists():
            continue
        arr = np.load(src / f"{name}.npy")
        for start in np.flatnonzero(arr == tok.bos_id):
            for length in args.lengths:
                ids = [int(t) for t in arr[start : start + length + 1]]
                midi, notes, _ = decode_variation(tok, [], ids, stop_at_eos=False)
                raw = midi_metrics(midi)
                refs = {
                    "excerpts": compare(raw, excerpts.stats(len(ids), False)),
                    "whole": compare(raw, whole),
                }
                piece = argparse.Namespace(new_notes=notes, attempts=1, new_ids=ids[1:])
                tally.add(piece, refs, [], args.min_notes)
    return tally.summary()


def stage_sample(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    """Sample each checkpoint in `src` with each setup; measure; return (and print) the report."""
    import numpy as np
    import torch

    from cadenza.models.checkpoint import load_for_inference
    from cadenza.tokenize import tokenizer_from_bytes

    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    meta = _read_json(src / "corpus.json")
    trained: dict[str, Any] = {"args": {}, "device": "n/a", "torch": "n/a", "archs": {}}
    if (src / "train.json").exists():  # else only the held-out row (no model trained yet)
        trained = _read_json(src / "train.json")
    tok = tokenizer_from_bytes((src / "tokenizer.bin").read_bytes())
    whole = _read_json(src / "corpus_stats.json")
    excerpts = Excerpts(tok, np.load(src / "train.npy"), args.max_excerpts, args.seed)
    test = {p.stem: p.read_bytes() for p in sorted((src / "test").glob("*.mid"))}
    report: dict[str, Any] = {"corpus": meta, "train": trained, "archs": {}}
    say("measuring held-out pieces' openings as if they were samples")
    report["held_out"] = _ceiling(tok, whole, excerpts, src, args)
    for arch, t in trained["archs"].items():
        if arch not in args.archs:
            continue
        model, _ = load_for_inference((src / f"{arch}.pt").read_bytes(), "cpu")
        setups: dict[str, Any] = {}
        for setup in args.sampling:
            say(f"{arch}: sampling with {setup or 'the defaults'}")
            setups[setup] = _sample_setup(model, tok, whole, excerpts, test, setup, args)
        report["archs"][arch] = {**t, "setups": setups}
    report["seconds"] = time.perf_counter() - t0
    return report


# ----------------------------------------------------------------------------- the report


def _print(report: dict[str, Any], args: argparse.Namespace, argv: list[str] | None) -> None:
    import torch

    cmd = "python bench/quality.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    tr, corpus = report["train"], report["corpus"]
    targs = {k: getattr(args, k) for k in ("preset", "model", "steps", "batch", "seq_len")}
    targs.update(tr["args"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"Command: `{cmd.strip()}`  ")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, load "
        f"{load:.1f}; sampling took {report['seconds']:.0f} s; trained on {tr['device']} (torch "
        f"{tr['torch']}); {corpus['files']} files `{corpus['tokenizer']}`, train/val/test "
        f"{corpus['splits']}; model {targs['preset']} + `{targs['model']}`, {targs['steps']} "
        f"steps of {targs['batch']} x {targs['seq_len']}"
        + (f" + `{targs['train']}`" if targs.get("train") else "")
        + "  "
    )
    print(
        f"Samples: unprimed {args.n} x {args.lengths} new tokens from BOS; primed: first "
        f"{args.primer_bars} bars of up to {args.primed} test pieces + {args.primed_length} new "
        f"tokens; base sampling temperature 1, stop_at_eos off; near-empty = < {args.min_notes} "
        "new notes. Within 1σ of the train pieces' openings of the sample's length (excerpts) "
        "and of the whole train files (whole)\n"
    )
    print(
        "| architecture | val NLL | test NLL | sampling | unprimed 1σ excerpts | unprimed 1σ whole "
        "| unprimed near-empty | primed 1σ excerpts | primed 1σ whole | primed near-empty "
        "| re-sampled |"
    )
    print("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")

    def pct(x: float | None) -> str:
        return "n/a" if x is None or x != x else f"{x:.0%}"

    h = report["held_out"]
    print(
        f"| held-out pieces' openings (val + test, as unprimed samples) | | | | "
        f"{pct(h['within_1sd'].get('excerpts'))} | {pct(h['within_1sd'].get('whole'))} "
        f"| {h['near_empty']}/{h['samples']} | | | | |"
    )

    def nll(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    for arch, r in report["archs"].items():
        for setup, t in r["setups"].items():
            u, p = t["unprimed"], t["primed"]
            print(
                f"| {arch} ({r['params'] / 1e6:.2f} M) | {nll(r['val_nll'])} "
                f"| {nll(r['test_nll'])} | `{setup or 'defaults'}` "
                f"| {pct(u['within_1sd'].get('excerpts'))} | {pct(u['within_1sd'].get('whole'))} "
                f"| {u['near_empty']}/{u['samples']} "
                f"| {pct(p['within_1sd'].get('excerpts'))} | {pct(p['within_1sd'].get('whole'))} "
                f"| {p['near_empty']}/{p['samples']} | {u['resampled'] + p['resampled']} |"
            )
    if args.quiet:
        return
    for arch, r in report["archs"].items():
        for setup, t in r["setups"].items():
            for kind in ("unprimed", "primed"):
                k = t[kind]
                print(f"\n{arch} `{setup or 'defaults'}` {kind}: new notes {k['notes']}")
                per = k["within_1sd_per_metric"]
                for metric in per.get("excerpts", {}):
                    print(
                        f"  {metric}: within 1σ excerpts {per['excerpts'][metric]:.2f}, "
                        f"whole {per.get('whole', {}).get(metric, float('nan')):.2f}"
                    )
                for line in k["empty_heads"]:
                    print(f"  near-empty: {line}")


# ----------------------------------------------------------------------------- main


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--stage",
        choices=("corpus", "train", "sample"),
        default=None,
        help="run one stage (default: all three in this process)",
    )
    ap.add_argument("--out", type=Path, default=None, help="the stages' folder (corpus stage)")
    ap.add_argument(
        "--from", dest="src", type=Path, default=None, help="the stages' folder (train, sample)"
    )
    ap.add_argument("--device", default=None, help="training device (default: cuda if present)")
    ap.add_argument("--files", type=int, default=150)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--archs", nargs="+", default=["gpt", "music-transformer"])
    ap.add_argument("--preset", default="tiny", help="model + training preset")
    ap.add_argument(
        "--model",
        default="n_layer=4,n_head=4,n_embd=128,block_size=512,dropout=0.1",
        help="model config overrides over the preset, k=v,k=v ('' = the preset as is)",
    )
    ap.add_argument(
        "--train",
        default="",
        help="training config overrides, k=v,k=v (lr, warmup_steps, window_grid, ...)",
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
    ap.add_argument(
        "--max-excerpts", type=int, default=200, help="train openings in the excerpt reference"
    )
    ap.add_argument("--data-dir", type=Path, default=ROOT / ".cache" / "bach-midi")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("-q", "--quiet", action="store_true", help="no per-sample lines")
    args = ap.parse_args(argv)
    if args.stage == "corpus" and args.out is None:
        ap.error("--stage corpus needs --out DIR")
    if args.stage in ("train", "sample") and args.src is None:
        ap.error(f"--stage {args.stage} needs --from DIR (written by --stage corpus)")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.stage == "corpus":
        stage_corpus(args, args.out)
        return {}
    if args.stage == "train":
        stage_train(args, args.src)
        return _read_json(args.src / "train.json")
    if args.stage == "sample":
        report = stage_sample(args, args.src)
    else:
        with tempfile.TemporaryDirectory(prefix="cadenza-quality-") as tmp:
            folder = args.out or Path(tmp)
            stage_corpus(args, folder)
            stage_train(args, folder)
            report = stage_sample(args, folder)
    _print(report, args, argv)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
