"""The audio-vq upsampler: causal in the fine codes, two-sided in the coarse ones; scoring
windows cover every code once; sampling keeps the given codes and fills the rest."""

from __future__ import annotations

import numpy as np
import torch

from cadenza.models.audio_upsampler import (
    Upsampler,
    coarse_window,
    upsample,
    upsampler_nll,
    window_starts,
)
from cadenza.sample.sampler import SamplingParams


def small(pad: int = 2) -> Upsampler:
    torch.manual_seed(0)
    model = Upsampler(8, 6, 4, window=5, pad=pad, n_embd=16, n_layer=1, n_head=2, cond_blocks=1)
    for p in model.parameters():  # away from the near-zero init, so every input matters
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def test_fine_is_causal_and_coarse_is_seen_on_both_sides() -> None:
    model = small()
    rng = np.random.default_rng(0)
    coarse = torch.from_numpy(rng.integers(0, 8, (1, 5 + 4)))
    fine = torch.from_numpy(rng.integers(0, 6, (1, 20)))
    base = model(fine, model.conditioning(coarse))

    later_fine = fine.clone()
    later_fine[0, 12] = (later_fine[0, 12] + 1) % 6
    got = model(later_fine, model.conditioning(coarse))
    assert torch.equal(got[0, :13], base[0, :13])  # position 12's own input is code 11
    assert not torch.allclose(got[0, 13:], base[0, 13:])

    later_coarse = coarse.clone()
    later_coarse[0, 2 + 3] = (later_coarse[0, 2 + 3] + 1) % 8  # window step 3
    got = model(fine, model.conditioning(later_coarse))
    assert not torch.allclose(got[0, 8:12], base[0, 8:12])  # step 2 sees step 3's code


def test_coarse_window_pads_outside_the_file() -> None:
    c = np.arange(6, dtype=np.int64)
    assert coarse_window(c, 0, 3, 2, 99).tolist() == [99, 99, 0, 1, 2, 3, 4]
    assert coarse_window(c, 4, 3, 2, 99).tolist() == [2, 3, 4, 5, 99, 99, 99]


def test_scoring_windows_cover_every_target_once() -> None:
    for length, span, stride, off in ((23, 10, 5, 1), (12, 5, 2, 0), (3, 10, 5, 1), (40, 8, 4, 0)):
        starts = window_starts(length, span, stride, off)
        scored: list[int] = []
        for i, (s, first) in enumerate(starts):
            end = starts[i + 1][1] if i + 1 < len(starts) else length
            assert s + off <= first and end <= s + off + span
            scored += range(first, end)
        assert scored == list(range(off, length))
        assert all(s == 0 or (s - off) % stride == 0 for s, _ in starts)


def test_nll_is_per_fine_code_and_upsample_keeps_the_known_steps() -> None:
    model = small()
    rng = np.random.default_rng(1)
    coarse = rng.integers(0, 8, 13).astype(np.int64)
    fine = rng.integers(0, 6, (13, 4)).astype(np.int64)
    nll = upsampler_nll(model, coarse, fine)
    assert nll.shape == (52,) and np.all(nll > 0)

    params = SamplingParams(temperature=1.0, top_k=4, seed=3)
    out = upsample(model, coarse, fine[:4], params)
    assert out.shape == (13, 4)
    assert np.array_equal(out[:4], fine[:4])
    assert out.min() >= 0 and out.max() < 6
    assert np.array_equal(out, upsample(model, coarse, fine[:4], params))


def test_pair_continues_the_primer_coarse_then_fine() -> None:
    """A coarse prior + upsampler's continuation: whole steps after the primer's codes,
    seeded per variation, decoded and spliced like the flattened prior's."""
    from cadenza.models.configs import GPTConfig
    from cadenza.models.gpt import GPT
    from cadenza.sample.audio import sample_audio_pair
    from cadenza.tokenize.audio_vq import AudioVQTokenizer
    from cadenza.tokenize.registry import build_tokenizer
    from cadenza.tokenize.spec import TokenizerSpec
    from tests.support.music import chorale_recordings

    config = {"steps": 5, "channels": 16, "coarse_codebook": 16, "fine_codebook": 16}
    tok = build_tokenizer(TokenizerSpec(name="audio-vq", config=config))
    assert isinstance(tok, AudioVQTokenizer)
    data = chorale_recordings()[0].read_bytes()
    tok.fit([tok.audio_symbols(data)])
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=64, dropout=0.0, bias=True)
    coarse = GPT(cfg, tok.fine_base).eval()
    up = Upsampler(16, 16, 4, window=8, pad=2, n_embd=16, n_layer=1, n_head=2, cond_blocks=1)
    up.eval()
    wave = tok.wave(tok.audio_symbols(data))
    primer = wave[: tok.samples_per_step * 8]
    options = {"temperature": 1.0, "top_k": 8, "seed": 5}

    got = sample_audio_pair(coarse, up, tok, primer, options, n=2, max_seconds=1.0)
    steps = int(np.ceil(1.0 * tok.cfg.sample_rate / tok.samples_per_step))
    for v in got:  # the primer's last step is regenerated (pair_primer_codes)
        assert len(v.new_ids) == (steps + 1) * tok.cfg.group
        c, f = tok.ids_to_codes(v.new_ids)
        assert c.size == steps + 1 and f.size == (steps + 1) * 4  # every step whole, in order
        assert v.new_seconds == steps * tok.samples_per_step / tok.cfg.sample_rate
        assert v.seam_s == primer.size / tok.cfg.sample_rate
        assert v.wave.size > primer.size and np.array_equal(v.wave[:100], primer[:100])
    assert got[0].new_ids != got[1].new_ids
    again = sample_audio_pair(coarse, up, tok, primer, options, n=2, max_seconds=1.0)
    assert [v.new_ids for v in again] == [v.new_ids for v in got]
