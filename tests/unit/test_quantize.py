"""Weight-only int8 sampling (`quantize: "int8"`): the copy is faithful, separate and reused."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cadenza.models import CadenzaModel, build_model, resolve_config
from cadenza.models.quantize import Int8Linear, prepare_for_sampling, quantize_int8
from cadenza.sample import SamplingParams, generate, generate_uncached
from cadenza.sample.params import SampleRequest

ARCHS = ["gpt", "music-transformer", "gru", "lstm"]
VOCAB = 40


def _model(arch: str) -> CadenzaModel:
    torch.manual_seed(0)
    extra: dict[str, Any] = {"block_size": 64} if arch in ("gpt", "music-transformer") else {}
    return build_model(arch, resolve_config(arch, "tiny", extra), VOCAB).eval()


@pytest.mark.parametrize("shape", [(48, 32), (300, 256), (7, 5)])
def test_int8_linear_is_the_linear_to_int8_rounding(shape: tuple[int, int]) -> None:
    torch.manual_seed(1)
    lin = nn.Linear(shape[1], shape[0])
    q = Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q.scale.dtype == torch.bfloat16
    x = torch.randn(3, 2, shape[1])
    want = lin(x)
    got = q(x).float()
    assert got.shape == want.shape
    # Per output channel the error is at most half a quantization step per weight (absmax/254),
    # summed over the inputs, plus bfloat16 rounding of x, the scale and the output.
    step = lin.weight.abs().amax(1) / 254
    bound = (x.abs().sum(-1, keepdim=True) * step + 0.02 * want.abs() + 0.05).detach()
    assert torch.all((got - want).abs() <= bound)


@pytest.mark.parametrize("arch", ARCHS)
def test_quantized_copy_keeps_the_distribution_and_leaves_the_model_alone(arch: str) -> None:
    model = _model(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    q = quantize_int8(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert next(model.parameters()).dtype == torch.float32
    linears = [m for m in q.modules() if isinstance(m, nn.Linear)]
    assert not linears, "every linear layer is replaced"
    if arch in ("gpt", "music-transformer"):
        assert sum(isinstance(m, Int8Linear) for m in q.modules()) >= 4
    idx = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        lp32 = F.log_softmax(model(idx)[0].float(), -1)
        lp8 = F.log_softmax(q(idx)[0].float(), -1)
    kl = (lp32.exp() * (lp32 - lp8)).sum(-1).mean().item()
    assert kl < 0.01, f"{arch}: KL(float32 || int8) = {kl}"


@pytest.mark.parametrize("arch", ["gpt", "music-transformer"])
def test_int8_sampling_runs_cached_and_uncached_alike(arch: str) -> None:
    model = _model(arch)
    params = SamplingParams(max_new_tokens=20, temperature=0, quantize="int8")
    cached = generate(model, [[1, 2, 3]], params)
    uncached = generate_uncached(model, [[1, 2, 3]], params, window="same")
    assert len(cached[0]) == 20
    # Greedy over the same bfloat16 copy: the two paths differ only by rounding order, so they
    # agree on (nearly) every argmax.
    same = sum(a == b for a, b in zip(cached[0], uncached[0], strict=True))
    assert same >= 18, (cached, uncached)
    seeded = SamplingParams(max_new_tokens=16, seed=5, quantize="int8")
    assert generate(model, [[1]], seeded, n=3) == generate(model, [[1]], seeded, n=3)


def test_the_copy_is_made_once_and_remade_when_the_weights_change() -> None:
    model = _model("gpt")
    first = prepare_for_sampling(model, "int8")
    assert prepare_for_sampling(model, "int8") is first
    assert prepare_for_sampling(model, "none") is model
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)
    assert prepare_for_sampling(model, "int8") is not first
    with pytest.raises(ValueError, match="quantize must be one of none, int8"):
        prepare_for_sampling(model, "int4")


def test_the_request_names_a_bad_quantize_value() -> None:
    assert SampleRequest.model_validate({"quantize": "int8"}).quantize == "int8"
    assert SampleRequest.model_validate({}).quantize == "none"
    with pytest.raises(ValueError, match="quantize"):
        SampleRequest.model_validate({"quantize": "int4"})
    with pytest.raises(ValueError, match="quantize"):
        SamplingParams(quantize="fp8")
