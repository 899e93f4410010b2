"""Sampling speed: Cadenza's sampler against a plain KV-cache loop, or against recomputation.

Default mode (issue 16): `cadenza.sample.generate` (eager and compiled on CPU; eager and CUDA
graphs on CUDA) against `reference_generate`, a plain KV-cache loop (`torch.cat` per token,
no compile) over the same `gpt` weights, interleaved in one process; prints tok/s and
ours/reference per batch size and the first compiled run's wall time (the compile cost).
On CUDA it also prints batch-1 µs/token against the weights-read bound (parameter bytes /
measured device copy bandwidth). This mode imports only torch, numpy, pydantic and
cadenza.models / cadenza.sample.

    .venv/bin/python bench/sample.py --threads 1 --clock cpu       # CPU, issue 16's size
    python bench/sample.py --gpu-quick                             # CUDA bf16, < 90 s on an H200
    python bench/sample.py --device cuda --dtype bfloat16          # CUDA, full size

`--vs-recompute`: the KV-cached sampler against a sampler that recomputes the whole context
every step (the earlier table, bench/README_sample.md):

Both samplers run on the same randomly initialised model in the same process (weights do not
change the cost). The recompute sampler is what nanoGPT's and minGPT's `generate` do: step
t runs a forward pass over its whole context of L_t = min(prompt + t - 1, block) tokens, so a
full run to 4096 tokens takes hours on a small CPU. It is reported two ways:

* measured directly: the real sampler runs until `--recompute-budget` seconds are spent; its
  rate over those (early, short-context, cheapest) tokens is an upper bound on its rate over
  the whole run, so the speed-up against it is a lower bound;
* whole run from per-step costs: one step of the real recompute sampler is timed at context
  lengths 16..block for each batch size, and the run's time is the sum of the (linearly
  interpolated) step costs over L_1..L_N. The direct run's first tokens check that estimate.

`--recompute-budget 0` runs the recompute sampler to the end instead (ground truth, slow).

    .venv/bin/python bench/sample.py --vs-recompute          # full table (~10 min, 2 cores)
    .venv/bin/python bench/sample.py --vs-recompute --quick   # smoke run (~1-2 min)
"""

from __future__ import annotations

import argparse  # noqa: E402
import os
import platform  # noqa: E402
import shlex  # noqa: E402
import sys
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path
from typing import Any  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cadenza.models import CadenzaModel, build_model, resolve_config  # noqa: E402
from cadenza.sample import SamplingParams, generate, generate_uncached  # noqa: E402

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set from --clock in main()
VOCAB = 300  # about a REMI vocabulary with chords, rests and tempos (276-279 tokens) + specials


@dataclass
class Result:
    batch: int
    new_tokens: int
    cached_s: float  # measured, whole run
    direct_tokens: int  # recompute tokens per row actually produced (budget may stop it)
    direct_s: float  # measured
    direct_predicted_s: float  # the step-cost estimate for those same direct_tokens
    whole_s: float  # recompute whole run: measured if complete, else the step-cost estimate

    @property
    def complete(self) -> bool:
        return self.direct_tokens == self.new_tokens

    def tps(self, seconds: float, tokens: int | None = None) -> float:
        return self.batch * (self.new_tokens if tokens is None else tokens) / seconds


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def make_model(n_layer: int, n_embd: int, n_head: int, block: int) -> CadenzaModel:
    torch.manual_seed(0)
    overrides = {
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "block_size": block,
        "dropout": 0.0,
    }
    cfg = resolve_config("music-transformer", None, overrides)
    return build_model("music-transformer", cfg, VOCAB).eval()


def time_cached(model: CadenzaModel, prompt: list[int], batch: int, n: int) -> float:
    params = SamplingParams(max_new_tokens=n, seed=0)
    t0 = clock()
    out = generate(model, [prompt], params, n=batch)
    dt = clock() - t0
    assert all(len(row) == n for row in out)
    return dt


def time_recompute(
    model: CadenzaModel, prompt: list[int], batch: int, n: int, budget_s: float
) -> tuple[int, float]:
    """(tokens per row produced, seconds); stops at the first step past the budget."""
    params = SamplingParams(max_new_tokens=n, seed=0)
    t0 = clock()

    def stop_when_over_budget(step: int, tokens: list[list[int]]) -> bool:
        return budget_s > 0 and clock() - t0 > budget_s

    out = generate_uncached(model, [prompt], params, n=batch, on_token=stop_when_over_budget)
    return len(out[0]), clock() - t0


def step_costs(
    model: CadenzaModel, batch: int, lengths: list[int], repeats: int
) -> dict[int, float]:
    """Seconds of one recompute-sampler step at each context length (min over repeats)."""
    gen = torch.Generator().manual_seed(2)
    costs: dict[int, float] = {}
    for L in lengths:
        ctx = torch.randint(0, VOCAB, (L,), generator=gen).tolist()
        best = float("inf")
        for _ in range(repeats if L <= 256 else 2):
            t0 = clock()
            generate_uncached(model, [ctx], SamplingParams(max_new_tokens=1, seed=0), n=batch)
            best = min(best, clock() - t0)
        costs[L] = best
    return costs


def estimate_recompute_s(costs: dict[int, float], prompt: int, block: int, n: int) -> float:
    """Sum of step costs over the context lengths of an n-token run (linear interpolation)."""
    xs = sorted(costs)
    total = 0.0
    for t in range(1, n + 1):
        L = min(prompt + t - 1, block)
        hi = next((x for x in xs if x >= L), xs[-1])
        lo = max((x for x in xs if x <= L), default=xs[0])
        if hi == lo:
            total += costs[lo]
        else:
            total += costs[lo] + (costs[hi] - costs[lo]) * (L - lo) / (hi - lo)
    return total


def recompute_main(argv: list[str] | None = None) -> None:
    """The KV-cached vs recompute table (`--vs-recompute`)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vs-recompute", action="store_true")
    ap.add_argument("--quick", action="store_true", help="short lengths and budget (smoke run)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument(
        "--clock",
        choices=sorted(CLOCKS),
        default="wall",
        help="wall: elapsed time; cpu: this process's CPU time, which with --threads 1 is\n"
        "what the run costs even while other processes compete for the cores",
    )
    ap.add_argument("--recompute-budget", type=float, default=None, help="seconds per run; 0=none")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="new tokens per run")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--prompt", type=int, default=16, help="prompt length")
    args = ap.parse_args(argv)

    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    lengths = args.lengths or ([64, 256] if args.quick else [256, 1024, 4096])
    budget = args.recompute_budget
    if budget is None:
        budget = 5.0 if args.quick else 10.0

    model = make_model(args.layers, args.embd, args.heads, args.block)
    prompt = torch.randint(0, VOCAB, (args.prompt,), generator=torch.Generator().manual_seed(1))
    prompt_ids = prompt.tolist()
    time_cached(model, prompt_ids, 1, 8)  # warm up kernels and allocator
    time_recompute(model, prompt_ids, 1, 8, 0)

    points = sorted({x for x in (16, 32, 64, 128, 256, 384, 512, 640, 768, 896) if x < args.block})
    points.append(args.block)
    results: list[Result] = []
    for batch in args.batches:
        costs = step_costs(model, batch, points, repeats=3)
        print(f"# batch {batch} step costs: {costs}", file=sys.stderr, flush=True)
        for n in lengths:
            c_s = time_cached(model, prompt_ids, batch, n)
            d_tok, d_s = time_recompute(model, prompt_ids, batch, n, budget)
            predicted = estimate_recompute_s(costs, args.prompt, args.block, d_tok)
            whole = d_s if d_tok == n else estimate_recompute_s(costs, args.prompt, args.block, n)
            res = Result(batch, n, c_s, d_tok, d_s, predicted, whole)
            results.append(res)
            print(f"# {res}", file=sys.stderr, flush=True)

    cmd = "python bench/sample.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"Command: `{cmd.strip()}`  ")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}, Python {platform.python_version()}; "
        f"clock: {args.clock}{' (process CPU time)' if args.clock == 'cpu' else ''}  "
    )
    print(
        f"Model: music-transformer {args.layers} layers, {args.embd} dims, {args.heads} heads, "
        f"block {args.block} (sliding window beyond it, keep {args.block // 2}), vocab {VOCAB}, "
        f"{model.num_params() / 1e6:.1f} M parameters, float32; prompt {args.prompt} tokens; "
        f"one prompt x batch variations; recompute budget {budget:g} s per run  "
    )
    print()
    print(
        "| batch | new tokens | KV-cached (measured) | recompute, measured directly "
        "| recompute, whole run | speed-up (whole run) | speed-up (vs direct) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        cached = f"{r.tps(r.cached_s):.1f} tok/s ({r.cached_s:.1f} s)"
        direct = f"{r.tps(r.direct_s, r.direct_tokens):.2f} tok/s"
        if r.complete:
            direct += f" ({r.direct_s:.1f} s, complete)"
            whole_cell = f"{r.tps(r.whole_s):.2f} tok/s (measured)"
        else:
            direct += (
                f" over first {r.direct_tokens} tokens ({r.direct_s:.1f} s; "
                f"estimate said {r.direct_predicted_s:.1f} s)"
            )
            whole_cell = f"{r.tps(r.whole_s):.2f} tok/s ({r.whole_s:.0f} s, from step costs)"
        whole_ratio = r.whole_s / r.cached_s
        direct_ratio = r.tps(r.cached_s) / r.tps(r.direct_s, r.direct_tokens)
        prefix = "" if r.complete else "≥ "
        print(
            f"| {r.batch} | {r.new_tokens} | {cached} | {direct} | {whole_cell} "
            f"| {whole_ratio:.1f}× | {prefix}{direct_ratio:.1f}× |"
        )
    print()
    print("tok/s counts the new tokens of all rows of the batch.")


# ----------------------------------------------------------------------------- vs a plain loop
# The default mode: Cadenza's sampler against a plain KV-cache loop of the same size (issue 16).
# Imports only torch, numpy, pydantic and cadenza.models / cadenza.sample (the CUDA machine has
# nothing else).


@torch.inference_mode()
def reference_generate(model: Any, batch: int, n: int, seed: int = 0) -> list[list[int]]:
    """The reference: a plain KV-cache loop of ~40 lines (what a user writes in an afternoon).

    `torch.cat` grows each layer's keys/values per token, no compile, plain softmax +
    multinomial, one host read at the end. Same weights as the model (a Cadenza `gpt`); no
    sliding window, so the prompt (1 token) + new tokens must fit in block_size.
    """
    dev = model.wte.weight.device
    gen = torch.Generator(device=dev).manual_seed(seed)
    C, nh = model.config.n_embd, model.config.n_head
    hs = C // nh
    idx = torch.zeros(batch, 1, dtype=torch.long, device=dev)
    past: list[tuple[torch.Tensor, torch.Tensor]] = []
    out, start = [], 0
    for _ in range(n):
        T = idx.size(1)
        x = model.wte(idx) + model.wpe(torch.arange(start, start + T, device=dev))
        new = []
        for i, blk in enumerate(model.h):
            q, k, v = blk.attn.c_attn(blk.ln_1(x)).split(C, 2)
            q, k, v = (t.view(batch, T, nh, hs).transpose(1, 2) for t in (q, k, v))
            if past:
                k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
            new.append((k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + blk.attn.c_proj(y.transpose(1, 2).reshape(batch, T, C))
            x = x + blk.mlp(blk.ln_2(x))
        logits = model.lm_head(model.ln_f(x[:, -1])).float()
        past, start = new, start + T
        idx = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen)
        out.append(idx)
    return torch.cat(out, 1).tolist()


def gpt_model(layers: int, embd: int, heads: int, block: int, device: str, dtype: str) -> Any:
    torch.manual_seed(0)
    over = {"n_layer": layers, "n_embd": embd, "n_head": heads, "block_size": block}
    cfg = resolve_config("gpt", None, {**over, "dropout": 0.0})
    model = build_model("gpt", cfg, VOCAB).eval()
    return model.to(device=device, dtype=getattr(torch, dtype))


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Any, device: str) -> float:
    _sync(device)
    t0 = clock()
    fn()
    _sync(device)
    return clock() - t0


def copy_bandwidth(device: str, mib: int = 1024) -> float:
    """Bytes/s of a large device-to-device copy (read + write), the weights-read bound's rate."""
    a = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = min(_timed(lambda: b.copy_(a), device) for _ in range(5))
    return 2 * a.numel() / best


def run_reference(args: argparse.Namespace) -> None:
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    dev, n = args.device, args.new_tokens
    model = gpt_model(args.layers, args.embd, args.heads, args.block, dev, args.dtype)
    if n + 1 > args.block:
        raise SystemExit(f"--new-tokens + 1 must fit in --block ({args.block})")
    modes = ["eager", "compiled" if not dev.startswith("cuda") else "cudagraph"]
    if args.no_compile:
        modes = ["eager"]
    if args.quantize != "none":  # the same decoders over the model's int8 copy
        modes += [f"{args.quantize} {m}" for m in modes]

    def ours(batch: int, mode: str, tokens: int = n) -> None:
        quantize = mode.split()[0] if " " in mode else "none"
        params = SamplingParams(
            max_new_tokens=tokens, seed=0, compile=not mode.endswith("eager"), quantize=quantize
        )
        generate(model, [[0]], params, n=batch)

    # warm-up (kernels, allocator), then the first compiled/captured run, timed on the wall
    reference_generate(model, 1, 16)
    ours(1, "eager", 16)
    first: dict[tuple[int, str], float] = {}
    for batch in args.batches:
        for mode in [m for m in modes if not m.endswith("eager")]:
            t0 = time.perf_counter()
            _sync(dev)
            ours(batch, mode)
            _sync(dev)
            first[(batch, mode)] = time.perf_counter() - t0
    rows = []
    for batch in args.batches:
        times: dict[str, list[float]] = {"reference": [], **{m: [] for m in modes}}
        for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
            times["reference"].append(
                _timed(lambda b=batch: reference_generate(model, b, n), dev)  # type: ignore[misc]
            )
            for mode in modes:
                times[mode].append(_timed(lambda b=batch, m=mode: ours(b, m), dev))  # type: ignore[misc]
        best = {k: min(v) for k, v in times.items()}
        rows.append((batch, best, first))
        print(f"# batch {batch}: {times}", file=sys.stderr, flush=True)

    cmd = "python bench/sample.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    params = model.num_params()
    print(f"Command: `{cmd.strip()}`  ")
    where = torch.cuda.get_device_name() if dev.startswith("cuda") else cpu_model()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    print(
        f"Machine: {where}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}; load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"clock: {args.clock}  "
    )
    print(
        f"Model: gpt {args.layers} layers, {args.embd} wide, {args.heads} heads, block "
        f"{args.block}, vocab {VOCAB}, {params / 1e6:.2f} M parameters, {args.dtype}; prompt 1 "
        f"token, {n} new tokens, plain sampling (temperature 1); best of {args.repeats}  "
    )
    print()
    head = "| batch | reference tok/s |" + "".join(f" {m} tok/s | {m} / reference |" for m in modes)
    firsts = [m for m in modes if not m.endswith("eager")]
    print(head + "".join(f" first {m} run (wall) |" for m in firsts))
    print("|---:|---:|" + "---:|---:|" * len(modes) + "---:|" * len(firsts))
    for batch, best, first_run in rows:
        ref = batch * n / best["reference"]
        cells = "".join(
            f" {batch * n / best[m]:.0f} | {best['reference'] / best[m]:.2f}x |" for m in modes
        )
        extra = "".join(f" {first_run[(batch, m)]:.1f} s |" for m in firsts)
        print(f"| {batch} | {ref:.0f} |{cells}{extra}")
    if dev.startswith("cuda"):
        bw = copy_bandwidth(dev)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        bound = nbytes / bw
        b1 = next(best for batch, best, _ in rows if batch == 1) if 1 in args.batches else None
        print()
        print(
            f"Copy bandwidth {bw / 1e9:.0f} GB/s; weights {nbytes / 1e6:.1f} MB; "
            f"weights-read bound {bound * 1e6:.1f} us/token"
        )
        if b1 is not None:
            for m in ["reference", *modes]:
                per = b1[m] / n
                print(f"batch 1 {m}: {per * 1e6:.1f} us/token = {per / bound:.1f}x the bound")


def reference_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    ap.add_argument("--new-tokens", type=int, default=1023)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--embd", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--block", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true", help="eager only")
    ap.add_argument("--gpu-quick", action="store_true", help="CUDA preset: < 90 s on an H200")
    ap.add_argument("--api", action="store_true", help="sample jobs through the embedded stack")
    ap.add_argument(
        "--quantize",
        default="none",
        choices=["none", "int8"],
        help="also time the decoders over the model's int8 copy (the request's `quantize`); "
        "--api: the jobs' variants are fp32, int8 and int8 compiled",
    )
    ap.add_argument(
        "--quality",
        action="store_true",
        help="what int8 costs: a gpt trained on Bach chorales, held-out NLL and KL to float32",
    )
    ap.add_argument("--quality-steps", type=int, default=600)
    args = ap.parse_args(argv)
    if args.gpu_quick:
        args.device = "cuda" if args.device == "cpu" else args.device
        args.dtype = "bfloat16" if args.dtype == "float32" else args.dtype
        args.repeats = 2
    return args


def gpu_quick(args: argparse.Namespace) -> None:
    """The issue's size, then a 24-layer 1024-wide gpt (~300 M parameters) where the weights
    read per token, not launches, set the batch-1 latency."""
    run_reference(args)
    print()
    big = argparse.Namespace(**{**vars(args), "layers": 24, "embd": 1024, "heads": 16})
    big.new_tokens, big.batches = 255, [1, 8]
    run_reference(big)


# ----------------------------------------------------------------------------- int8's cost


def quality_mode(args: argparse.Namespace) -> None:
    """What `quantize: "int8"` changes in the model's probabilities, on real music: a `gpt` of
    the bench's size trained `--quality-steps` steps on 100 Bach chorales (REMI corpus, 80/10/10
    split), then on every 256-token window of the validation split, teacher-forced: the NLL per
    token of the float32 model and of its int8 copy, the KL divergence from the float32
    distribution to the int8 one per token, and how often both rank the same token first.
    """
    from controls import build, train_model  # bench/controls.py: corpus and training helpers

    from cadenza.datasets import export_bach_chorales
    from cadenza.models.quantize import quantize_int8

    if args.threads:
        torch.set_num_threads(args.threads)
    cache = Path(os.environ.get("CADENZA_TEST_CACHE", Path(__file__).parents[1] / ".cache"))
    paths = export_bach_chorales(cache / "bach-midi", 100)
    corpus = build([(p.stem, p.read_bytes()) for p in paths], controls=[])
    size = {"n_layer": args.layers, "n_embd": args.embd, "n_head": args.heads, "dropout": 0.0}
    t0 = time.perf_counter()
    model = train_model(corpus, args.quality_steps, arch="gpt", preset="small", config=size)
    train_s = time.perf_counter() - t0
    q = quantize_int8(model)
    val = torch.as_tensor(corpus.splits["val"].astype("int64"))
    win = 256
    windows = val[: (val.numel() - 1) // win * win + 1]
    xs = windows[:-1].view(-1, win)
    ys = windows[1:].view(-1, win)
    nll32 = nll8 = kl = agree = 0.0
    count = 0
    with torch.no_grad():
        for x, y in zip(xs.split(8), ys.split(8), strict=True):
            lp32 = F.log_softmax(model(x)[0].float(), -1)
            lp8 = F.log_softmax(q(x)[0].float(), -1)
            nll32 += -lp32.gather(-1, y[..., None]).sum().item()
            nll8 += -lp8.gather(-1, y[..., None]).sum().item()
            kl += (lp32.exp() * (lp32 - lp8)).sum().item()
            agree += (lp32.argmax(-1) == lp8.argmax(-1)).sum().item()
            count += y.numel()
    bytes32 = sum(p.numel() * p.element_size() for p in model.parameters())
    bytes8 = sum(b.numel() * b.element_size() for b in q.buffers()) + sum(
        p.numel() * p.element_size() for p in q.parameters()
    )
    load = os.getloadavg()
    print(f"Command: `python bench/sample.py {' '.join(sys.argv[1:])}`  ")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__}; load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}  "
    )
    print(
        f"Model: gpt {args.layers}x{args.embd}, {model.num_params() / 1e6:.2f} M parameters, "
        f"trained {args.quality_steps} steps ({train_s:.0f} s) on {len(paths)} chorales, "
        f"vocabulary {corpus.tokenizer.vocab_size}; {count:,} held-out tokens  "
    )
    print()
    print("| model | weights (MB) | held-out NLL (nats/token) | KL from float32 | same top token |")
    print("|---|---:|---:|---:|---:|")
    print(f"| float32 | {bytes32 / 1e6:.1f} | {nll32 / count:.4f} | | |")
    print(
        f"| int8 weights, bfloat16 activations | {bytes8 / 1e6:.1f} | {nll8 / count:.4f} | "
        f"{kl / count:.5f} | {100 * agree / count:.1f} % |"
    )


# ----------------------------------------------------------------------------- through the API


def _job_seconds(job: dict[str, Any]) -> float:
    from datetime import datetime

    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()


def api_mode(args: argparse.Namespace) -> None:
    """Sampling as a user gets it: the embedded stack (API + one worker, SQLite + filesystem
    broker, a temporary data folder), a `gpt` of the issue's size trained for 2 steps on a few
    Bach chorales, then sample jobs timed by their own started/finished timestamps minus a
    1-token job's (loading the checkpoint, decoding, rendering: what does not scale with the
    tokens). The reference loop runs in this process on a model of the same size and
    vocabulary, interleaved with the jobs; both use one thread.
    """
    import tempfile

    from cadenza.client import Client
    from cadenza.datasets import export_bach_chorales
    from cadenza.launch.processes import free_port
    from cadenza.launch.stack import create_key, launch, migrate

    global clock
    clock = time.perf_counter
    torch.set_num_threads(1)
    n = args.new_tokens
    with tempfile.TemporaryDirectory(prefix="cadenza-bench-sample-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
        env |= {"CADENZA_DATA_DIR": tmp, "OMP_NUM_THREADS": "1"}
        migrate(env)
        key = create_key(env, "bench")
        port = free_port()
        with (
            launch(env, port=port, queues=("cpu,gpu",)),
            Client(f"http://127.0.0.1:{port}", key) as c,
        ):
            paths = export_bach_chorales(Path(tmp) / "midi", 8)
            ds = c.create_dataset("bench-sample")
            c.upload(ds["id"], paths)
            job = c.wait(c.create_corpus(ds["id"], preset="remi-chords-tempos")["id"])
            corpus = c.get(f"/v1/corpora/{job['corpus_id']}")
            size = {"n_layer": args.layers, "n_embd": args.embd, "n_head": args.heads}
            job = c.wait(
                c.create_model(
                    corpus["id"],
                    architecture="gpt",
                    preset="tiny",
                    config={**size, "block_size": args.block, "dropout": 0.0},
                    train={"max_steps": 2, "eval_interval": 1, "seq_len": 64, "batch_size": 2},
                )["id"]
            )
            if job["state"] != "succeeded":
                raise SystemExit(f"training failed: {job.get('error')}")
            model_id = job["model_id"]
            vocab = int(corpus["vocab_size"])

            def sample_job(batch: int, tokens: int, compile: bool, quantize: str) -> float:
                body = {
                    "n": batch,
                    "max_new_tokens": tokens,
                    "seed": 0,
                    "stop_at_eos": False,
                    "min_notes": 0,
                    "resample_empty": 0,
                    "compile": compile,
                    "quantize": quantize,
                }
                done = c.wait(c.sample(model_id, **body)["id"])
                if done["state"] != "succeeded":
                    raise SystemExit(f"sample job failed: {done.get('error')}")
                return _job_seconds(done)

            global VOCAB
            VOCAB = vocab
            ref_model = gpt_model(args.layers, args.embd, args.heads, args.block, "cpu", "float32")
            reference_generate(ref_model, 1, 16)
            sample_job(1, 1, False, "none")  # the worker loads torch and the model once
            variants = [("float32", False, "none")]
            if args.quantize != "none":
                variants += [(args.quantize, False, args.quantize)]
                variants += [(f"{args.quantize} compiled", True, args.quantize)]
            rows = []
            for batch in args.batches:
                for name, compile, quantize in variants:
                    ref, ours, one = [], [], []

                    def reference(b: int = batch) -> None:
                        reference_generate(ref_model, b, n)

                    for _ in range(args.repeats):
                        ref.append(_timed(reference, "cpu"))
                        one.append(sample_job(batch, 1, compile, quantize))
                        ours.append(sample_job(batch, n, compile, quantize) - one[-1])
                    rows.append((batch, name, min(ref), min(ours), min(one)))
                    say = f"# batch {batch} {name}: ref {ref} ours {ours} one-token {one}"
                    print(say, file=sys.stderr)
    load = os.getloadavg()
    print(f"Command: `python bench/sample.py {' '.join(sys.argv[1:])}`  ")
    print(
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, 1 thread each (worker and reference); "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}  "
    )
    print(
        f"Model: gpt {args.layers}x{args.embd}, block {args.block}, vocab {vocab}; {n} new "
        f"tokens, job time = started->finished minus a 1-token job; best of {args.repeats}  "
    )
    print()
    print("| batch | job | reference tok/s | API job tok/s | job / reference | 1-token job |")
    print("|---:|---|---:|---:|---:|---:|")
    for batch, name, ref_s, ours_s, one_s in rows:
        print(
            f"| {batch} | {name} | {batch * n / ref_s:.0f} | {batch * n / ours_s:.0f} | "
            f"{ref_s / ours_s:.2f}x | {one_s:.2f} s |"
        )


if __name__ == "__main__":
    if "--vs-recompute" in sys.argv[1:]:
        recompute_main()
    else:
        ns = reference_args()
        if ns.quality:
            quality_mode(ns)
        elif ns.api:
            api_mode(ns)
        elif ns.gpu_quick:
            gpu_quick(ns)
        else:
            run_reference(ns)
