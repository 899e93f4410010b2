"""One set of sampling bounds: the API's request model and the sampler agree on every value."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from cadenza.sample import SamplingParams
from cadenza.sample.params import SampleRequest, SamplingOptions


def test_temperature_zero_is_greedy_and_min_p_zero_is_off_everywhere() -> None:
    request = SampleRequest(temperature=0, min_p=0)
    assert request.temperature == 0 and request.min_p is None
    sampler = SamplingParams(temperature=0.0, min_p=0.0)
    assert sampler.temperature == 0 and sampler.min_p is None


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", -0.1), ("top_k", 0), ("top_p", 0.0), ("min_p", 1.5), ("max_new_tokens", 0)],
)
def test_what_the_api_refuses_the_sampler_refuses(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        SamplingOptions.model_validate({field: value})
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})  # type: ignore[arg-type]


def test_force_tokens_and_a_primer_do_not_mix() -> None:
    with pytest.raises(ValidationError, match="force_tokens"):
        SampleRequest(primer_tokens=[1, 2], force_tokens=["Bar_None"])


def test_one_primer_at_most_and_cuts_only_for_midi_primers() -> None:
    with pytest.raises(ValidationError, match="primer_file_id, primer_sample_id, primer_tokens"):
        SampleRequest(primer_file_id="f", primer_sample_id="s", primer_tokens=[1])
    with pytest.raises(ValidationError, match="need a primer_file_id or primer_sample_id"):
        SampleRequest(primer_tokens=[1], primer_seconds=2)
    request = SampleRequest(primer_sample_id="s", primer_bars=4, primer_start_bar=3)
    assert request.midi_primer and not SampleRequest(primer_tokens=[1]).midi_primer
