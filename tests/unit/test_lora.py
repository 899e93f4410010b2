"""LoRA adapters: only the adapter trains and is stored, and it changes what the model says.

Small GPTs on random tokens, a few steps on the CPU: what is checked is bookkeeping (which
tensors move, which are stored, what merging gives), not music.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from cadenza.models import build_model, resolve_config
from cadenza.models.adapters import LORA_TARGETS, resolve_adapter
from cadenza.models.checkpoint import (
    ADAPTER_KEY,
    export_safetensors,
    load_checkpoint,
    load_for_inference,
    model_from_checkpoint,
    model_from_safetensors,
)
from cadenza.models.lora import LoRALinear, adapter_state, apply_lora, merge_lora
from cadenza.train.config import TrainConfig
from cadenza.train.loop import NullHooks, train
from cadenza.train.step import TrainStep
from cadenza.validation import InvalidParams

VOCAB = 48
SPEC: dict[str, Any] = {
    "architecture": "gpt",
    "config": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32, "dropout": 0.0},
    "vocab_size": VOCAB,
}
CFG = TrainConfig(
    max_steps=12,
    eval_interval=6,
    batch_size=4,
    seq_len=32,
    log_interval=6,
    warmup_steps=2,
    precision="fp32",
    compile=False,
    lr=3e-3,
)


class Keep(NullHooks):
    """Hooks that keep every checkpoint payload; `resume` is handed back as the latest."""

    def __init__(self, resume: bytes | None = None) -> None:
        self.saved: list[bytes] = []
        self.resume = resume

    def save_checkpoint(
        self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
    ) -> None:
        self.saved.append(payload)

    def load_latest_checkpoint(self) -> bytes | None:
        return self.resume


def _data(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # A skewed distribution per seed, so the adapter's corpus differs from the base's.
    p = rng.dirichlet(np.full(VOCAB, 0.3))
    return {
        s: rng.choice(VOCAB, size=n, p=p).astype("int64")
        for s, n in [("train", 3000), ("val", 600)]
    }


@pytest.fixture(scope="module")
def base() -> bytes:
    hooks = Keep()
    train(SPEC, _data(0), CFG, hooks, tokenizer_hash="tok")
    return hooks.saved[-1]


ADAPTER = resolve_adapter("gpt", {"rank": 4, "alpha": 8, "targets": ["attn.c_attn"]})


@pytest.mark.parametrize("architecture", sorted(LORA_TARGETS))
def test_the_targets_table_names_the_models_linear_layers(architecture: str) -> None:
    model = build_model(architecture, resolve_config(architecture, "tiny", {}), VOCAB)
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    adaptable = {
        name.split(".", 2)[-1] if name.startswith("h.") else name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and id(m.weight) not in tied
    }
    assert adaptable == set(LORA_TARGETS[architecture])
    wrapped = apply_lora(model, resolve_adapter(architecture, {}))
    assert wrapped and all(isinstance(model.get_submodule(n), LoRALinear) for n in wrapped)


def test_adapter_options_are_validated_naming_the_field() -> None:
    for raw, field in [
        ({"rank": 0}, "adapter.rank"),
        ({"rank": 257}, "adapter.rank"),
        ({"alpha": -1}, "adapter.alpha"),
        ({"type": "prefix"}, "adapter.type"),
        ({"targets": []}, "adapter.targets"),
        ({"targets": ["attn.c_attn", "lm_head"]}, "adapter.targets"),
        ({"rank": 8, "colour": "red"}, "adapter.colour"),
    ]:
        with pytest.raises(InvalidParams) as exc:
            resolve_adapter("gpt", raw)
        assert exc.value.details[0]["field"] == field, raw
        assert field in exc.value.message
    assert resolve_adapter("gru", {})["targets"] == ["head"]


def test_only_the_adapter_trains_and_the_base_stays_bit_identical() -> None:
    torch.manual_seed(0)
    model = build_model("gpt", resolve_config("gpt", None, SPEC["config"]), VOCAB)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, resolve_adapter("gpt", {"rank": 4}))
    step = TrainStep(model, CFG, torch.device("cpu"))
    trained = {id(p) for g in step.optimizer.param_groups for p in g["params"]}
    adapter_ids = {id(p) for n, p in model.named_parameters() if n.endswith(("lora_A", "lora_B"))}
    assert trained == adapter_ids
    x = torch.randint(0, VOCAB, (4, 32))
    acc = torch.zeros(())
    for _ in range(3):
        step([(x, x)], acc)
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    assert any(float(v.abs().sum()) > 0 for k, v in after.items() if k.endswith("lora_B"))


def test_an_adapter_is_small_changes_the_output_and_merges(base: bytes) -> None:
    hooks = Keep()
    result = train(
        SPEC, _data(1), CFG, hooks, tokenizer_hash="tok", init_from=base, adapter=ADAPTER
    )
    assert result.trainable_params == 2 * 4 * (64 + 3 * 64)  # rank x (in + out), 2 layers
    assert result.trainable_params < result.num_params // 50
    payload = hooks.saved[-1]
    assert len(payload) < len(base) / 10
    saved = load_checkpoint(payload)
    assert saved[ADAPTER_KEY] == ADAPTER
    assert saved["model"] and all(k.endswith(("lora_A", "lora_B")) for k in saved["model"])

    with pytest.raises(ValueError, match="only a LoRA adapter"):
        model_from_checkpoint(payload)
    with pytest.raises(ValueError, match="needs its base"):
        load_for_inference(payload, "cpu")
    merged, spec = load_for_inference(payload, "cpu", base=base)
    assert spec["tokenizer_hash"] == "tok"
    assert not any(isinstance(m, LoRALinear) for m in merged.modules())  # plain Linear layers
    plain = model_from_checkpoint(base)
    x = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        a, b = merged(x)[0], plain(x)[0]
    assert not torch.allclose(a, b, atol=1e-4)
    # Merged weights give the same logits as the unmerged adapter, and the KV cache agrees.
    wrapped = model_from_checkpoint(base)
    apply_lora(wrapped, ADAPTER)
    wrapped.load_state_dict(saved["model"], strict=False)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x)[0], a, atol=1e-5, rtol=1e-5)
        cache = merged.init_cache(2)
        torch.testing.assert_close(merged.forward_step(x, cache), a, atol=1e-5, rtol=1e-5)
    assert merge_lora(wrapped) is wrapped and not any(
        isinstance(m, LoRALinear) for m in wrapped.modules()
    )

    weights = export_safetensors(payload)
    assert len(weights) < len(export_safetensors(base)) / 10
    with pytest.raises(ValueError, match="only a LoRA adapter"):
        model_from_safetensors(weights)


def test_an_adapter_run_resumes_from_its_own_checkpoint(base: bytes) -> None:
    first = Keep()
    done = train(SPEC, _data(1), CFG, first, tokenizer_hash="tok", init_from=base, adapter=ADAPTER)
    midway = load_checkpoint(first.saved[0])
    assert 0 < midway["step"] < CFG.max_steps
    again = Keep(resume=first.saved[0])
    resumed = train(
        SPEC, _data(1), CFG, again, tokenizer_hash="tok", init_from=base, adapter=ADAPTER
    )
    assert resumed.resumed_from_step == midway["step"]
    a, b = load_checkpoint(first.saved[-1])["model"], load_checkpoint(again.saved[-1])["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert resumed.final_val_loss == pytest.approx(done.final_val_loss, rel=1e-5)
    # A full model's checkpoint cannot resume an adapter run, nor the other way round.
    with pytest.raises(ValueError, match="adapter"):
        train(
            SPEC,
            _data(1),
            CFG,
            Keep(resume=base),
            tokenizer_hash="tok",
            init_from=base,
            adapter=ADAPTER,
        )


def test_adapter_state_is_only_the_low_rank_tensors() -> None:
    layer = nn.Linear(8, 6)
    wrapped = LoRALinear(layer, rank=2, alpha=4)
    assert wrapped.weight is layer.weight and not wrapped.weight.requires_grad
    model = nn.Sequential(wrapped)
    assert set(adapter_state(model)) == {"0.lora_A", "0.lora_B"}
    x = torch.randn(3, 8)
    torch.testing.assert_close(wrapped(x), layer(x))  # B starts at zero


def test_a_corpus_built_with_a_base_models_tokenizer_speaks_its_ids(chorales: list[Path]) -> None:
    from cadenza.tokenize import build_corpus, tokenizer_from_bytes, tokenizer_to_bytes
    from cadenza.tokenize.spec import TokenizerSpec

    files = [(p.stem, p.read_bytes()) for p in chorales]
    spec = TokenizerSpec.model_validate({"name": "REMI", "bpe": {"vocab_size": 400}})
    base = build_corpus(files[:5], spec, workers=1)
    saved = tokenizer_from_bytes(tokenizer_to_bytes(base.tokenizer))
    adapted = build_corpus(files[5:], spec, workers=1, tokenizer=saved)
    fresh = build_corpus(files[5:], spec, workers=1)
    try:
        # BPE learned on other files gives another vocabulary; the saved one is kept as is.
        assert fresh.tokenizer.hash() != base.tokenizer.hash()
        assert adapted.tokenizer.hash() == base.tokenizer.hash()
        assert adapted.stats.vocab_size == base.stats.vocab_size
        ids = np.concatenate([a for a in adapted.splits.values() if a.size])
        assert ids.min() >= 0 and ids.max() < base.tokenizer.vocab_size
        with pytest.raises(ValueError, match="another spec"):
            build_corpus(files[5:], TokenizerSpec(name="TSD"), workers=1, tokenizer=saved)
    finally:
        for b in (base, adapted, fresh):
            b.close()
