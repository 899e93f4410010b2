"""Models: relative attention against the paper's formula, causality, learning, incremental
decoding equal to full recompute, sliding-window crops, configs, optimiser groups, checkpoints."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import Tensor
from torch.overrides import TorchFunctionMode

from cadenza.models import (
    ALIASES,
    ARCHITECTURES,
    MODEL_SPEC_KEY,
    MODEL_STATE_KEY,
    PRESETS,
    TRAIN_PRESETS,
    CadenzaModel,
    build_from_spec,
    build_model,
    load_checkpoint,
    model_class,
    model_from_checkpoint,
    model_from_safetensors,
    model_to_safetensors,
    relative_logits,
    resolve_config,
    train_preset,
)
from cadenza.models.gpt import CausalSelfAttention, RelativeEmbedding
from cadenza.models.registry import REGISTRY
from cadenza.models.relative_attention import REL_CHUNK, relative_attention
from cadenza.train.config import TrainConfig

ARCHS = sorted(ARCHITECTURES)
TRANSFORMERS = ["gpt", "music-transformer"]
VOCAB = 24
BLOCK = 16


def tiny(arch: str, dtype: torch.dtype = torch.float64, **overrides: Any) -> CadenzaModel:
    """A tiny seeded model in eval mode; transformers get a short block to exercise limits."""
    torch.manual_seed(0)
    if arch in TRANSFORMERS:
        overrides = {"block_size": BLOCK, **overrides}
    model = build_model(arch, resolve_config(arch, "tiny", overrides), VOCAB)
    return model.to(dtype).eval()


# ----------------------------------------------------------------------------- relative attention


def reference_srel(q: Tensor, er: Tensor) -> Tensor:
    """Srel[b, h, r, j] = q[b, h, r] · Er[distance i - j] for query i = S - T + r, j <= i, the
    definition in Huang et al. (2018), written out without skewing. Future entries are 0."""
    B, nh, T, hs = q.shape
    S = er.size(0)  # er is (S, hs) or (S, nh, hs)
    out = torch.zeros(B, nh, T, S, dtype=q.dtype)
    for r in range(T):
        i = S - T + r
        for j in range(i + 1):
            e = er[S - 1 - (i - j)]  # row S-1-d embeds distance d; (hs,) or (nh, hs)
            out[:, :, r, j] = (q[:, :, r, :] * e).sum(-1)
    return out


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-head"])
@pytest.mark.parametrize(("T", "S"), [(1, 1), (7, 7), (64, 64), (1, 9), (5, 12)])
def test_relative_logits_equal_the_formula(shared: bool, T: int, S: int) -> None:
    g = torch.Generator().manual_seed(T * 100 + S)
    B, nh, hs = 2, 3, 4
    q = torch.randn(B, nh, T, hs, generator=g, dtype=torch.float64)
    er = torch.randn(*(() if shared else (nh,)), S, hs, generator=g, dtype=torch.float64)
    er_rows = er if shared else er.permute(1, 0, 2)  # (S, hs) or (S, nh, hs) for the reference
    got = relative_logits(q, er)
    i = torch.arange(S - T, S).view(T, 1)
    causal = torch.arange(S).view(1, S) <= i
    want = reference_srel(q, er_rows)
    torch.testing.assert_close(got * causal, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-head"])
@pytest.mark.parametrize("T", [1, 7, 16])
def test_relative_attention_layer_equals_formula(shared: bool, T: int) -> None:
    """softmax((QKᵀ + Srel)/√d + causal) V through the module (SDPA path) vs by hand."""
    cfg = resolve_config(
        "music-transformer", "tiny", {"block_size": BLOCK, "rel_shared_heads": shared}
    )
    torch.manual_seed(1)
    attn = CausalSelfAttention(cfg, relative=True, rel_shared_heads=shared).double().eval()
    assert attn.rel is not None
    with torch.no_grad():
        attn.rel.weight.normal_(0, 1.0)  # large, so a dropped relative term cannot pass
    x = torch.randn(2, T, cfg.n_embd, dtype=torch.float64)
    got = attn(x)

    nh, hs = cfg.n_head, cfg.n_embd // cfg.n_head
    q, k, v = attn.c_attn(x).split(cfg.n_embd, dim=2)
    q, k, v = (t.view(2, T, nh, hs).transpose(1, 2) for t in (q, k, v))
    er = attn.rel.weight[..., BLOCK - T :, :]
    srel = reference_srel(q, er if shared else er.permute(1, 0, 2))
    att = (q @ k.transpose(-2, -1) + srel) / math.sqrt(hs)
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = (att.softmax(-1) @ v).transpose(1, 2).reshape(2, T, cfg.n_embd)
    want = attn.c_proj(y)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    if T > 1:  # and the relative term matters: without it the output is different
        no_rel = ((q @ k.transpose(-2, -1)) / math.sqrt(hs)).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")
        )
        y0 = (no_rel.softmax(-1) @ v).transpose(1, 2).reshape(2, T, cfg.n_embd)
        assert (attn.c_proj(y0) - got).abs().max() > 1e-3


def reference_relative_attention(q: Tensor, k: Tensor, v: Tensor, er: Tensor) -> Tensor:
    """softmax(Q Kᵀ + Srel + causal) V with Srel from the unskewed formula (q pre-scaled)."""
    T, S = q.size(2), k.size(2)
    srel = reference_srel(q, er if er.dim() == 2 else er.permute(1, 0, 2))
    future = torch.arange(S).view(1, S) > torch.arange(S - T, S).view(T, 1)
    att = (q @ k.transpose(-2, -1) + srel).masked_fill(future, float("-inf"))
    return att.softmax(-1) @ v


def _qkv_er(shared: bool, T: int, S: int, seed: int) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    B, nh, hs = 2, 3, 4
    q, k, v = (torch.randn(B, nh, n, hs, generator=g, dtype=torch.float64) for n in (T, S, S))
    er = torch.randn(*(() if shared else (nh,)), S, hs, generator=g, dtype=torch.float64)
    return tuple(t.requires_grad_() for t in (q, k, v, er))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-head"])
@pytest.mark.parametrize(
    ("T", "S", "chunk"), [(7, 7, 3), (16, 16, 16), (5, 9, 2), (20, 20, 6), (1, 6, 4)]
)
def test_chunked_relative_attention_equals_the_formula_with_exact_gradients(
    shared: bool, T: int, S: int, chunk: int
) -> None:
    """The memory-efficient kernel (chunks that do and do not divide T, queries that are the
    last rows of a longer context) against the plain formula, and its hand-written backward
    against finite differences, with and without attention dropout."""
    q, k, v, er = _qkv_er(shared, T, S, seed=T * 100 + S)
    want = reference_relative_attention(q, k, v, er)
    got = relative_attention(q, k, v, er, chunk=chunk)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    with torch.no_grad():  # the inference path (no autograd graph) is the same computation
        torch.testing.assert_close(relative_attention(q, k, v, er, chunk=chunk), want)
    # fast_mode checks the backward against finite differences along random directions: one
    # full Jacobian per input costs minutes here, and any wrong entry still shows up.
    assert torch.autograd.gradcheck(
        lambda *a: relative_attention(*a, chunk=chunk), (q, k, v, er), fast_mode=True
    )

    def with_dropout(*a: Tensor) -> Tensor:
        torch.manual_seed(7)  # the kernel draws its dropout seed from the global generator
        return relative_attention(*a, dropout_p=0.3, chunk=chunk)

    assert torch.autograd.gradcheck(with_dropout, (q, k, v, er), fast_mode=True)


def test_relative_attention_dropout_is_seeded_and_drops() -> None:
    q, k, v, er = _qkv_er(True, 16, 16, seed=3)
    torch.manual_seed(0)
    a = relative_attention(q, k, v, er, dropout_p=0.5, chunk=4)
    torch.manual_seed(0)
    b = relative_attention(q, k, v, er, dropout_p=0.5, chunk=4)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - relative_attention(q, k, v, er)).abs().max() > 1e-3


def test_relative_attention_runs_in_half_precision_with_float32_softmax() -> None:
    """bf16 q/k/v (what autocast hands over) with a float32 Er: output and gradients keep the
    inputs' dtypes and stay close to the float32 computation."""
    q, k, v, er = (t.detach().float() for t in _qkv_er(True, 24, 24, seed=5))
    half = [t.bfloat16().requires_grad_() for t in (q, k, v)]
    er_h = er.clone().requires_grad_()
    out = relative_attention(*half, er_h, chunk=8)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert [t.grad.dtype for t in half] == [torch.bfloat16] * 3  # type: ignore[union-attr]
    assert er_h.grad is not None and er_h.grad.dtype == torch.float32
    full = [t.clone().requires_grad_() for t in (q, k, v, er)]
    ref = relative_attention(*full, chunk=8)
    ref.square().sum().backward()
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
    torch.testing.assert_close(er_h.grad, full[3].grad, rtol=0.1, atol=0.1)


def test_music_transformer_trains_under_bf16_autocast() -> None:
    model = tiny("music-transformer", torch.float32)
    model.train()
    idx = torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx[:, :-1], idx[:, 1:])
    assert loss is not None and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch function returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per-head"])
def test_relative_term_memory_is_linear_in_length(shared: bool) -> None:
    """Er is (L, hs) per layer (per head), skewing never builds an (L, L, hs) tensor, and a
    training step of a relative layer (forward and backward) never holds a tensor bigger than
    one chunk of queries against all keys: linear in L, where an (L, L) bias per head is not."""
    nh, hs = 2, 16
    cfg = resolve_config(
        "music-transformer",
        "tiny",
        {"n_head": nh, "n_embd": nh * hs, "block_size": 4 * REL_CHUNK, "rel_shared_heads": shared},
    )
    attn = CausalSelfAttention(cfg, relative=True, rel_shared_heads=shared)
    for L in (REL_CHUNK, 2 * REL_CHUNK, 4 * REL_CHUNK):
        table = RelativeEmbedding(L, hs, None if shared else nh)
        assert table.weight.numel() == L * hs * (1 if shared else nh)  # linear in L
        q = torch.randn(1, nh, L, hs)
        with _LargestTensor() as probe:
            table(q, L)
        # Q·Erᵀ before/after the skew pad is (nh, L, L+1); a per-pair embedding gather would be
        # (L, L, hs) = hs/nh times more.
        assert probe.largest <= nh * L * (L + 1)
        assert probe.largest < L * L * hs

        x = torch.randn(1, L, cfg.n_embd, requires_grad=True)
        with _LargestTensor() as probe:
            attn(x).sum().backward()
        assert probe.largest <= max(nh * REL_CHUNK * (L + 1), 4 * L * cfg.n_embd)
        if L > REL_CHUNK:
            assert probe.largest < nh * L * L  # the (heads, L, L) bias SDPA would need
    assert attn.rel is not None and attn.rel.weight.grad is not None


# ----------------------------------------------------------------------------- model behaviour


@pytest.mark.parametrize("arch", ARCHS)
def test_changing_a_future_token_never_changes_past_logits(arch: str) -> None:
    model = tiny(arch)
    idx = torch.randint(0, VOCAB, (2, BLOCK), generator=torch.Generator().manual_seed(2))
    changed = idx.clone()
    t = 9
    changed[:, t] = (changed[:, t] + 1) % VOCAB
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-12)
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-6  # the change is visible from t on


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_model_overfits_a_fixed_sequence(arch: str) -> None:
    """The tiny preset memorises 64 tokens: mean loss < 0.05 nats within 150 AdamW steps."""
    torch.manual_seed(3)
    model = build_model(arch, resolve_config(arch, "tiny", {"dropout": 0.0}), 32)
    seq = torch.randint(0, 32, (1, 65), generator=torch.Generator().manual_seed(4))
    x, y = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.optim_groups(0.0), lr=1e-2)
    model.train()
    losses: list[float] = []
    for _ in range(150):
        _, loss = model(x, y)
        assert loss is not None
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if loss.item() < 0.05:
            break
    assert losses[0] > 2.5  # started near ln(32) = 3.47: it had to learn
    assert min(losses) < 0.05, f"{arch} reached only {min(losses):.3f}"


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_ignores_minus_100(arch: str) -> None:
    model = tiny(arch)
    idx = torch.randint(0, VOCAB, (2, 10))
    targets = torch.randint(0, VOCAB, (2, 10))
    with torch.no_grad():
        logits, _ = model(idx)
        masked = targets.clone()
        masked[:, :4] = -100
        _, loss = model(idx, masked)
    want = F.cross_entropy(logits[:, 4:].reshape(-1, VOCAB), targets[:, 4:].reshape(-1))
    assert loss is not None
    torch.testing.assert_close(loss, want)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    ("dtype", "atol"),
    # float64: only summation order differs, so agreement is ~1e-15. float32: logits are O(1)
    # and each is a few hundred float32 multiply-adds (eps 1.2e-7) deep, so 1e-5 holds with a
    # wide margin while any real mismatch (a wrong position, a missing term) is >= 1e-3.
    [(torch.float64, 1e-10), (torch.float32, 1e-5)],
    ids=["float64", "float32"],
)
def test_cached_decoding_equals_full_recompute_at_every_step(
    arch: str, dtype: torch.dtype, atol: float
) -> None:
    model = tiny(arch, dtype)
    idx = torch.randint(0, VOCAB, (3, BLOCK), generator=torch.Generator().manual_seed(5))
    cache = model.init_cache(3)
    with torch.no_grad():
        prefill = model.forward_step(idx[:, :5], cache)  # a chunk, then one token at a time
        steps = [model.forward_step(idx[:, t : t + 1], cache) for t in range(5, BLOCK)]
        assert model.cache_len(cache) == BLOCK
        for t in range(1, BLOCK + 1):  # every step against a from-scratch pass over idx[:, :t]
            full, _ = model(idx[:, :t])
            got = prefill[:, t - 1] if t <= 5 else steps[t - 6][:, 0]
            torch.testing.assert_close(got, full[:, -1], rtol=0, atol=atol)


@pytest.mark.parametrize("arch", TRANSFORMERS)
def test_crop_cache_equals_recomputing_the_window(arch: str) -> None:
    """After a crop, each further step equals a full pass over the tokens since the window start."""
    model = tiny(arch)
    idx = torch.randint(0, VOCAB, (2, BLOCK + 6), generator=torch.Generator().manual_seed(6))
    cache = model.init_cache(2)
    with torch.no_grad():
        model.forward_step(idx[:, :BLOCK], cache)
        with pytest.raises(ValueError, match="crop_cache"):
            model.forward_step(idx[:, BLOCK : BLOCK + 1], cache)
        keep = 5
        model.crop_cache(cache, keep)
        assert model.cache_len(cache) == keep
        start = BLOCK - keep
        for t in range(BLOCK, BLOCK + 6):
            got = model.forward_step(idx[:, t : t + 1], cache)[:, 0]
            want, _ = model(idx[:, start : t + 1])
            torch.testing.assert_close(got, want[:, -1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("arch", ARCHS)
def test_left_padded_prefill_equals_each_prompt_alone(arch: str) -> None:
    model = tiny(arch)
    prompts = [[3, 4, 5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15]]
    P = 7
    idx = torch.tensor([[0] * (P - len(p)) + p for p in prompts])
    pad = torch.tensor([[True] * (P - len(p)) + [False] * len(p) for p in prompts])
    cache = model.init_cache(3)
    with torch.no_grad():
        got = model.forward_step(idx, cache, pad_mask=pad)
        nxt = torch.tensor([[1], [2], [3]])
        got_next = model.forward_step(nxt, cache)[:, 0]
        for b, p in enumerate(prompts):
            want, _ = model(torch.tensor([p + [int(nxt[b, 0])]]))
            torch.testing.assert_close(got[b, P - len(p) :], want[0, :-1], rtol=0, atol=1e-10)
            torch.testing.assert_close(got_next[b], want[0, -1], rtol=0, atol=1e-10)


def test_transformers_reject_contexts_beyond_block_size() -> None:
    for arch in TRANSFORMERS:
        with pytest.raises(ValueError, match="block_size"):
            tiny(arch)(torch.zeros(1, BLOCK + 1, dtype=torch.long))


# ----------------------------------------------------------------------------- configs


def test_every_preset_validates_and_has_train_settings() -> None:
    keys = {"lr", "batch_size", "warmup_steps", "max_steps", "weight_decay", "betas"}
    keys |= {"grad_clip", "min_lr_ratio", "eval_interval"}
    for arch, presets in PRESETS.items():
        assert "tiny" in presets
        assert set(TRAIN_PRESETS[arch]) == set(presets)
        for name in presets:
            resolve_config(arch, name)
            assert set(TRAIN_PRESETS[arch][name]) == keys


def test_presets_reproduce_the_earlier_systems() -> None:
    remi = resolve_config("music-transformer", "colab-remi").model_dump()
    assert remi == {
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 360,
        "block_size": 1024,
        "dropout": 0.0,
        "bias": True,
        "rel_shared_heads": True,
    }
    assert TRAIN_PRESETS["music-transformer"]["colab-remi"]["lr"] == 6e-4
    assert TRAIN_PRESETS["music-transformer"]["colab-remi"]["min_lr_ratio"] == 0.1
    for arch in ("gru", "lstm"):
        chord = resolve_config(arch, "keras-chord").model_dump()
        assert chord == {"embed_dim": 256, "hidden_size": 1024, "num_layers": 1, "dropout": 0.0}
        model = build_model(arch, resolve_config(arch, "keras-chord"), 312)
        assert model.num_params() > 3_000_000  # the real 1024-wide recurrent layer


def test_presets_have_names_that_say_what_they_are() -> None:
    base = resolve_config("music-transformer", "base")
    assert (base.n_layer, base.n_head, base.n_embd, base.block_size) == (12, 12, 360, 1024)
    assert resolve_config("gpt", "nano").model_dump()["n_embd"] == 48
    assert resolve_config("gpt", "vq-prior").model_dump()["block_size"] == 191
    for arch in ("gru", "lstm"):
        wide = resolve_config(arch, "wide").model_dump()
        assert wide["hidden_size"] == 1024 and wide["num_layers"] == 1
    assert sorted(PRESETS["gpt"]) == ["nano", "small", "tiny", "vq-prior"]
    assert sorted(TRAIN_PRESETS["music-transformer"]) == ["base", "small", "tiny"]


@pytest.mark.parametrize("arch", sorted(ALIASES))
def test_old_preset_names_are_aliases_with_the_same_values(arch: str) -> None:
    """Requests written for the old names keep working, with exactly the same settings."""
    assert ALIASES[arch], "every architecture with aliases names at least one"
    assert PRESETS[arch].aliases == TRAIN_PRESETS[arch].aliases == ALIASES[arch]
    for old, new in ALIASES[arch].items():
        assert new in PRESETS[arch] and new in TRAIN_PRESETS[arch]
        assert old in PRESETS[arch] and old not in list(PRESETS[arch])  # accepted, not listed
        assert resolve_config(arch, old) == resolve_config(arch, new)
        assert train_preset(arch, old) == train_preset(arch, new) == TRAIN_PRESETS[arch][new]
        assert TrainConfig.from_preset(arch, old) == TrainConfig.from_preset(arch, new)
        with pytest.raises(ValueError) as err:
            resolve_config(arch, "huge")
        listed = str(err.value).split("choose one of: ")[1].split(", ")
        assert new in listed and old not in listed


def test_registry_names_each_architecture_config_and_model_class() -> None:
    assert set(REGISTRY) == set(ARCHITECTURES) == set(PRESETS)
    for name, entry in REGISTRY.items():
        cls = model_class(name)
        assert cls.architecture == name and ARCHITECTURES[name] is entry.config
    with pytest.raises(ValueError, match="gpt, gru, lstm, music-transformer"):
        model_class("transformer")


def test_overrides_win_over_presets() -> None:
    cfg = resolve_config("gpt", "tiny", {"n_layer": 3, "dropout": 0.2}).model_dump()
    assert cfg["n_layer"] == 3 and cfg["dropout"] == 0.2 and cfg["n_embd"] == 64


@pytest.mark.parametrize(
    ("arch", "overrides", "field"),
    [
        ("gpt", {"n_layr": 3}, "n_layr"),  # typo
        ("gpt", {"n_head": 0}, "n_head"),
        ("music-transformer", {"dropout": 1.5}, "dropout"),
        ("music-transformer", {"rel_shared_heads": "maybe"}, "rel_shared_heads"),
        ("gru", {"hidden_size": -1}, "hidden_size"),
        ("lstm", {"n_layer": 2}, "n_layer"),  # a transformer field on an RNN
        ("gpt", {"n_embd": 65, "n_head": 2}, "n_embd"),  # cross-field rule
    ],
)
def test_config_errors_name_the_field(arch: str, overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        resolve_config(arch, "tiny", overrides)
    assert field in str(err.value)


def test_unknown_names_and_vocab_size_are_rejected_helpfully() -> None:
    with pytest.raises(ValueError, match="gpt, gru, lstm, music-transformer"):
        resolve_config("transformer", None, {})
    with pytest.raises(ValueError, match="base, small, tiny"):
        resolve_config("music-transformer", "huge", {})
    with pytest.raises(ValueError, match="corpus tokenizer"):
        resolve_config("gpt", "tiny", {"vocab_size": 258})
    with pytest.raises(ValueError, match="corpus tokenizer"):
        build_model("gpt", {"vocab_size": 258}, 300)
    with pytest.raises(ValueError, match="GRUConfig"):
        build_model("gru", resolve_config("lstm", "tiny"), 10)
    with pytest.raises(ValueError, match="vocab_size"):
        build_model("gru", {}, 0)


@pytest.mark.parametrize(
    "modules",
    [
        "cadenza.models.configs",
        "cadenza.models.presets",
        "cadenza.models.registry",
        "cadenza.train.presets",
        "cadenza.train.config",
    ],
)
def test_configs_and_presets_import_without_torch(modules: str) -> None:
    """The API imports these to validate a request; none may load torch or a model module."""
    code = (
        f"import sys, {modules}; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') "
        "or m in ('cadenza.models.gpt', 'cadenza.models.rnn', 'cadenza.models.base')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registry_import_does_not_load_torch() -> None:
    """The API process validates configs through cadenza.models without paying for torch."""
    code = (
        "import sys, cadenza.models as m; m.resolve_config('gpt', 'tiny'); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- optimiser, ckpt


@pytest.mark.parametrize("arch", ARCHS)
def test_optim_groups_decay_only_matrix_weights(arch: str) -> None:
    model = tiny(arch, torch.float32)
    decay, no_decay = model.optim_groups(0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    ids_decay = {id(p) for p in decay["params"]}
    ids_no = {id(p) for p in no_decay["params"]}
    assert not ids_decay & ids_no
    assert ids_decay | ids_no == {id(p) for p in model.parameters()}  # each param once
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    for p in decay["params"]:
        assert p.dim() == 2 and "bias" not in names[id(p)]
        assert not names[id(p)].startswith(("wte", "wpe", "embed")) and "rel" not in names[id(p)]
    for n, p in model.named_parameters():
        if "rel." in n or n.startswith(("wte", "wpe", "embed")) or "ln" in n or "bias" in n:
            assert id(p) in ids_no, n


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trips(arch: str) -> None:
    model = tiny(arch, torch.float32)
    idx = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        want, _ = model(idx)

    blob = model_to_safetensors(model)
    again = model_from_safetensors(blob)
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], want, rtol=0, atol=0)

    buf = io.BytesIO()
    state = {f"_orig_mod.{k}": v for k, v in model.state_dict().items()}  # torch.compile'd
    torch.save({MODEL_STATE_KEY: state, MODEL_SPEC_KEY: model.spec(), "step": 7}, buf)
    ckpt = load_checkpoint(buf.getvalue())
    rebuilt = model_from_checkpoint(ckpt)
    assert ckpt["step"] == 7 and not rebuilt.training
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(idx)[0], want, rtol=0, atol=0)


def test_checkpoint_errors_are_explicit() -> None:
    model = tiny("gpt", torch.float32)
    with pytest.raises(ValueError, match="missing \\['vocab_size'\\]"):
        build_from_spec({"architecture": "gpt", "config": {}})
    state = model.state_dict()
    state.pop("ln_f.weight")
    with pytest.raises(ValueError, match="ln_f.weight"):
        model_from_checkpoint({MODEL_STATE_KEY: state, MODEL_SPEC_KEY: model.spec()})
    with pytest.raises(ValueError, match="no 'model_spec'"):
        model_from_checkpoint({MODEL_STATE_KEY: state})
    with pytest.raises(ValueError, match="safetensors"):
        model_from_safetensors(b"\x01")
