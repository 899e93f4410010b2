"""Sampling: filters as pure functions, seeded reproducibility, greedy, batching with padding,
EOS and cancel, and KV-cached generation (with its sliding window) against recomputation."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cadenza.sample.decode as decode
from cadenza.models import CadenzaModel, build_model, resolve_config
from cadenza.sample import (
    SamplingParams,
    apply_min_p,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    generate,
    generate_uncached,
)
from cadenza.sample.sampler import SYNC_EVERY, filter_logits, top_k_distribution

ARCHS = ["gpt", "gru", "lstm", "music-transformer"]
TRANSFORMERS = ["gpt", "music-transformer"]
VOCAB = 24
BLOCK = 16


@pytest.fixture(scope="module")
def models() -> dict[str, CadenzaModel]:
    """Tiny float64 models (block 16 for transformers), so float rounding never flips a draw."""
    out: dict[str, CadenzaModel] = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        extra: dict[str, Any] = {"block_size": BLOCK} if arch in TRANSFORMERS else {}
        cfg = resolve_config(arch, "tiny", extra)
        model = build_model(arch, cfg, VOCAB).double().eval()
        with torch.no_grad():  # sharpen the random model a little so greedy has clear winners
            for p in model.parameters():
                if p.dim() == 2:
                    p.mul_(3.0)
        out[arch] = model
    return out


# ----------------------------------------------------------------------------- filters

logit_rows = st.lists(
    st.floats(-20, 20, allow_nan=False, allow_subnormal=False), min_size=2, max_size=40
)


@settings(max_examples=200, deadline=None)
@given(row=logit_rows, p=st.floats(0.01, 0.999))
def test_top_p_keeps_the_smallest_set_reaching_p(row: list[float], p: float) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(apply_top_p(logits, p))[0]
    mass = probs[kept].sum().item()
    assert mass >= p - 1e-12  # reaches p
    # the kept tokens are the most likely ones ...
    assert probs[kept].min() >= probs[~kept].max() if (~kept).any() else True
    # ... and no smaller set does: without its least likely member the mass is below p
    assert mass - probs[kept].min().item() < p + 1e-12


def test_top_p_examples() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]], dtype=torch.float64)
    logits = probs.log()
    keep = lambda p: torch.isfinite(apply_top_p(logits, p))[0].tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.6) == [True, True, False, False]
    assert keep(0.79) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]


@settings(max_examples=100, deadline=None)
@given(row=logit_rows, k=st.integers(1, 50))
def test_top_k_keeps_the_k_largest(row: list[float], k: int) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    out = apply_top_k(logits, k)[0]
    kept = torch.isfinite(out)
    distinct_threshold = sorted(row, reverse=True)[min(k, len(row)) - 1]
    assert kept.tolist() == [x >= distinct_threshold for x in row]
    assert torch.equal(out[kept], logits[0][kept])


@settings(max_examples=200, deadline=None)
@given(
    row=st.lists(st.floats(-20, 20, allow_nan=False), min_size=3, max_size=40, unique=True),
    k=st.integers(1, 39),
    p=st.one_of(st.none(), st.floats(0.05, 0.999)),
    m=st.one_of(st.none(), st.floats(0.001, 0.9)),
)
def test_top_k_path_draws_from_the_full_sort_filters_distribution(
    row: list[float], k: int, p: float | None, m: float | None
) -> None:
    """topk + top-p/min-p on the k survivors = the whole-vocabulary filters (distinct logits)."""
    k = min(k, len(row) - 1)
    params = SamplingParams(top_k=k, top_p=p, min_p=m, temperature=0.7)
    logits = torch.tensor([row], dtype=torch.float64)
    probs, ids = top_k_distribution(logits, params, None)
    dense = torch.zeros_like(logits).scatter(1, ids, probs)
    want = torch.softmax(filter_logits(logits, params, None), dim=-1)
    assert torch.equal(dense > 0, want > 0)  # the same support
    assert torch.allclose(dense, want, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(row=logit_rows, m=st.floats(0.001, 1.0))
@example(row=[-1.1987588519561809e-40, 0.0], m=1.0)  # tied probabilities (a case hypothesis found)
def test_min_p_drops_tokens_below_a_fraction_of_the_best(row: list[float], m: float) -> None:
    logits = torch.tensor([row], dtype=torch.float64)
    probs = torch.softmax(logits, -1)[0]
    kept = torch.isfinite(apply_min_p(logits, m))[0]
    for i in range(len(row)):
        ratio = probs[i].item() / probs.max().item()
        if abs(ratio - m) > 1e-9:  # away from the boundary the rule is unambiguous
            assert bool(kept[i]) == (ratio >= m)
    # The highest logit is always kept (probabilities may tie where logits do not, e.g.
    # exp(-1e-40) == exp(0) in float64, so their argmax is not the token to check).
    assert bool(kept[int(logits[0].argmax())])


def test_repetition_penalty_makes_seen_tokens_less_likely() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]])
    history = torch.tensor([[0, 1, -1], [3, 3, -1]])  # -1 = nothing (padding)
    out = apply_repetition_penalty(logits, history, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, 1.0, 0.5]]
    assert torch.equal(apply_repetition_penalty(logits, history, 1.0), logits)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -1.0),
        ("top_k", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 2.0),
        ("repetition_penalty", 0.0),
        ("max_new_tokens", 0),
        ("window_keep", 0),
    ],
)
def test_bad_sampling_params_name_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


# ----------------------------------------------------------------------------- generation


def reference_generate(
    model: CadenzaModel, prompt: list[int], steps: int, keep: int | None, seed: int | None
) -> list[int]:
    """Decoding by full forward passes with generate's documented window policy (when the
    context would exceed block_size it restarts at the last `keep` tokens); greedy when seed is
    None, else one multinomial draw per step from a generator seeded with `seed`."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    ctx, start, out = list(prompt), 0, []
    with torch.no_grad():
        for _ in range(steps):
            if model.block_size is not None and len(ctx) - start > model.block_size:
                assert keep is not None
                start = len(ctx) - keep
            logits, _ = model(torch.tensor([ctx[start:]]))
            last = logits[:, -1]  # (1, V)
            if gen is None:
                out.append(int(last.argmax()))
            else:
                out.append(int(torch.multinomial(last.softmax(-1), 1, generator=gen)))
            ctx.append(out[-1])
    return out


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_past_block_size_equals_recomputing_the_window(
    models: dict[str, CadenzaModel], arch: str
) -> None:
    model = models[arch]
    steps, keep = 3 * BLOCK + 5, 6  # slides several times for transformers
    sampled = SamplingParams(seed=11, max_new_tokens=steps, window_keep=keep)
    got = generate(model, [[1, 2, 3, 4, 5]], sampled)[0]
    assert got == reference_generate(model, [1, 2, 3, 4, 5], steps, keep, seed=11)
    assert len(set(got)) > 3  # a real sequence, not a constant

    greedy = SamplingParams(temperature=0.0, max_new_tokens=steps, window_keep=keep)
    got = generate(model, [[1, 2, 3, 4, 5]], greedy)[0]
    assert got == reference_generate(model, [1, 2, 3, 4, 5], steps, keep, seed=None)


@pytest.mark.parametrize("arch", ARCHS)
def test_top_k_1_is_greedy(models: dict[str, CadenzaModel], arch: str) -> None:
    model = models[arch]
    greedy = generate(model, [[7, 8]], SamplingParams(temperature=0.0, max_new_tokens=20))
    top1 = generate(model, [[7, 8]], SamplingParams(top_k=1, seed=5, max_new_tokens=20), n=3)
    assert top1 == greedy * 3


@pytest.mark.parametrize("arch", ARCHS)
def test_seeded_sampling_is_reproducible_and_variations_differ(
    models: dict[str, CadenzaModel], arch: str
) -> None:
    model = models[arch]
    params = SamplingParams(seed=123, max_new_tokens=40, top_p=0.95)
    a = generate(model, [[3, 4, 5]], params, n=4)
    b = generate(model, [[3, 4, 5]], params, n=4)
    c = generate(model, [[3, 4, 5]], SamplingParams(seed=124, max_new_tokens=40), n=4)
    assert a == b
    assert a != c
    assert len({tuple(row) for row in a}) == 4  # the 4 variations of one batch differ
    assert all(len(row) == 40 for row in a)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_and_recompute_samplers_draw_the_same_tokens(
    models: dict[str, CadenzaModel], arch: str
) -> None:
    """Same seed, same window policy, prompts of different lengths (padded) in one batch, past
    block_size: cached decoding must reproduce recomputation token for token."""
    model = models[arch]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    params = SamplingParams(seed=9, max_new_tokens=2 * BLOCK + 3, window_keep=5)
    cached = generate(model, prompts, params, n=2)
    recomputed = generate_uncached(model, prompts, params, n=2, window="same")
    assert cached == recomputed


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_rows_equal_prompts_generated_alone(
    models: dict[str, CadenzaModel], arch: str
) -> None:
    model = models[arch]
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    together = generate(model, prompts, params)
    alone = [generate(model, [p], params)[0] for p in prompts]
    assert together == alone


def test_long_prompt_is_windowed(models: dict[str, CadenzaModel]) -> None:
    model = models["music-transformer"]
    prompt = [i % VOCAB for i in range(3 * BLOCK)]
    params = SamplingParams(temperature=0.0, max_new_tokens=10, window_keep=8)
    assert generate(model, [prompt], params)[0] == reference_generate(
        model, prompt, 10, 8, seed=None
    )


def test_uncached_slide_is_the_earlier_systems_window(models: dict[str, CadenzaModel]) -> None:
    """window='slide' always conditions on the last block_size tokens."""
    model = models["gpt"]
    steps = BLOCK + 4
    got = generate_uncached(
        model, [[1, 2]], SamplingParams(temperature=0.0, max_new_tokens=steps), window="slide"
    )[0]
    ctx, want = [1, 2], []
    with torch.no_grad():
        for _ in range(steps):
            logits, _ = model(torch.tensor([ctx[-BLOCK:]]))
            want.append(int(logits[0, -1].argmax()))
            ctx.append(want[-1])
    assert got == want


def test_eos_ends_a_row_and_the_others_continue(models: dict[str, CadenzaModel]) -> None:
    model = models["gru"]
    params = SamplingParams(temperature=0.0, max_new_tokens=15)
    free = generate(model, [[1, 2], [5, 6, 7]], params)
    eos = free[0][3]
    assert eos not in free[1]
    stopped = generate(
        model, [[1, 2], [5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=15, eos_id=eos)
    )
    first = free[0].index(eos)
    assert stopped[0] == free[0][: first + 1]  # ends with eos
    assert stopped[1] == free[1]
    ignored = SamplingParams(temperature=0.0, max_new_tokens=15, eos_id=eos, stop_at_eos=False)
    assert generate(model, [[1, 2], [5, 6, 7]], ignored) == free


def test_on_token_reports_every_few_steps_and_can_cancel(models: dict[str, CadenzaModel]) -> None:
    """The host reads tokens every SYNC_EVERY steps (and at the last): on_token sees every token
    by then, and cancelling keeps exactly the tokens reported."""
    model = models["music-transformer"]
    seen: list[tuple[int, list[int]]] = []
    stop = 2 * SYNC_EVERY

    def on_token(step: int, tokens: list[list[int]]) -> bool:
        seen.append((step, [len(r) for r in tokens]))
        return step == stop

    out = generate(model, [[1]], SamplingParams(seed=1, max_new_tokens=50), n=2, on_token=on_token)
    assert [len(r) for r in out] == [stop, stop]
    assert seen == [(s, [s, s]) for s in (SYNC_EVERY, stop)]
    full = generate(model, [[1]], SamplingParams(seed=1, max_new_tokens=50), n=2)
    assert [r[:stop] for r in full] == out  # cancelling keeps exactly what was generated
    seen.clear()
    generate(model, [[1]], SamplingParams(seed=1, max_new_tokens=11), on_token=on_token)
    assert seen == [(SYNC_EVERY, [SYNC_EVERY]), (11, [11])]  # the last step is always reported


def test_repetition_penalty_uses_the_recent_context_window(
    models: dict[str, CadenzaModel],
) -> None:
    """The penalty looks at the last repetition_window tokens of prompt + output."""
    model = models["lstm"]
    params = SamplingParams(
        temperature=0.0, max_new_tokens=30, repetition_penalty=3.0, repetition_window=5
    )
    got = generate(model, [[1, 2, 3]], params)[0]
    ctx: list[int] = [1, 2, 3]
    with torch.no_grad():
        for _ in range(30):
            logits, _ = model(torch.tensor([ctx]))
            penalised = apply_repetition_penalty(logits[:, -1], torch.tensor([ctx[-5:]]), 3.0)
            ctx.append(int(penalised.argmax()))
    assert got == ctx[3:]
    plain = generate(model, [[1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=30))[0]
    assert got != plain  # the penalty had an effect on this model


def test_generate_rejects_bad_inputs_and_restores_training_mode(
    models: dict[str, CadenzaModel],
) -> None:
    model = models["gpt"]
    with pytest.raises(ValueError, match="empty"):
        generate(model, [[]])
    with pytest.raises(ValueError, match="vocabulary"):
        generate(model, [[VOCAB]])
    with pytest.raises(ValueError, match="n "):
        generate(model, [[1]], n=0)
    with pytest.raises(ValueError, match="window_keep"):
        generate(model, [[1]], SamplingParams(window_keep=BLOCK + 1))
    model.train()
    try:
        generate(model, [[1]], SamplingParams(max_new_tokens=2))
        assert model.training
    finally:
        model.eval()


def test_temperature_flattens_the_distribution(models: dict[str, CadenzaModel]) -> None:
    """A very high temperature samples many distinct tokens; a very low one almost never."""
    model = models["gru"]
    hot = generate(model, [[1]], SamplingParams(seed=0, temperature=50.0, max_new_tokens=1), n=200)
    cold = generate(model, [[1]], SamplingParams(seed=0, temperature=1e-3, max_new_tokens=1), n=200)
    assert len({r[0] for r in hot}) > VOCAB // 2
    assert len({r[0] for r in cold}) == 1


# ----------------------------------------------------------------------------- fixed-shape decode


@pytest.mark.parametrize("arch", TRANSFORMERS)
def test_static_decode_over_spans_equals_the_window_recomputed(
    models: dict[str, CadenzaModel], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-allocated cache written in place, attention over spans shorter than the block
    (a span of 4 slots), padded prompts, sliding past block_size several times: the same
    tokens as recomputing every window."""
    monkeypatch.setattr(decode, "SPAN_STEP", 4)
    assert decode.span_for(5, BLOCK) == 8 and decode.span_for(15, BLOCK) == BLOCK
    model = models[arch]
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10]]
    params = SamplingParams(seed=3, max_new_tokens=3 * BLOCK + 2, window_keep=5, compile=False)
    cached = generate(model, prompts, params, n=2)
    assert cached == generate_uncached(model, prompts, params, n=2, window="same")


@pytest.mark.parametrize("arch", TRANSFORMERS)
def test_static_decode_step_equals_forward_step(models: dict[str, CadenzaModel], arch: str) -> None:
    model = models[arch]
    idx = torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(0))
    pad = torch.zeros(2, 4, dtype=torch.bool)
    pad[1, :3] = True
    a, b = model.init_cache(2), model.init_cache(2)
    with torch.no_grad():
        model.forward_step(idx[:, :4], a, pad_mask=pad)
        model.forward_step(idx[:, :4], b, pad_mask=pad)
        state = model.decode_state(b)
        assert state is not None
        for t in range(4, BLOCK):
            want = model.forward_step(idx[:, t : t + 1], a)[:, 0]
            got = model.decode_static(idx[:, t : t + 1], torch.tensor(t), *state, span=t + 1)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert models["gru"].decode_state(models["gru"].init_cache(1)) is None  # RNNs: forward_step


def test_compiled_step_compiles_once_per_span_and_equals_eager(
    models: dict[str, CadenzaModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    """compile=True: one graph per (batch, span) and none again for the next job of the same
    shapes; the tokens are the eager ones. (backend 'eager' stands in for inductor here: the
    guards and recompiles are dynamo's, whatever the backend.)"""
    from torch._dynamo.testing import CompileCounter

    monkeypatch.setattr(decode, "SPAN_STEP", 8)
    counter = CompileCounter()
    compiled = torch.compile(decode._step, dynamic=False, fullgraph=True, backend=counter)
    monkeypatch.setattr(decode, "_compiled", compiled)
    monkeypatch.setattr(decode, "_compiled_shapes", set())  # other tests stay eager
    model = models["music-transformer"]
    params = SamplingParams(seed=4, max_new_tokens=2 * BLOCK, window_keep=6)
    eager = generate(model, [[1, 2]], params, n=2)
    fast = SamplingParams(seed=4, max_new_tokens=2 * BLOCK, window_keep=6, compile=True)
    assert generate(model, [[1, 2]], fast, n=2) == eager
    assert counter.frame_count == 2  # spans 8 and 16
    assert generate(model, [[1, 2]], fast, n=2) == eager
    assert counter.frame_count == 2  # no recompile for the next job
    torch._dynamo.reset()  # the counting backend's graphs stay out of later compiles


def test_a_failing_compile_falls_back_to_eager_and_says_so_once(
    models: dict[str, CadenzaModel],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(decode, "_compiled", broken)
    monkeypatch.setattr(decode, "_failed", None)
    monkeypatch.setattr(decode, "_compiled_shapes", set())
    model = models["gpt"]
    params = SamplingParams(seed=2, max_new_tokens=20)
    eager = generate(model, [[3]], params)
    with caplog.at_level("WARNING", logger="cadenza.sample"):
        got = generate(model, [[3]], SamplingParams(seed=2, max_new_tokens=20, compile=True))
        again = generate(model, [[3]], SamplingParams(seed=2, max_new_tokens=20, compile=True))
    assert got == again == eager
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "no C++ compiler" in caplog.records[0].getMessage()
    assert not decode.compile_available()


def test_compile_rule_pays_only_for_long_jobs() -> None:
    enough = int(decode.COMPILE_COST_TOKENS / decode.COMPILE_SAVING) + 1
    assert not decode.compile_pays(256)
    assert decode.compile_pays(enough) and not decode.compile_pays(enough // 2)


@pytest.mark.parametrize("arch", ARCHS)
def test_rows_that_finish_early_are_dropped_from_the_batch(
    models: dict[str, CadenzaModel], arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy rows are independent, so a row's tokens are the same alone or in a batch whose
    other rows ended at EOS and were dropped; the batch did shrink."""
    model = models[arch]
    prompts = [[1, 2], [1, 2], [1, 2], [5, 6, 7]]  # 3 equal rows end together at EOS
    free = generate(model, prompts, SamplingParams(temperature=0.0, max_new_tokens=40))
    eos = next(t for t in free[0] if t not in free[3])  # the last row never ends
    selected: list[int] = []
    original = type(model).select_cache_rows

    def spy(self: CadenzaModel, cache: Any, rows: torch.Tensor) -> Any:
        selected.append(int(rows.numel()))
        return original(self, cache, rows)

    monkeypatch.setattr(type(model), "select_cache_rows", spy)
    params = SamplingParams(temperature=0.0, max_new_tokens=40, eos_id=eos)
    got = generate(model, prompts, params)
    want = [r[: r.index(eos) + 1] if eos in r else r for r in free]
    assert got == want
    assert len(got[0]) < 40 and len(got[3]) == 40
    assert selected == [1]  # the three finished rows left the batch at the next read
