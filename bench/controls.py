"""Do attribute controls move the music? Train a small model on chorales with controls, sample
with low and high requested values, and measure what the samples realise.

    PYTHONPATH=shared .venv/bin/python bench/controls.py --files 60 --steps 300

Steps: a REMI corpus with the per-bar controls (note_density, polyphony, pitch_range,
duration) is built from `--files` Bach chorales (music21's corpus), a `tiny` music transformer
trains `--steps` steps on it (CPU), then for each control and each requested value in its
sweep, `--n` variations of `--bars` bars are sampled with that value forced in every bar
(`cadenza.sample.steer`, what a sample job does). Each sample is decoded to MIDI and measured
bar by bar with the tokenizer's own measure (`MidiTokTokenizer.bar_facts`, the numbers the
control tokens state in training). Reported per control: the Pearson correlation between
requested and realised values over all measured bars, and the ratio of the mean realised value
at the highest request to that at the lowest. An uncontrolled run (same model, same seeds,
no controls) gives each control's baseline mean.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

#: The requested values swept per control (low → high), in the controls' own units.
SWEEPS: dict[str, list[Any]] = {
    "note_density": [4, 8, 12, 16, 20],
    "polyphony": [1, 2, 3, 4],
    "pitch_range": [[48, 60], [55, 67], [60, 72], [67, 79]],
    "duration": [0.25, 0.5, 1.0, 2.0],
}


#: Per track (one chorale part), the swept values: a part has 1-8 notes a bar, not a piece's 4-20.
TRACK_SWEEPS: dict[str, list[Any]] = {**SWEEPS, "note_density": [1, 2, 4, 6, 8]}


def realised(name: str, facts: Any) -> float | None:
    """The bar's value of control `name` (pitch_range: the middle of its range)."""
    if name == "note_density":
        return float(facts.notes)
    if name == "polyphony":
        return float(facts.polyphony)
    if name == "pitch_range":
        return None if facts.low is None else (facts.low + facts.high) / 2
    return facts.mean_beats


def requested(name: str, value: Any) -> float:
    return (value[0] + value[1]) / 2 if name == "pitch_range" else float(value)


def pearson(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return float("nan")
    mx, my = sum(xs) / n, sum(ys) / n
    sx = math.sqrt(sum((x - mx) ** 2 for x in xs))
    sy = math.sqrt(sum((y - my) ** 2 for y in ys))
    return (
        sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / (sx * sy)
        if sx and sy
        else float("nan")
    )


def build(
    files: list[tuple[str, bytes]], controls: list[str], seed: int = 0, multitrack: bool = False
) -> Any:
    """A REMI corpus with `controls` from (id, MIDI bytes) pairs (one process); with
    `multitrack`, an MMM corpus (the `multitrack` preset: tracks kept apart, per-track bars)."""
    from cadenza.midi.clean import CleanOptions
    from cadenza.tokenize import build_corpus
    from cadenza.tokenize.presets import resolve_spec
    from cadenza.tokenize.spec import TokenizerSpec

    if not multitrack:
        spec = TokenizerSpec(name="REMI", controls=controls)  # type: ignore[arg-type]
        return build_corpus(files, spec, split=(0.8, 0.1, 0.1), seed=seed, workers=1)
    base = resolve_spec(preset="multitrack").model_dump()
    spec = TokenizerSpec.model_validate({**base, "controls": controls})
    clean = CleanOptions(merge_tracks=False, drop_drums=False)
    return build_corpus(files, spec, split=(0.8, 0.1, 0.1), seed=seed, workers=1, clean=clean)


#: Programs given to a chorale's parts, in track order (flute, clarinet, cello, bass, piano).
PART_PROGRAMS = (73, 71, 42, 33, 0)


def as_band(data: bytes) -> bytes:
    """A chorale with each part (track) on its own program and empty tracks dropped."""
    from symusic import Score

    score = Score.from_midi(data)
    kept = [t for t in score.tracks if len(t.notes) > 0]
    for k, track in enumerate(kept):
        track.program = PART_PROGRAMS[k % len(PART_PROGRAMS)]
    score.tracks = type(score.tracks)(kept)
    out: bytes = score.dumps_midi()
    return out


def say(message: str) -> None:
    print(f"[controls {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def train_model(
    corpus: Any,
    steps: int,
    seed: int = 0,
    batch: int = 16,
    seq_len: int = 256,
    arch: str = "music-transformer",
    preset: str = "tiny",
    config: dict[str, Any] | None = None,
) -> Any:
    """A model (`arch`/`preset`, its context `seq_len`, `config` overrides of the preset's
    size) trained `steps` steps on the corpus; the trained module."""
    import torch

    from cadenza.models.checkpoint import load_for_inference
    from cadenza.models.registry import resolve_config
    from cadenza.tokenize import tokenizer_hash
    from cadenza.train import NullHooks, TrainConfig, train

    class Keep(NullHooks):
        payload: bytes | None = None

        def save_checkpoint(
            self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
        ) -> None:
            self.payload = payload

    torch.manual_seed(seed)
    cfg = TrainConfig.from_preset(
        arch,
        preset,
        {"max_steps": steps, "batch_size": batch, "seq_len": seq_len, "seed": seed,
         "eval_interval": steps, "eval_batches": 2, "compile": False},
    )  # fmt: skip
    spec = {
        "architecture": arch,
        "config": resolve_config(
            arch, preset, {"block_size": seq_len, **(config or {})}
        ).model_dump(),
        "vocab_size": corpus.tokenizer.vocab_size,
    }
    hooks = Keep()
    data = {k: v for k, v in corpus.splits.items() if v.size}
    train(spec, data, cfg, hooks, tokenizer_hash=tokenizer_hash(corpus.tokenizer), device="cpu")
    assert hooks.payload is not None, "training saved no checkpoint"
    model, _ = load_for_inference(hooks.payload, "cpu")
    return model


def steered_scores(
    model: Any, tok: Any, controls: dict[str, Any] | None, *, n: int, seed: int, tokens: int
) -> list[Any]:
    """`n` samples of a new piece with `controls` forced where they go, decoded (top-k 40)."""
    from cadenza.sample import SamplingParams, generate
    from cadenza.sample.steer import build_steer

    steer, prompt = build_steer(
        tok, [tok.bos_id], controls=controls, tags=None, rows=n, device="cpu"
    )
    params = SamplingParams(
        max_new_tokens=tokens, seed=seed, eos_id=tok.eos_id, top_k=40, compile=False
    )
    rows = generate(model, [prompt], params, n=n, steer=steer)
    return [tok.decode([*prompt, *new]) for new in rows]


def sample_bars(
    model: Any,
    tok: Any,
    controls: dict[str, Any] | None,
    *,
    n: int,
    bars: int,
    seed: int,
    tokens: int,
) -> list[Any]:
    """The bar facts of `n` steered samples (their first `bars` complete bars each)."""
    out: list[Any] = []
    for score in steered_scores(model, tok, controls, n=n, seed=seed, tokens=tokens):
        facts = tok.bar_facts(score)
        out += facts[: min(bars, max(len(facts) - 1, 0))]  # the last bar may be cut short
    return out


def track_facts(tok: Any, score: Any) -> list[list[Any]]:
    """Per track of a (multi-track) score, in order: its bars' facts, measured on that track
    alone (what its per-track control tokens state in training)."""
    out: list[list[Any]] = []
    for track in score.tracks:
        one = score.copy()
        one.tracks = type(score.tracks)([track.copy()])
        out.append(tok.bar_facts(one))
    return out


def sample_track_bars(
    model: Any,
    tok: Any,
    controls: dict[str, Any] | None,
    *,
    n: int,
    bars: int,
    seed: int,
    tokens: int,
) -> list[list[Any]]:
    """Per track index: the bar facts of that track in `n` steered multi-track samples (the
    first `bars` bars of each track; a track's last bar is left out, it may be cut short)."""
    out: list[list[Any]] = []
    for score in steered_scores(model, tok, controls, n=n, seed=seed, tokens=tokens):
        for k, facts in enumerate(track_facts(tok, score)):
            while len(out) <= k:
                out.append([])
            out[k] += facts[: min(bars, max(len(facts) - 1, 0))]
    return out


def adherence(model: Any, tok: Any, *, n: int, bars: int, seed: int, tokens: int) -> dict[str, Any]:
    """Per control: correlation and high/low ratio of realised against requested values."""
    report: dict[str, Any] = {}
    free = sample_bars(model, tok, None, n=n, bars=bars, seed=seed, tokens=tokens)
    for name, sweep in SWEEPS.items():
        if name not in tok.controls.controls:
            continue
        xs: list[float] = []
        ys: list[float] = []
        means: list[float] = []
        for value in sweep:
            say(f"{name} = {value}")
            facts = sample_bars(model, tok, {name: value}, n=n, bars=bars, seed=seed, tokens=tokens)
            vals = [v for f in facts if (v := realised(name, f)) is not None]
            xs += [requested(name, value)] * len(vals)
            ys += vals
            means.append(sum(vals) / len(vals) if vals else float("nan"))
        base = [v for f in free if (v := realised(name, f)) is not None]
        report[name] = {
            "requested": [requested(name, v) for v in sweep],
            "realised_mean": [round(m, 3) for m in means],
            "uncontrolled_mean": round(sum(base) / len(base), 3) if base else None,
            "pearson": round(pearson(xs, ys), 3),
            "high_low_ratio": round(means[-1] / means[0], 3) if means[0] else None,
            "bars": len(ys),
        }
    return report


def track_adherence(
    model: Any, tok: Any, *, n: int, bars: int, seed: int, tokens: int
) -> dict[str, Any]:
    """Per control and per track (first two): requested against realised, with the first
    track asked for each value of the sweep while the second is asked for the sweep's
    mirror (high when the first is low), through `controls.tracks`."""
    report: dict[str, Any] = {}
    for name, sweep in TRACK_SWEEPS.items():
        if name not in tok.controls.controls:
            continue
        xs: list[list[float]] = [[], []]
        ys: list[list[float]] = [[], []]
        means: list[list[float]] = [[], []]
        for value, mirror in zip(sweep, reversed(sweep), strict=True):
            say(f"{name}: track 0 = {value}, track 1 = {mirror}")
            per_track = sample_track_bars(
                model,
                tok,
                {"tracks": [{name: value}, {name: mirror}]},
                n=n,
                bars=bars,
                seed=seed,
                tokens=tokens,
            )
            for k, want in ((0, value), (1, mirror)):
                facts = per_track[k] if k < len(per_track) else []
                vals = [v for f in facts if (v := realised(name, f)) is not None]
                xs[k] += [requested(name, want)] * len(vals)
                ys[k] += vals
                means[k].append(sum(vals) / len(vals) if vals else float("nan"))
        report[name] = {
            f"track_{k}": {
                "requested": [requested(name, v) for v in (sweep if k == 0 else sweep[::-1])],
                "realised_mean": [round(m, 3) for m in means[k]],
                "pearson": round(pearson(xs[k], ys[k]), 3),
                "bars": len(ys[k]),
            }
            for k in (0, 1)
        }
        for k in (0, 1):
            hi, lo = (means[k][-1], means[k][0]) if k == 0 else (means[k][0], means[k][-1])
            report[name][f"track_{k}"]["high_low_ratio"] = round(hi / lo, 3) if lo else None
    return report


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--files", type=int, default=60)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--n", type=int, default=4, help="samples per requested value")
    ap.add_argument("--bars", type=int, default=4, help="bars measured per sample")
    ap.add_argument("--tokens", type=int, default=320, help="new tokens per sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", default="music-transformer")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--data-dir", type=Path, default=Path(".cache/bench-controls"))
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    ap.add_argument(
        "--multitrack",
        action="store_true",
        help="per-track controls: an MMM corpus of the chorales with one program per part, "
        "the first two tracks asked for opposite values (controls.tracks)",
    )
    ap.add_argument("--controls", default=None, help="comma-separated subset of the swept controls")
    args = ap.parse_args()

    import torch

    from cadenza.datasets import export_bach_chorales

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    paths = export_bach_chorales(args.data_dir, args.files)
    names = args.controls.split(",") if args.controls else list(SWEEPS)
    files = [
        (p.stem, as_band(p.read_bytes()) if args.multitrack else p.read_bytes()) for p in paths
    ]
    corpus = build(files, names, multitrack=args.multitrack)
    t1 = time.perf_counter()
    say(f"corpus: {corpus.stats['tokens_per_split']} tokens; training {args.steps} steps")
    model = train_model(
        corpus, args.steps, args.seed, args.batch, args.seq_len, args.arch, args.preset
    )
    say("sampling")
    t2 = time.perf_counter()
    report = {
        "command": " ".join(sys.argv),
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, "
        "2 threads; shared with other jobs (heavy load)",
        "corpus_s": round(t1 - t0, 1),
        "train_s": round(t2 - t1, 1),
        "controls": (track_adherence if args.multitrack else adherence)(
            model, corpus.tokenizer, n=args.n, bars=args.bars, seed=args.seed, tokens=args.tokens
        ),
    }
    report["sample_s"] = round(time.perf_counter() - t2, 1)
    corpus.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
