"""Style tags of audio-vq corpora: their ids after the codes, the fixed conditioning prefix of
every file, every training window opening with its own file's prefix (not only windows at a
file's start), and the code grammar holding after the prefix. No VQ-VAE is trained: the ids
are made from random codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from cadenza.tokenize import tokenizer_from_bytes, tokenizer_to_bytes
from cadenza.tokenize.audio_vq import AudioVQTokenizer
from cadenza.tokenize.controls import resolve_controls
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.spec import TokenizerSpec
from cadenza.train.config import TrainConfig
from cadenza.train.data import Batcher, TrainBatches
from cadenza.train.distributed import DistInfo

SMALL = {"coarse_codebook": 64, "fine_codebook": 64}
FILE_TAGS = [["rock"], ["jazz", "live"], []]


def tagged_tok(learn_tags: bool = True) -> AudioVQTokenizer:
    tok = build_tokenizer(TokenizerSpec(name="audio-vq", config=SMALL, learn_tags=learn_tags))
    assert isinstance(tok, AudioVQTokenizer)
    tok.set_tags(sorted({t for tags in FILE_TAGS for t in tags}))
    return tok


def test_spec_takes_tags_but_no_controls() -> None:
    with pytest.raises(ValidationError, match="controls: the audio-vq tokenizer takes style"):
        TokenizerSpec(name="audio-vq", controls=["tempo"])
    untagged = tagged_tok(learn_tags=False)  # set_tags is ignored without learn_tags
    assert untagged.tag_slots == 0 and untagged.vocab_size == 3 + 64 + 64
    ids = np.arange(3, 13, dtype=np.int32)
    np.testing.assert_array_equal(untagged.with_tags(ids, ["rock"]), ids)
    assert "tags" not in untagged.state()  # an untagged tokenizer's bytes stay as they were


def test_tag_ids_follow_the_codes_and_survive_a_reload() -> None:
    tok = tagged_tok()
    base = 3 + 64 + 64
    assert tok.tags == ["jazz", "live", "rock"] and tok.tag_slots == 3
    assert [tok.tag_id(t) for t in tok.tags] == [base, base + 1, base + 2]
    assert tok.no_tag_id == base + 3 and tok.vocab_size == base + 4
    assert tok.prefix_ids(["rock"]) == [base + 2, base + 3, base + 3]
    assert tok.prefix_ids(["live", "jazz", "unknown"]) == [base, base + 1, base + 3]
    assert tok.capabilities()["tags"] == ["jazz", "live", "rock"]
    again = tokenizer_from_bytes(tokenizer_to_bytes(tok))
    assert isinstance(again, AudioVQTokenizer) and again.tags == tok.tags
    assert again.hash() == tok.hash()
    with pytest.raises(ValueError, match="tags: 'pop' is not a tag this model knows"):
        resolve_controls(None, ["pop"], tok.capabilities())


def _stream(tok: AudioVQTokenizer, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """BOS prefix codes EOS per file; file i's coarse codes lie in their own range, so a
    window's codes tell which file they come from. Also returns each file's BOS position."""
    parts: list[np.ndarray] = []
    starts: list[int] = []
    n = 0
    for i, tags in enumerate(FILE_TAGS):
        steps = 40 + 7 * i
        coarse = rng.integers(20 * i, 20 * i + 20, steps)
        fine = rng.integers(0, 64, steps * tok.cfg.fine_per_coarse)
        ids = tok.with_tags(tok.codes_to_ids(coarse, fine), tags)
        part = np.concatenate([[tok.bos_id], ids, [tok.eos_id]]).astype(np.int32)
        starts.append(n)
        n += part.size
        parts.append(part)
    return np.concatenate(parts), starts


def test_every_window_opens_with_its_own_files_tags_on_the_code_grid() -> None:
    tok = tagged_tok()
    k, group = tok.tag_slots, tok.cfg.group
    arr, _ = _stream(tok, np.random.default_rng(0))
    grammar = tok.grammar()
    assert grammar.walk(arr.tolist())[1] == 0  # the prefix passes the corpus's grammar
    cfg = TrainConfig(seq_len=64, batch_size=16, window_grid=group)
    batches = TrainBatches(
        arr, cfg, DistInfo(0, 1, 0, "cpu"), Batcher(torch.device("cpu")), tok.bos_id, None, k
    )
    seen_mid = 0
    for _ in range(8):
        for x, y in batches():
            for row, nxt in zip(x.numpy(), y.numpy(), strict=True):
                np.testing.assert_array_equal(row[1:], nxt[:-1])
                assert row[0] == tok.bos_id
                codes = row[1 + k :]
                coarse = codes[(codes >= 3) & (codes < 3 + 64)]
                file = int(coarse[0] - 3) // 20  # the file the window's codes start in
                assert row[1 : 1 + k].tolist() == tok.prefix_ids(FILE_TAGS[file])
                # the codes after the prefix start on a coarse code and keep the grid
                assert 3 <= codes[0] < 3 + 64
                until = int(np.argmax(codes == tok.eos_id)) if tok.eos_id in codes else None
                body = codes[:until]
                assert grammar.walk(body.tolist())[1] == 0
                assert all(3 <= c < 3 + 64 for c in body[::group])
                seen_mid += int(not np.array_equal(row, arr[: row.size]))
    assert seen_mid > 0  # windows from inside files got their file's prefix too


def test_untagged_windows_are_unchanged() -> None:
    """cond_slots 0 (every MIDI corpus) draws exactly the windows it drew before."""
    tok = tagged_tok()
    arr, _ = _stream(tok, np.random.default_rng(1))
    cfg = TrainConfig(seq_len=32, batch_size=4, window_grid=tok.cfg.group)
    info, batcher = DistInfo(0, 1, 0, "cpu"), Batcher(torch.device("cpu"))
    a = TrainBatches(arr, cfg, info, batcher, tok.bos_id, None)
    b = TrainBatches(arr, cfg, info, batcher, tok.bos_id, None, 0)
    for (xa, _), (xb, _) in zip(a(), b(), strict=True):
        assert torch.equal(xa, xb)


def test_sampling_grammar_spends_every_new_id_on_codes() -> None:
    """The prompt's BOS and tag prefix leave the sampling grammar at a step's start, and no
    state lets a variation emit BOS, EOS or a tag id (each would cost a step a code)."""
    from cadenza.sample.audio import fixed_length_grammar

    tok = tagged_tok()
    g = fixed_length_grammar(tok)
    codes = tok.codes_to_ids(np.arange(3), np.arange(12)).tolist()
    state, _ = g.walk([tok.bos_id, *tok.prefix_ids(["rock"]), *codes])
    assert state == g.start
    live = g.table[: g.ended]
    assert (live[:, [tok.bos_id, tok.eos_id, *range(tok.tag_base, tok.vocab_size)]] < 0).all()
    assert (live[g.start, 3 : 3 + 64] >= 0).all()


def test_long_tagged_generation_restates_the_prefix_in_every_chunk() -> None:
    """Past the prior's context, each chunk is prompted by BOS, the tags and the last half
    block of codes: the first chunk is exactly what one call from that prompt gives, and the
    whole stays grammatical, as long as asked, seeded, and different per variation."""
    from cadenza.models.registry import build_model, resolve_config
    from cadenza.sample.audio import _tagged_chunks, fixed_length_grammar
    from cadenza.sample.sampler import SamplingParams, generate

    tok = tagged_tok()
    torch.manual_seed(0)
    model = build_model("gpt", resolve_config("gpt", "tiny", {"block_size": 40}), tok.vocab_size)
    codes = tok.codes_to_ids(np.arange(10), np.arange(40) % 64).tolist()
    prompt = [tok.bos_id, *tok.prefix_ids(["rock"]), *codes]
    params = SamplingParams(max_new_tokens=60, stop_at_eos=False, eos_id=tok.eos_id, seed=5)
    rows = _tagged_chunks(model, tok, prompt, params, 12, 2, 40, None, "cpu")
    again = _tagged_chunks(model, tok, prompt, params, 12, 2, 40, None, "cpu")
    assert rows == again and rows[0] != rows[1]
    g = fixed_length_grammar(tok)
    for r in rows:
        assert len(r) == 12 * tok.cfg.group and g.walk(r)[1] == 0
    # chunk 1: BOS, 3 tag ids, the last 15 code ids (3 steps): 4 steps of new codes
    first = generate(
        model,
        [prompt[:4] + codes[-15:]],
        SamplingParams(max_new_tokens=20, stop_at_eos=False, eos_id=tok.eos_id, seed=5),
        n=2,
        grammar=g,
        device="cpu",
    )
    assert [r[:20] for r in rows] == first
