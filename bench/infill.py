"""Does a model trained to edit use both sides of a gap? Infill NLL, survival, latency.

    .venv/bin/python bench/infill.py                          # defaults below (CPU)
    .venv/bin/python bench/infill.py --steps 20 --pieces 1    # smoke run

The experiment: ``--files`` Bach chorales from music21, each part on its own program
(flute, clarinet, cello, bass: as tests/support/music.py's ``multitrack_chorale``), a corpus of
the ``multitrack`` preset (MMM, tracks kept apart), and for each of ``--layouts`` (the
``train.infill_layout`` values, ``spm`` and ``mmm``) a gpt of ``--preset`` size trained
``--steps`` steps with ``train.infill_fraction`` 0.5 in that layout (same seed, same windows),
then ``--pieces`` held-out chorales (exported after the training ones). Reported per layout:

* **infill vs continuation NLL** (nats per token of the true bars): for every 2-bar gap of
  one track of a held-out piece (bars b, b+1 of track k), with the same model and the same
  bars around the gap shown (as many as fit the block, as sampling shows them):
  *infill* sees both sides and the other tracks, laid out as the model was trained (``spm``:
  the other tracks and the track's bars after the gap first, then the track up to the gap,
  and the true bars scored where it goes on; ``mmm``: the gap cut out as ``Infill_Bar``
  placeholders and the true bars scored after ``FillBar_Start`` at the end); *continuation*
  is the piece up to the gap and the true bars scored as what follows, left side only. Lower
  is better; the infill figure must be lower for the training to have taught anything.
* **survival**: the share of the held-out pieces' notes outside a rewritten 4-bar region (all
  tracks) that come back exactly (time, duration, pitch, velocity, on the tokenizer's grid).
* **latency** on CPU (one thread): infill of a 4-bar region (all tracks) and an accompaniment
  (one bass track) of a 4-bar excerpt, n = 1, and, as the reference in the same process, a
  plain continuation sampling as many tokens as the infill wrote.

It runs in-process through what the sample job calls (``cadenza.sample.edit``). Timings on
a shared, loaded machine move with the load; the ratio against the reference is steadier.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

PROGRAMS = (73, 71, 42, 33, 0)


def multitrack(data: bytes) -> bytes:
    """Each non-empty part on its own program (the tests' multitrack chorales)."""
    from symusic import Score

    score = Score.from_midi(data)
    kept = [t for t in score.tracks if len(t.notes) > 0]
    for k, track in enumerate(kept):
        track.program = PROGRAMS[k % len(PROGRAMS)]
    score.tracks = type(score.tracks)(kept)
    out: bytes = score.dumps_midi()
    return out


def chorales(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    from cadenza.datasets import export_bach_chorales

    cache = Path(os.environ.get("CADENZA_TEST_CACHE", Path(_HERE).parent / ".cache"))
    paths = export_bach_chorales(cache / "bach-midi", n, start=start)
    return [(p.stem, multitrack(p.read_bytes())) for p in paths]


def train_model(args: argparse.Namespace, style: str) -> tuple[Any, Any, dict[str, Any]]:
    """The corpus and a model trained to edit with examples in layout `style`; (model,
    tokenizer, figures). The same seed draws the same windows for every layout."""
    from cadenza.midi.clean import CleanOptions
    from cadenza.models import resolve_config
    from cadenza.models.checkpoint import load_for_inference
    from cadenza.tokenize import build_corpus, mmm
    from cadenza.tokenize.presets import resolve_spec
    from cadenza.train import TrainConfig, train
    from cadenza.train.loop import NullHooks

    t0 = time.perf_counter()
    build = build_corpus(
        chorales(args.files),
        resolve_spec(preset="multitrack"),
        seed=0,
        split=(0.9, 0.1, 0.0),
        clean=CleanOptions(merge_tracks=False, drop_drums=False),
    )
    tok = build.tokenizer
    data = {k: np.asarray(v) for k, v in build.splits.items() if v.size}
    corpus_s = time.perf_counter() - t0
    config = resolve_config("gpt", args.preset, {"block_size": args.block})
    cfg = TrainConfig(
        max_steps=args.steps,
        warmup_steps=min(50, args.steps),
        seq_len=args.block,
        batch_size=args.batch,
        lr=args.lr,
        eval_interval=max(1, args.steps // 4),
        eval_batches=4,
        log_interval=1000,
        checkpoint_interval=10**7,
        precision="fp32",
        compile=False,
        infill_fraction=0.5,
        infill_layout=style,
        seed=args.seed,
    )
    saved: dict[str, bytes] = {}

    class Keep(NullHooks):
        def save_checkpoint(
            self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
        ) -> None:
            if is_best or "best" not in saved:
                saved["best"] = payload

    spec = {"architecture": "gpt", "config": config, "vocab_size": tok.vocab_size}
    ids = mmm.MMMIds.from_vocab(tok.miditok.vocab)
    t0 = time.perf_counter()
    result = train(spec, data, cfg, Keep(), tokenizer_hash=tok.hash(), device="cpu", infill_ids=ids)
    train_s = time.perf_counter() - t0
    model, _ = load_for_inference(saved["best"], "cpu")
    figures = {
        "corpus_tokens": {k: int(v.size) for k, v in data.items()},
        "corpus_s": round(corpus_s, 1),
        "train_s": round(train_s, 1),
        "val_loss": result.best_val_loss,
        "steps": result.steps,
        "payload": saved["best"],
    }
    return model, tok, figures


def _nll(
    model: Any, prompt: list[int], scored: list[list[int]], between: list[list[int]]
) -> list[float]:
    """NLL (nats) of each token of the `scored` segments, read after `prompt` with each
    `between[i]` (unscored) before segment i, in one forward pass cropped to the block."""
    seq = list(prompt)
    targets: list[int] = []  # positions in seq of scored tokens
    for pre, seg in zip(between, scored, strict=True):
        seq += pre
        for tok in seg:
            targets.append(len(seq))
            seq.append(tok)
    block = int(model.block_size)
    cut = max(0, len(seq) - block)
    seq = seq[cut:]
    targets = [p - cut for p in targets if p - cut >= 1]
    idx = torch.tensor([seq], dtype=torch.long)
    with torch.inference_mode():
        logits, _ = model(idx)
    logp = torch.log_softmax(logits[0].float(), dim=-1)
    return [float(-logp[p - 1, seq[p]]) for p in targets]


def gap_nll(model: Any, tok: Any, pieces: list[bytes], style: str) -> dict[str, Any]:
    """Mean NLL of the true bars of every 2-bar single-track gap: infill vs continuation."""
    from cadenza.sample import edit as E
    from cadenza.tokenize import mmm

    t = E.mmm_ids(tok)
    infill: list[float] = []
    cont: list[float] = []
    gaps = skipped = 0
    for data in pieces:
        source = E.load_source(tok, data)
        for k in range(len(source.tracks)):
            track = source.tracks[k]
            for b in range(1, len(track.bars) - 2, 2):
                region = (b + 1, b + 2)
                plan = E.plan_infill(source, region, [k])
                truth = [track.bars[b], track.bars[b + 1]]
                budget = int(model.block_size) - 4
                ctx = _context(source, t, plan.holes, truth, budget, style)
                if ctx is None:
                    skipped += 1
                    continue
                lead = [t.bos] if ctx.start == 0 else []
                if style == "spm":
                    # infill: the other tracks and the bars after the gap first, then the
                    # track up to the gap, and the true bars scored where it goes on
                    run = range(b, b + 2)
                    prompt = lead + mmm.spm_layout(source.tracks, t, k, run, bars=ctx)
                    infill += _nll(model, [*prompt, t.bar], truth, [[], [t.bar]])
                else:
                    # infill: the gap's placeholders, both sides, then each true bar as its fill
                    prompt = lead + mmm.layout(source.tracks, t, plan.holes, bars=ctx)
                    got = _nll(
                        model,
                        prompt,
                        [[*truth[0], t.fill_end], [*truth[1], t.fill_end]],
                        [[t.fill_start], [t.fill_start]],
                    )
                    infill += got[: len(truth[0])] + got[len(truth[0]) + 1 : -1]
                # continuation: the same bars shown, up to the gap, then the true bars
                full = mmm.layout(source.tracks, t, [], bars=ctx)
                cut = mmm.layout(source.tracks, t, [(k, b), (k, b + 1)], bars=ctx)
                upto = lead + cut[: cut.index(t.fill_bar)]  # ... the gap's first Bar token
                assert lead + full[: len(upto) - len(lead)] == upto
                got = _nll(model, upto, truth, [[], [t.bar]])
                cont += got
                gaps += 1
    return {
        "gaps": gaps,
        "skipped_too_wide": skipped,
        "tokens": len(infill),
        "infill_nll": round(float(np.mean(infill)), 4),
        "continuation_nll": round(float(np.mean(cont)), 4),
    }


def _context(
    source: Any,
    t: Any,
    holes: list[tuple[int, int]],
    truth: list[list[int]],
    budget: int,
    style: str,
) -> range | None:
    """The bars shown around a gap (both of its bars, then one more on each side in turn
    while the prompt and the true fills fit `budget`); None when the gap alone does not."""
    from cadenza.tokenize import mmm

    fills = sum(len(x) + 2 for x in truth)
    count = mmm.n_bars(source.tracks)
    lo, hi = holes[0][1], holes[-1][1] + 1
    k, run = holes[0][0], range(lo, hi)

    def size(a: int, b: int) -> int:
        if style == "spm":
            return len(mmm.spm_layout(source.tracks, t, k, run, bars=range(a, b))) + fills + 1
        return len(mmm.layout(source.tracks, t, holes, bars=range(a, b))) + fills + 1

    if size(lo, hi) > budget:
        return None
    grew = True
    while grew:
        grew = False
        if lo > 0 and size(lo - 1, hi) <= budget:
            lo, grew = lo - 1, True
        if hi < count and size(lo, hi + 1) <= budget:
            hi, grew = hi + 1, True
    return range(lo, hi)


def survival(model: Any, tok: Any, pieces: list[bytes], seed: int, style: str) -> dict[str, Any]:
    """Share of notes outside a rewritten 4-bar region (all tracks) that come back exactly."""
    from cadenza.sample import edit as E
    from cadenza.tokenize import mmm
    from cadenza.tokenize.primer import bar_end_tick

    t = E.mmm_ids(tok)
    kept = total = 0
    options = {"temperature": 1.0, "top_k": 20, "max_new_tokens": 64, "seed": seed}
    for data in pieces:
        source = E.load_source(tok, data)
        region = (3, 6) if source.bars >= 6 else (1, min(4, source.bars))
        plan = E.plan_infill(source, region, None)
        rows, _ = E.write_holes(model, tok, plan, options, n=1, style=style)
        score, _ = E.reassemble(tok, source, plan, rows[0])
        lo, hi = bar_end_tick(score, region[0] - 1), bar_end_tick(score, region[1])
        for k, tr in enumerate(score.tracks):
            want = tok.decode(mmm.layout([source.tracks[k]], t, [])).tracks[0]
            notes = {tuple(n) for n in _rows(tr) if not lo <= n[0] < hi}
            expected = [tuple(n) for n in _rows(want) if not lo <= n[0] < hi]
            kept += sum(1 for n in expected if n in notes)
            total += len(expected)
    return {"outside_notes": total, "survived": kept, "share": round(kept / max(total, 1), 4)}


def _rows(track: Any) -> list[list[int]]:
    soa = track.notes.numpy()
    cols = [np.asarray(soa[k]).tolist() for k in ("time", "duration", "pitch", "velocity")]
    return [list(x) for x in zip(*cols, strict=True)]


def latency(
    model: Any, tok: Any, piece: bytes, repeats: int, seed: int, style: str
) -> dict[str, Any]:
    """Seconds for a 4-bar infill (all tracks), a 4-bar accompaniment, and a continuation of
    as many tokens as the infill wrote (the reference)."""
    from symusic import Score

    from cadenza.sample import SamplingParams, generate
    from cadenza.sample import edit as E
    from cadenza.tokenize.primer import crop_score

    options = {"temperature": 1.0, "top_k": 20, "max_new_tokens": 64, "seed": seed}
    excerpt = bytes(crop_score(Score.from_midi(piece), bars=4).dumps_midi())
    out: dict[str, list[float]] = {
        "infill_4_bars_s": [],
        "accompany_4_bars_s": [],
        "reference_s": [],
    }
    written = 0
    for _ in range(repeats):
        source = E.load_source(tok, piece)
        plan = E.plan_infill(source, (3, 6), None)
        t0 = time.perf_counter()
        rows, _ = E.write_holes(model, tok, plan, options, n=1, style=style)
        out["infill_4_bars_s"].append(time.perf_counter() - t0)
        written = len(rows[0].new_ids)
        short = E.load_source(tok, excerpt)
        plan = E.plan_accompany(short, E.mmm_ids(tok), [33], drums=False)
        t0 = time.perf_counter()
        E.write_holes(model, tok, plan, options, n=1, style=style)
        out["accompany_4_bars_s"].append(time.perf_counter() - t0)
        prompt = [tok.bos_id, *tok.encode(short.score)][: int(model.block_size) // 2]
        params = SamplingParams(
            max_new_tokens=max(written, 1), top_k=20, seed=seed, stop_at_eos=False
        )
        t0 = time.perf_counter()
        generate(model, [prompt], params, n=1, device="cpu")
        out["reference_s"].append(time.perf_counter() - t0)
    best = {k: round(min(v), 3) for k, v in out.items()}
    return {
        **best,
        "infill_tokens_written": written,
        "infill_vs_reference": round(best["infill_4_bars_s"] / max(best["reference_s"], 1e-9), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=24, help="training chorales")
    ap.add_argument("--pieces", type=int, default=3, help="held-out chorales")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--block", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--layouts",
        default="spm,mmm",
        help="training/prompt layouts to compare (train.infill_layout), comma-separated",
    )
    ap.add_argument("--keep", help="folder to keep the trained models in, and reuse them from")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    pieces = [data for _, data in chorales(args.pieces, start=args.files)]
    report: dict[str, Any] = {
        "command": "python bench/infill.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s)",
        "model": f"gpt {args.preset}, block {args.block}, {args.steps} steps, batch {args.batch}",
    }
    for style in args.layouts.split(","):
        model, tok, figures = _model(args, style)
        report[style] = {
            "training": figures,
            "load_average": os.getloadavg(),
            "nll": gap_nll(model, tok, pieces, style),
            "survival": survival(model, tok, pieces, args.seed, style),
            "latency": latency(model, tok, pieces[0], args.repeats, args.seed, style),
        }
        print(json.dumps({style: report[style]}), flush=True)
    print(json.dumps(report, indent=2))


def _model(args: argparse.Namespace, style: str) -> tuple[Any, Any, dict[str, Any]]:
    """A model trained with `style` examples, or the one kept under ``--keep``/style."""
    keep = Path(args.keep) / style if args.keep else None
    if keep is not None and (keep / "model.pt").exists():
        from cadenza.models.checkpoint import load_for_inference
        from cadenza.tokenize import tokenizer_from_bytes

        model, _ = load_for_inference((keep / "model.pt").read_bytes(), "cpu")
        tok = tokenizer_from_bytes((keep / "tokenizer.bin").read_bytes())
        figures = json.loads((keep / "training.json").read_text())
        return model, tok, figures
    torch.manual_seed(args.seed)
    model, tok, figures = train_model(args, style)
    payload = figures.pop("payload")
    if keep is not None:
        from cadenza.tokenize import tokenizer_to_bytes

        keep.mkdir(parents=True, exist_ok=True)
        (keep / "model.pt").write_bytes(payload)
        (keep / "tokenizer.bin").write_bytes(tokenizer_to_bytes(tok))
        (keep / "training.json").write_text(json.dumps(figures))
    return model, tok, figures


if __name__ == "__main__":
    main()
