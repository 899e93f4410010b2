"""Constrained sampling's cost per token: the same sampler with and without the grammar mask.

For each tokenizer (fitted on the first chorales of music21's corpus; BPE where asked), one
randomly initialised `gpt` of the sampling benchmark's size (4 layers, 256 wide, block 1024,
eager fixed-shape step) generates the same number of tokens with `constrained` on and off,
interleaved in one process, best of `--repeats`. It prints tokens/s both ways, the overhead,
and the mask's own cost per step (gather of the states' rows + masked_fill + state update,
timed alone over the same shapes, minus the same loop without them) as a share of an
unmasked step: on a loaded machine the end-to-end difference is within the run-to-run noise,
the isolated cost is the steadier figure. Also the grammar's size and build time.

    .venv/bin/python bench/grammar.py --threads 1 --clock cpu          # the BENCHMARKS table
    .venv/bin/python bench/grammar.py --quick                          # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time

import torch

from cadenza.midi.clean import clean_score
from cadenza.midi.load import load_score
from cadenza.models import build_model, resolve_config
from cadenza.sample import SamplingParams, generate
from cadenza.sample.constrain import Constraint
from cadenza.tokenize import TokenizerSpec, build_tokenizer
from cadenza.tokenize.base import Tokenizer
from cadenza.tokenize.grammar import grammar_for
from cadenza.tokenize.presets import resolve_spec

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CASES = ["remi-chords-tempos", "REMI+bpe", "TSD", "MMM", "CPWord", "chord-duration", "midichar+bpe"]


def tokenizer(case: str, scores: list) -> Tokenizer:  # type: ignore[type-arg]
    name, _, bpe = case.partition("+")
    if name == "remi-chords-tempos":
        spec = resolve_spec(preset=name)
    else:
        spec = TokenizerSpec.model_validate({"name": name})
    tok = build_tokenizer(spec)
    tok.fit([tok.symbols(s) for s in scores])
    if bpe:
        spec = TokenizerSpec.model_validate(
            {"name": name, "bpe": {"vocab_size": tok.base_vocab_size + 1000}}
        )
        tok = build_tokenizer(spec)
        tok.fit([tok.symbols(s) for s in scores])
    return tok


def mask_cost_us(tok: Tokenizer, batch: int, steps: int, clock: object) -> float:
    """µs per step of the mask alone (what the sampler adds), on random logits."""
    g = grammar_for(tok)
    c = Constraint(g, [[tok.bos_id]] * batch, tok.vocab_size, torch.device("cpu"))
    logits = torch.randn(batch, tok.vocab_size)
    gen = torch.Generator().manual_seed(0)
    tick = clock  # type: ignore[assignment]
    t0 = tick()  # type: ignore[operator]
    for _ in range(steps):
        masked = c.mask(logits)
        probs = torch.softmax(masked, dim=-1)
        token = torch.multinomial(probs, 1, generator=gen).view(-1)
        c.advance(token)
    masked_t = tick() - t0  # type: ignore[operator]
    t0 = tick()  # type: ignore[operator]
    for _ in range(steps):
        probs = torch.softmax(logits, dim=-1)
        token = torch.multinomial(probs, 1, generator=gen).view(-1)
    plain_t = tick() - t0  # type: ignore[operator]
    return max(masked_t - plain_t, 0.0) / steps * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--tokens", type=int, default=511)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--quick", action="store_true", help="3 cases, 128 tokens, batch 1")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.tokens, args.batches, args.repeats = "REMI+bpe,TSD,CPWord", 128, "1", 1
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = CLOCKS[args.clock]
    from tests.support.music import bach_pairs

    scores = [clean_score(load_score(d))[0] for _, d in bach_pairs()]
    print(f"command: python {shlex.join(['bench/grammar.py', *sys.argv[1:]])}")
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {' / '.join(f'{x:.1f}' for x in load)}"
    )
    print(f"model: gpt 4 layers, 256 wide, block 1024, eager; {args.tokens} new tokens, T=1")
    print()
    print(
        "| tokenizer | vocab | states | build s | batch | free tok/s | constrained tok/s "
        "| end-to-end overhead | mask µs/step | mask / free step |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in args.cases.split(","):
        tok = tokenizer(case, scores)
        t0 = time.perf_counter()
        g = grammar_for(tok)
        build = time.perf_counter() - t0
        torch.manual_seed(0)
        cfg = resolve_config("gpt", None, {"n_layer": 4, "n_embd": 256, "n_head": 8})
        model = build_model("gpt", cfg, tok.vocab_size).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            best = {True: 0.0, False: 0.0}
            for _ in range(args.repeats):
                for constrained in (False, True):
                    params = SamplingParams(
                        max_new_tokens=args.tokens,
                        seed=1,
                        stop_at_eos=False,
                        compile=False,
                        constrained=constrained,
                    )
                    t0 = clock()
                    generate(model, [[tok.bos_id]], params, n=batch, grammar=g)
                    rate = batch * args.tokens / (clock() - t0)
                    best[constrained] = max(best[constrained], rate)
            overhead = best[False] / best[True] - 1
            us = mask_cost_us(tok, batch, 2000, clock)
            step_us = batch / best[False] * 1e6  # one step of the whole batch, unmasked
            print(
                f"| {case} | {tok.vocab_size} | {g.num_states} | {build:.2f} | {batch} "
                f"| {best[False]:.0f} | {best[True]:.0f} | {overhead * 100:+.1f} % | {us:.0f} "
                f"| {us / step_us * 100:.1f} % |",
                flush=True,
            )


if __name__ == "__main__":
    main()
