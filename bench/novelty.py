"""Benchmark: the copy check (`cadenza.novelty`) against corpus size — index build time and
bytes, and the time to check one sample, with a per-sample scan of the training pieces (what
the index avoids) as the reference run in the same process.

    PYTHONPATH=shared:services/api:services/worker:. .venv/bin/python bench/novelty.py \
        [--sizes 100,1000,10000] [--scan-sizes 100,1000] [--samples 40] [--out FILE.md]

Training pieces are synthetic four-voice note streams (random walks on a 16th grid, about
the size of a Bach chorale: ~260 notes), made here with a fixed seed so every piece is
distinct and nothing comes from outside the repository. Each is encoded with the REMI
tokenizer of the `remi-colab` preset into one flat BOS … EOS array, the form a corpus's
training split has; the index is built from that array exactly as the tokenize job builds it
(each piece decoded by the tokenizer, hashed, sorted). Samples are decoded MIDI bytes: half are
training pieces (copied: fraction 1.0), half fresh pieces (new: ~0); checking one is what a
sample job does per variation (parse the MIDI, hash its n-grams, binary-search them).
"""

# ruff: noqa: E402
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "shared")]


def make_piece(rng: np.random.Generator, quarters: int = 64) -> Any:
    """A four-voice piece: each voice a random walk of quarter and eighth notes."""
    from symusic.core import NoteTick, ScoreTick, TempoTick, TimeSignatureTick, TrackTick

    tpq = 480
    score = ScoreTick(tpq)
    score.tempos.append(TempoTick(0, 100.0))
    score.time_signatures.append(TimeSignatureTick(0, 4, 4))
    track = TrackTick("voices", 0, False)
    for base in (72, 64, 57, 48):
        pitch, t = base, 0
        while t < quarters * tpq:
            dur = int(rng.choice([tpq // 2, tpq, tpq, 2 * tpq]))
            pitch = int(np.clip(pitch + rng.integers(-3, 4), base - 7, base + 7))
            track.notes.append(NoteTick(t, dur, pitch, 80))
            t += dur
    score.tracks.append(track)
    return score


def encode_array(tok: Any, pieces: list[Any]) -> np.ndarray:
    ids: list[int] = []
    for p in pieces:
        ids += [tok.bos_id, *tok.encode(p), tok.eos_id]
    return np.asarray(ids, dtype=np.int32)


def scan_check(tok: Any, train: np.ndarray, midi: bytes) -> float:
    """The reference: no index, every training piece decoded and hashed for this one sample."""
    from symusic.core import ScoreTick

    from cadenza.novelty import piece_hashes, score_hashes, sequences

    sample = score_hashes(ScoreTick.from_midi(midi))
    hit = np.zeros(sample.size, dtype=bool)
    for piece in sequences(train, tok.bos_id, tok.eos_id):
        hit |= np.isin(sample, piece_hashes(tok, piece))
    return float(hit.mean()) if hit.size else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--scan-sizes", default="100,1000")
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()

    from cadenza.novelty import build_index, sequences
    from cadenza.tokenize import decode_to_midi, resolve_spec
    from cadenza.tokenize.registry import build_tokenizer

    tok = build_tokenizer(resolve_spec(preset="remi-colab"))
    rng = np.random.default_rng(0)
    sizes = [int(s) for s in a.sizes.split(",")]
    scan_sizes = {int(s) for s in a.scan_sizes.split(",") if s}
    t0 = time.perf_counter()
    pool = [make_piece(rng) for _ in range(max(sizes))]
    fresh = [make_piece(rng) for _ in range(a.samples // 2)]
    notes = np.mean([sum(len(t.notes) for t in p.tracks) for p in pool[:200]])
    print(f"made {len(pool)} pieces (~{notes:.0f} notes each) in {time.perf_counter() - t0:.1f} s")

    rows: list[dict[str, Any]] = []
    for n in sizes:
        t0 = time.perf_counter()
        train = encode_array(tok, pool[:n])
        encode_s = time.perf_counter() - t0
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        index = build_index(tok, train)
        build_s = time.perf_counter() - t0
        size = len(index.to_bytes())
        seqs = sequences(train, tok.bos_id, tok.eos_id)
        copied = [decode_to_midi(tok, seqs[i].tolist()) for i in range(a.samples // 2)]
        new = [decode_to_midi(tok, tok.encode(p)) for p in fresh]
        fractions: list[float] = []
        t0 = time.perf_counter()
        for midi in copied + new:
            fractions.append(index.check_midi(midi)["copied_fraction"])
        check_ms = (time.perf_counter() - t0) / len(copied + new) * 1e3
        half = len(copied)
        row = {
            "pieces": n,
            "tokens": int(train.size),
            "ngrams": int(index.hashes.size),
            "bytes": size,
            "build_s": build_s,
            "encode_s": encode_s,
            "check_ms": check_ms,
            "copied": float(np.mean(fractions[:half])),
            "new": float(np.mean(fractions[half:])),
            "scan_ms": None,
            "load": f"{load0:.1f} → {os.getloadavg()[0]:.1f}",
        }
        if n in scan_sizes:
            t0 = time.perf_counter()
            for midi in (copied[0], new[0]):
                scan_check(tok, train, midi)
            row["scan_ms"] = (time.perf_counter() - t0) / 2 * 1e3
        rows.append(row)
        print(row, flush=True)

    lines = [
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}",
        "",
        "| training pieces | tokens | distinct 8-grams | index bytes | index build | check / "
        "sample | per-sample scan (reference) | ratio | copied / new sample | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        scan = f"{r['scan_ms']:.0f} ms" if r["scan_ms"] else "—"
        ratio = f"{r['scan_ms'] / r['check_ms']:.0f}×" if r["scan_ms"] else "—"
        lines.append(
            f"| {r['pieces']:,} | {r['tokens']:,} | {r['ngrams']:,} | {r['bytes'] / 2**20:.2f} MiB "
            f"| {r['build_s']:.2f} s | {r['check_ms']:.2f} ms | {scan} | {ratio} "
            f"| {r['copied']:.2f} / {r['new']:.2f} | {r['load']} |"
        )
    text = "\n".join(lines)
    print(text)
    if a.out:
        a.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
