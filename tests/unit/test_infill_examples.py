"""Multi-track corpora and fill-in-the-middle training examples (fast: no training).

Real chorales with one program per part (tests.support.music.multitrack_pairs), encoded with
the `multitrack` preset; the example builder and the layout used for sampling are checked
against the piece they came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadenza.midi.clean import CleanOptions
from cadenza.tokenize import build_corpus, mmm, tokenizer_to_bytes
from cadenza.tokenize.base import Tokenizer
from cadenza.tokenize.corpus import merge_spools, tokenize_to_spool
from cadenza.tokenize.params import CorpusRequest, TokenizeParams
from cadenza.tokenize.presets import resolve_spec
from cadenza.tokenize.registry import build_tokenizer
from cadenza.tokenize.splits import assign_splits
from tests.support.music import PART_PROGRAMS, multitrack_pairs

SPEC = resolve_spec(preset="multitrack")
CLEAN = CleanOptions(merge_tracks=False, drop_drums=False)


@pytest.fixture(scope="module")
def files() -> list[tuple[str, bytes]]:
    return multitrack_pairs()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return build_tokenizer(SPEC)


@pytest.fixture(scope="module")
def ids(tok: Tokenizer) -> mmm.MMMIds:
    return mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]


def _score(data: bytes) -> Any:
    from symusic import Score

    return Score.from_midi(data)


def test_preset_keeps_tracks_and_their_programs(files: list[tuple[str, bytes]]) -> None:
    request = CorpusRequest(dataset_id="d", preset="multitrack")
    params = TokenizeParams.from_request(request)
    assert params.clean.merge_tracks is False and params.clean.drop_drums is False
    assert mmm.supports_editing(params.tokenizer_spec.model_dump(mode="json"))
    # a request's own clean fields still win over the preset's
    own = TokenizeParams.from_request(
        CorpusRequest(dataset_id="d", preset="multitrack", clean={"drop_drums": True})
    )
    assert own.clean.drop_drums is True and own.clean.merge_tracks is False
    # other presets keep the defaults, and cannot edit
    remi = TokenizeParams.from_request(CorpusRequest(dataset_id="d", preset="remi-colab"))
    assert remi.clean.merge_tracks is True
    assert not mmm.supports_editing(remi.tokenizer_spec.model_dump(mode="json"))

    build = build_corpus(files, SPEC, seed=1, clean=CLEAN, workers=1)
    tok = build.tokenizer
    t = mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]
    train = np.asarray(build.splits["train"])
    assert (train == t.track_start).sum() >= 4 * build.stats.files_per_split["train"]
    # a piece decodes to its tracks, each with its program
    one = tok.encode(_score(files[1][1]))
    decoded = tok.decode(one)
    assert [int(tr.program) for tr in decoded.tracks] == list(PART_PROGRAMS[:4])
    build.close()


def test_sharded_multitrack_build_equals_the_single_one(
    files: list[tuple[str, bytes]], tmp_path: Path
) -> None:
    seed, split = 2, (0.6, 0.2, 0.2)
    single = build_corpus(files, SPEC, seed=seed, split=split, clean=CLEAN, workers=1)
    assignment = assign_splits([f for f, _ in files], split, seed)
    entries = []
    for k, (lo, hi) in enumerate([(3, len(files)), (0, 3)]):
        tasks = [(i, files[i][0], assignment[files[i][0]] == "train") for i in range(lo, hi)]
        entries += tokenize_to_spool(
            tasks, lambda i: files[i][1], SPEC, tmp_path / f"{k}.spool", clean=CLEAN, workers=1
        )
    merged = merge_spools(entries, SPEC, files_total=len(files), split=split, seed=seed)
    for s in single.split_files:
        assert single.split_files[s].read_bytes() == merged.split_files[s].read_bytes(), s
    assert tokenizer_to_bytes(single.tokenizer) == tokenizer_to_bytes(merged.tokenizer)


def test_tracks_parse_and_render_back(files: list[tuple[str, bytes]], tok: Tokenizer) -> None:
    t = mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]
    for _, data in files:
        seq = tok.encode(_score(data))
        tracks = mmm.parse_tracks(seq, t)
        assert len(tracks) >= 4
        assert mmm.render(tracks, t) == seq
        assert all(tr.head and tr.head[0] in t.programs.values() for tr in tracks)


def _refill(example: list[int], t: mmm.MMMIds) -> list[int]:
    """Put each appended fill back into its placeholder (what sampling's reassembly does)."""
    first = example.index(t.fill_start)
    body, fills = example[:first], example[first:]
    bars: list[list[int]] = []
    for tok_id in fills:
        if tok_id == t.fill_start:
            bars.append([])
        elif tok_id != t.fill_end:
            bars[-1].append(tok_id)
    out: list[int] = []
    it = iter(bars)
    for tok_id in body:
        out += next(it) if tok_id == t.fill_bar else [tok_id]
    return out


def test_infill_examples_move_bars_to_the_end(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds
) -> None:
    t = ids
    arr = np.concatenate(
        [np.asarray([t.bos, *tok.encode(_score(d)), t.eos], dtype=np.int32) for _, d in files]
    )
    rng = np.random.default_rng(0)
    seq_len = 256
    made = tracks = 0
    for _ in range(200):
        start = int(rng.integers(0, arr.size - seq_len - 1))
        w = arr[start : start + seq_len + 1].copy()
        ex = mmm.infill_example(w, t, rng)
        assert ex.shape == w.shape and ex.dtype == w.dtype
        holes = int((ex == t.fill_bar).sum())
        if holes == 0:
            np.testing.assert_array_equal(ex, w)
            continue
        made += 1
        assert holes == int((ex == t.fill_start).sum()) == int((ex == t.fill_end).sum())
        assert int(ex[-1]) == t.fill_end
        # the cut bars put back give the window without its first 3 ids per cut bar
        assert _refill(ex.tolist(), t) == w[3 * holes :].tolist()
        tracks += holes > mmm.MAX_CUT_BARS
    assert made > 150 and tracks > 0  # bars and whole tracks both get cut


def test_layout_and_fill_body(files: list[tuple[str, bytes]], tok: Tokenizer) -> None:
    t = mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]
    tracks = mmm.parse_tracks(tok.encode(_score(files[1][1])), t)
    holes = mmm.hole_order([2, 0], [4, 3])
    assert holes == [(0, 3), (0, 4), (2, 3), (2, 4)]
    prompt = mmm.layout(tracks, t, holes, bars=range(1, 7))
    assert prompt.count(t.fill_bar) == 4
    assert prompt.count(t.bar) == 6 * len(tracks)
    assert prompt.count(t.track_start) == len(tracks)
    body = tracks[0].bars[3]
    assert mmm.fill_body([*body, t.fill_end, 99, 98], t) == body
    assert mmm.fill_body([t.bar, *body, t.track_start, t.fill_end], t) == body


def _stream(tok: Tokenizer, files: list[tuple[str, bytes]]) -> np.ndarray:
    t = mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]
    return np.concatenate(
        [np.asarray([t.bos, *tok.encode(_score(d)), t.eos], dtype=np.int32) for _, d in files]
    )


@pytest.mark.parametrize("layout", mmm.INFILL_LAYOUTS)
def test_training_stream_is_seeded_and_resumes_exactly(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds, layout: str
) -> None:
    import torch

    from cadenza.train.config import TrainConfig
    from cadenza.train.data import Batcher, TrainBatches
    from cadenza.train.distributed import DistInfo

    arr = _stream(tok, files)
    info = DistInfo(0, 1, 0, "cpu")
    batcher = Batcher(torch.device("cpu"))

    def batches(fraction: float, **kw: Any) -> TrainBatches:
        cfg = TrainConfig(
            seq_len=128, batch_size=8, infill_fraction=fraction, infill_layout=layout, **kw
        )
        return TrainBatches(arr, cfg, info, batcher, None, ids if fraction else None)

    def draw(b: TrainBatches, k: int) -> list[np.ndarray]:
        return [x.numpy() for _ in range(k) for x, _ in b()]

    plain, edited = draw(batches(0.0), 3), draw(batches(0.5), 3)
    # the first step's windows are the same (the examples' seed is drawn after them): about
    # half of them became infill examples, the others are untouched
    changed = (edited[0] != plain[0]).any(axis=1)
    assert 0 < int(changed.sum()) < 8
    np.testing.assert_array_equal(changed, (edited[0] == ids.fill_start).any(axis=1))
    for a, b in zip(edited, draw(batches(0.5), 3), strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same examples
    other = draw(batches(0.5, seed=7), 1)[0]
    assert not np.array_equal(other, edited[0])
    # resume: generators restored after one step give the steps that followed
    first = batches(0.5)
    draw(first, 1)
    states = [g.get_state() for g in first.generators]
    again = batches(0.5)
    for g, s in zip(again.generators, states, strict=True):
        g.set_state(s)
    for a, b in zip(draw(again, 2), edited[1:], strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="multitrack"):
        TrainBatches(arr, TrainConfig(infill_fraction=0.5), info, batcher, None, None)


def test_infill_fraction_defaults_by_corpus() -> None:
    from cadenza.train.params import ModelRequest, resolve_model
    from cadenza.validation import InvalidParams

    multitrack = SPEC.model_dump(mode="json")
    remi = resolve_spec(preset="remi-colab").model_dump(mode="json")
    req = ModelRequest(corpus_id="c", preset="tiny")
    _, train = resolve_model(req, tokenizer="MMM", tokenizer_spec=multitrack)
    assert train["infill_fraction"] == 0.5
    _, train = resolve_model(req, tokenizer="REMI", tokenizer_spec=remi)
    assert train["infill_fraction"] == 0.0
    off = ModelRequest(corpus_id="c", preset="tiny", train={"infill_fraction": 0})
    assert resolve_model(off, tokenizer="MMM", tokenizer_spec=multitrack)[1]["infill_fraction"] == 0
    bad = ModelRequest(corpus_id="c", preset="tiny", train={"infill_fraction": 0.3})
    with pytest.raises(InvalidParams, match="multitrack"):
        resolve_model(bad, tokenizer="REMI", tokenizer_spec=remi)


def test_edits_are_prompted_in_the_layout_the_model_learned() -> None:
    from cadenza.sample.modes import model_infill_layout
    from cadenza.train.params import ModelRequest, resolve_model
    from cadenza.validation import InvalidParams

    multitrack = SPEC.model_dump(mode="json")
    _, train = resolve_model(
        ModelRequest(corpus_id="c", preset="tiny"), tokenizer="MMM", tokenizer_spec=multitrack
    )
    assert train["infill_layout"] == "spm" and model_infill_layout(train) == "spm"
    old = ModelRequest(corpus_id="c", preset="tiny", train={"infill_layout": "mmm"})
    _, train = resolve_model(old, tokenizer="MMM", tokenizer_spec=multitrack)
    assert model_infill_layout(train) == "mmm"
    # a model trained before the layout was a choice learned mmm's
    assert model_infill_layout({"infill_fraction": 0.5}) == "mmm"
    bad = ModelRequest(corpus_id="c", preset="tiny", train={"infill_layout": "psm"})
    with pytest.raises(InvalidParams, match="infill_layout"):
        resolve_model(bad, tokenizer="MMM", tokenizer_spec=multitrack)


def test_mmm_layout_examples_look_like_sampling_prompts(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds
) -> None:
    t = ids
    rng = np.random.default_rng(3)
    seen_whole = seen_bars = 0
    for _, data in files:
        tracks = mmm.parse_tracks(tok.encode(_score(data)), t)
        for _ in range(20):
            ex = mmm.layout_example(tracks, t, rng, 384, "mmm")
            assert ex is not None and len(ex) <= 384
            holes = ex.count(t.fill_bar)
            assert holes == ex.count(t.fill_start) == ex.count(t.fill_end) > 0
            # every track is shown over the same bars, and the fills put back give the piece
            body = ex[1:] if ex[0] == t.bos else ex
            assert body.count(t.track_start) == len(tracks)
            refilled = mmm.parse_tracks(_refill(body, t), t)
            shown = [len(tr.bars) for tr in refilled]
            assert len(set(shown)) == 1
            first = 0 if ex[0] == t.bos else None
            for orig, back in zip(tracks, refilled, strict=True):
                assert back.head == orig.head
                if first == 0:
                    assert back.bars[: len(orig.bars)] == orig.bars[: len(back.bars)]
            seen_whole += holes > mmm.MAX_CUT_BARS
            seen_bars += holes <= mmm.MAX_CUT_BARS
    assert seen_whole and seen_bars
    assert mmm.layout_example(tracks, t, rng, 8) is None  # nothing fits


def test_spm_layout_puts_the_hole_after_its_left_side(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds
) -> None:
    t = ids
    tracks = mmm.parse_tracks(tok.encode(_score(files[1][1])), t)
    ctx, run = range(1, 7), range(3, 5)
    blank = {(0, 3), (0, 4), (1, 5)}  # other tracks' holes: placeholders
    prompt = mmm.spm_layout(tracks, t, 2, run, bars=ctx, holes=blank)
    # the other tracks over the context, the holes of theirs as placeholders
    first = prompt.index(t.fill_start)
    others = mmm.parse_tracks(prompt[:first], t)
    assert [o.head for o in others] == [tracks[k].head for k in (0, 1, 3)]
    assert others[0].bars[2:4] == [[t.fill_bar], [t.fill_bar]]
    assert others[1].bars[4] == [t.fill_bar]
    assert others[2].bars == tracks[3].bars[1:7]
    # then the bars after the hole between the markers, then the track up to the hole: what
    # a continuation of the prefix sees last
    close = prompt.index(t.fill_end)
    suffix = mmm.parse_tracks([t.track_start, *prompt[first + 1 : close], t.track_end], t)[0]
    assert suffix.bars == tracks[2].bars[5:7]
    tail = prompt[close + 1 :]
    assert tail == [t.track_start, *tracks[2].head, t.bar, *tracks[2].bars[1], t.bar,
                    *tracks[2].bars[2]]  # fmt: skip
    # an accompaniment's track: every bar written, nothing after it
    whole = mmm.spm_layout(tracks, t, 0, ctx, bars=ctx)
    assert whole[-len(tracks[0].head) - 3 :] == [t.fill_start, t.fill_end, t.track_start,
                                                *tracks[0].head]  # fmt: skip
    # a bar ends where the next opens
    body = tracks[2].bars[3]
    assert mmm.fill_body([*body, t.bar, 99], t, t.bar) == body


def test_spm_examples_put_the_track_back_together(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds
) -> None:
    t = ids
    rng = np.random.default_rng(5)
    seen_whole = seen_bars = seen_blank = 0
    for _, data in files:
        tracks = mmm.parse_tracks(tok.encode(_score(data)), t)
        for _ in range(20):
            ex = mmm.layout_example(tracks, t, rng, 384, "spm")
            assert ex is not None and len(ex) <= 384
            body = ex[1:] if ex[0] == t.bos else ex
            assert body.count(t.fill_start) == 1 and body[-1] == t.fill_end
            first = body.index(t.fill_start)
            close = body.index(t.fill_end, first)
            others = mmm.parse_tracks(body[:first], t)
            assert len(others) == len(tracks) - 1
            shown = {len(o.bars) for o in others}
            assert len(shown) == 1
            rest = body[close + 1 :]
            assert rest[0] == t.track_start and rest[-2:] == [t.bar, t.fill_end]
            own = mmm.parse_tracks([*rest[:-2], t.track_end], t)[0]
            after = mmm.parse_tracks([t.track_start, *body[first + 1 : close], t.track_end], t)
            k = next(j for j, tr in enumerate(tracks) if tr.head == own.head)
            bars = [*own.bars, *after[0].bars]  # prefix, the written bars, the suffix
            assert len(bars) == shown.pop()  # the edited track spans the others' bars
            if ex[0] == t.bos:  # from the first bar: the track's own bars, in order
                assert bars[: len(tracks[k].bars)] == tracks[k].bars[: len(bars)]
                for o, j in zip(others, [j for j in range(len(tracks)) if j != k], strict=True):
                    kept = [b for b in o.bars if b != [t.fill_bar]]
                    assert all(b in tracks[j].bars for b in kept)
            seen_whole += not after[0].bars and len(own.bars) > mmm.MAX_CUT_BARS
            seen_bars += bool(after[0].bars)
            seen_blank += body[:first].count(t.fill_bar) > 0
    assert seen_whole and seen_bars and seen_blank


def test_a_multitrack_primer_keeps_its_tracks(
    files: list[tuple[str, bytes]], tok: Tokenizer
) -> None:
    from cadenza.tokenize import decode_to_midi, encode_primer

    ids = encode_primer(tok, files[1][1], bars=2)
    decoded = _score(decode_to_midi(tok, ids))
    assert [int(t.program) for t in decoded.tracks] == list(PART_PROGRAMS[:4])


def test_the_grammar_accepts_multitrack_pieces(
    files: list[tuple[str, bytes]], tok: Tokenizer, ids: mmm.MMMIds
) -> None:
    """Every track after the first is allowed to start (a constrained continuation of a
    multitrack model, and an spm edit's prompt, need Track_End -> Track_Start)."""
    from cadenza.tokenize.grammar import grammar_for

    grammar = grammar_for(tok)
    for _, data in files:
        seq = [ids.bos, *tok.encode(_score(data)), ids.eos]
        assert seq.count(ids.track_start) >= 4
        assert grammar.first_violation(seq) is None


def test_the_training_option_names_the_same_layouts_as_the_editor() -> None:
    """`TrainConfig.infill_layout` spells the layouts itself (training never imports the
    tokenize package); they must be the ones `cadenza.tokenize.mmm` builds."""
    from typing import get_args

    from cadenza.tokenize import mmm
    from cadenza.train import config

    assert get_args(config.InfillLayout) == get_args(mmm.InfillLayout)
    assert set(get_args(config.InfillLayout)) == set(mmm.INFILL_LAYOUTS)
