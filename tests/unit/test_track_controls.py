"""Per-track attribute controls on MMM (the `multitrack` preset): each track's bars carry their
own controls, measured on that track's notes; a request sets them track by track (by order or
by program), the sampler forces them in the right track, and bad values are named."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch

from cadenza.midi.clean import CleanOptions, clean_score
from cadenza.midi.load import load_score
from cadenza.tokenize import TokenizerSpec, build_corpus
from cadenza.tokenize.controls import capabilities, resolve_controls
from cadenza.tokenize.grammar import grammar_for
from cadenza.tokenize.miditok_tok import MidiTokTokenizer
from cadenza.tokenize.presets import resolve_spec
from cadenza.tokenize.registry import build_tokenizer
from tests.support.music import make_score, multitrack_pairs

KEEP_TRACKS = CleanOptions(merge_tracks=False, drop_drums=False)
BAR = ["note_density", "polyphony", "pitch_range"]


def _spec(controls: list[str], bpe: int | None = None) -> TokenizerSpec:
    base = resolve_spec(preset="multitrack").model_dump()
    return TokenizerSpec.model_validate(
        {**base, "controls": controls, "bpe": {"vocab_size": bpe} if bpe else None}
    )


@pytest.fixture(scope="module")
def band() -> list[tuple[str, bytes]]:
    return multitrack_pairs()


def test_specs_take_per_bar_controls_for_mmm_over_remi_only() -> None:
    assert _spec(["key", *BAR]).controls == ["key", *BAR]
    with pytest.raises(ValueError, match="over REMI only"):
        TokenizerSpec.model_validate(
            {"name": "MMM", "config": {"base_tokenizer": "TSD"}, "controls": ["polyphony"]}
        )
    caps = build_tokenizer(_spec(["key", "note_density"])).capabilities()
    assert caps["tracks"] == {
        "max": 64,
        "controls": ["note_density"],
        "select": ["index", "program"],
    }
    assert "tracks" not in build_tokenizer(_spec(["key"])).capabilities()
    assert "tracks" not in build_tokenizer(TokenizerSpec(name="REMI", controls=BAR)).capabilities()  # type: ignore[arg-type]


@pytest.mark.parametrize("bpe", [None, 1500], ids=["plain", "bpe"])
def test_every_bar_of_every_track_carries_its_own_tracks_controls(
    band: list[tuple[str, bytes]], bpe: int | None
) -> None:
    """Chorale parts as tracks: after each Bar, the bar's slots, stating that track's notes in
    that bar; the grammar accepts the sequences and they decode to the same tracks."""
    corpus = build_corpus(band, _spec(["key", *BAR], bpe), seed=0, workers=1, clean=KEEP_TRACKS)
    tok = corpus.tokenizer
    corpus.close()
    assert isinstance(tok, MidiTokTokenizer) and tok.controls is not None
    grammar = grammar_for(tok)
    v = tok.miditok.vocab
    own, slots = tok.own_vocab_size, len(tok.controls.bar_slots)
    for _, data in band:
        score, _ = clean_score(load_score(data), KEEP_TRACKS)
        assert score is not None and len(score.tracks) >= 4
        ids = [int(i) for i in tok.ids(tok.symbols(score))]
        assert grammar.first_violation([tok.bos_id, *ids, tok.eos_id]) is None
        names = [tok.token_str(i) if own <= i < tok.base_vocab_size else "" for i in ids]
        track = -1
        per_track: list[list[int]] = []
        for k, i in enumerate(ids):
            if i == v["Track_Start"]:
                track += 1
                per_track.append([])
            elif i == v["Bar_None"]:
                got = names[k + 1 : k + 1 + slots]
                assert [n.split("_")[1] for n in got] == ["note", "polyphony", "pitch", "pitch"]
                per_track[track].append(int(got[0].rsplit("_", 1)[1]))
        assert len(per_track) == len(score.tracks)
        for k, t in enumerate(score.tracks):  # each track's densities add up to its notes
            one = score.copy()
            one.tracks = type(score.tracks)([t.copy()])
            facts = tok.bar_facts(one)
            assert [min(f.notes, 32) for f in facts] == per_track[k]
            assert sum(f.notes for f in facts) == len(t.notes)
        back = tok.decode(ids)
        assert [len(t.notes) for t in back.tracks] == [len(t.notes) for t in score.tracks]


def test_track_requests_resolve_or_name_the_field() -> None:
    caps = capabilities(["key", *BAR], [], per_track=True)
    piece, bars, _, tracks = resolve_controls(
        {
            "key": "Dm",
            "polyphony": 2,
            "tracks": [{"note_density": 4}, None, {"note_density": [12, None], "polyphony": 1}],
        },
        None,
        caps,
    )
    assert piece == {"key": "Dm"} and bars == {"polyphony": (["2"], True)}
    assert tracks is not None and tracks.programs is None
    assert tracks.entries == [
        {"note_density": (["4"], True)},
        {},
        {"note_density": (["12", None], False), "polyphony": (["1"], True)},
    ]
    _, _, _, by_prog = resolve_controls(
        {"tracks": [{"program": 33, "note_density": 2}, {"program": -1}]}, None, caps
    )
    assert by_prog is not None and by_prog.programs == [33, -1]
    for controls, field in [
        ({"tracks": [{"note_density": 40}]}, "controls.tracks[0].note_density: 40 is outside"),
        ({"tracks": [{}, {"polyphony": [1, 2.5]}]}, "controls.tracks[1].polyphony[1]"),
        ({"tracks": [{"key": "C"}]}, "controls.tracks[0].key: not a per-track control"),
        ({"tracks": [{"program": 200}]}, "controls.tracks[0].program"),
        ({"tracks": [{"program": 1}, {}]}, "controls.tracks: give a program in every entry"),
        ({"tracks": [{"program": 1}, {"program": 1}]}, "controls.tracks: each program"),
        ({"tracks": [5]}, "controls.tracks[0]: must be an object"),
        ({"tracks": []}, "controls.tracks: must be a list of 1 to 64"),
    ]:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            resolve_controls(controls, None, caps)
    with pytest.raises(ValueError, match="controls.tracks: this model has no per-track"):
        resolve_controls({"tracks": [{}]}, None, capabilities(BAR, []))


def _biased_model(tok: Any, boost: dict[int, float]) -> Any:
    """A random nano GPT whose logits for the ids in ``boost`` are raised (many bars and
    tracks open in a short sample)."""
    from cadenza.models import build_model, resolve_config

    torch.manual_seed(0)
    model = build_model("gpt", resolve_config("gpt", "nano", {"block_size": 256}), tok.vocab_size)
    step = model.forward_step
    bias = torch.zeros(tok.vocab_size)
    for i, b in boost.items():
        bias[i] = b
    model.decode_state = lambda cache: None
    model.forward_step = lambda *a, **k: step(*a, **k) + bias
    return model


@pytest.mark.parametrize("select", ["index", "program"])
def test_the_sampler_forces_each_tracks_controls_in_that_track(select: str) -> None:
    """A random model that opens many bars and tracks: every slot after a Bar holds the value
    of its own track's entry for that bar (bars counted within the track), the piece-wide
    value where the entry leaves a control out."""
    from cadenza.sample import SamplingParams, generate
    from cadenza.sample.steer import build_steer

    tok = build_tokenizer(_spec(["key", *BAR]))
    assert isinstance(tok, MidiTokTokenizer)
    v = tok.miditok.vocab
    bar, ts = v["Bar_None"], v["Track_Start"]
    progs = {v[f"Program_{p}"]: p for p in (33, 40)}
    model = _biased_model(
        tok, {bar: 5.0, ts: 6.0, v["Track_End"]: 6.0, **dict.fromkeys(progs, 6.0)}
    )
    entries: list[dict[str, Any]] = [
        {"note_density": 4},
        {"note_density": [12, None, 7], "pitch_range": [40, 50]},
    ]
    if select == "program":
        entries = [{"program": 33, **entries[0]}, {"program": 40, **entries[1]}]
    controls = {"key": "Dm", "polyphony": 2, "tracks": entries}
    steer, prompt = build_steer(
        tok, [tok.bos_id], controls=controls, tags=None, rows=3, device="cpu"
    )
    assert steer is not None
    grammar = grammar_for(tok)
    rows = generate(
        model,
        [prompt],
        SamplingParams(max_new_tokens=200, seed=2, stop_at_eos=False, compile=False),
        n=3,
        steer=steer,
        grammar=grammar,
    )
    own = tok.own_vocab_size
    checked = {0: 0, 1: 0, None: 0}
    for new in rows:
        assert grammar.first_violation([*prompt, *new]) is None
        names = [tok.token_str(i) if i >= own else "" for i in new]
        assert names[0] == "Ctl_key_Dm"
        track, bar_in_track, entry = -1, 0, None
        for k, i in enumerate(new):
            if i == ts:
                track += 1
                bar_in_track = 0
                if select == "index":
                    entry = track if track < 2 else None
                else:
                    p = progs.get(new[k + 1]) if k + 1 < len(new) else None
                    entry = {33: 0, 40: 1}.get(p) if p is not None else None
                continue
            if i != bar or k + 5 >= len(new) or track < 0:
                continue
            slot = names[k + 1 : k + 5]
            dens = {0: ["4"] * 9, 1: ["12", None, "7"]}.get(entry) if entry is not None else None
            want = dens[min(bar_in_track, len(dens) - 1)] if dens else None
            if entry == 1 and bar_in_track == 1:
                want = None  # null: free
            if want is not None:
                assert slot[0] == f"Ctl_note_density_{want}", (track, bar_in_track, slot)
            else:
                assert slot[0].startswith("Ctl_note_density_")
            assert slot[1] == "Ctl_polyphony_2"  # piece-wide, in every track
            if entry == 1:
                assert slot[2:4] == ["Ctl_pitch_range_low_40", "Ctl_pitch_range_high_50"]
            checked[entry] += 1
            bar_in_track += 1
    assert checked[0] > 0 and checked[1] > 0, checked  # both entries were exercised


def _two_track_piece(seed: int, bars: int = 4) -> bytes:
    """Two tracks (piano, bass) whose bars are, at random and independently, one whole note
    or eight eighths: density varies per track and per bar."""
    rng = random.Random(seed)
    score = make_score([], tracks=0)
    from symusic.core import TrackTick

    from cadenza.midi.clean import notes_from_arrays

    for prog, low in ((0, 60), (33, 36)):
        notes: list[tuple[int, int, int, int]] = []
        for b in range(bars):
            start, pitch = b * 1920, low + rng.randrange(12)
            if rng.random() < 0.5:
                notes.append((start, 1920, pitch, 80))
            else:
                notes += [(start + k * 240, 240, pitch + k % 3, 80) for k in range(8)]
        track = TrackTick(f"p{prog}", prog, False)
        cols = list(zip(*notes, strict=True))
        track.notes = notes_from_arrays(*(np.asarray(c, dtype=np.int64) for c in cols))
        score.tracks.append(track)
    data: bytes = score.dumps_midi()
    return data


@pytest.mark.slow
def test_a_briefly_trained_model_follows_each_tracks_note_density() -> None:
    """A nano GPT trained 200 steps on two-track music whose bars have 1 or 8 notes per track:
    asked for (8, 1) notes a bar, its first track's bars are denser than asked for (1, 8),
    and its second track's sparser. Direction only, on the tokenizer's own measure."""
    from bench.controls import realised, sample_track_bars, train_model

    torch.manual_seed(0)
    files = [(f"p{i}", _two_track_piece(i)) for i in range(20)]
    corpus = build_corpus(
        files, _spec(["note_density"]), split=(0.8, 0.1, 0.1), seed=0, workers=1, clean=KEEP_TRACKS
    )
    try:
        model = train_model(corpus, 200, batch=8, seq_len=128, arch="gpt", preset="nano")
        means: dict[tuple[int, int], list[float]] = {}
        for a, b in ((8, 1), (1, 8)):
            controls = {"tracks": [{"note_density": a}, {"note_density": b}]}
            per_track = sample_track_bars(
                model, corpus.tokenizer, controls, n=3, bars=3, seed=0, tokens=320
            )
            assert len(per_track) >= 2, f"fewer than two tracks sampled for {controls}"
            for k in (0, 1):
                vals = [v for f in per_track[k] if (v := realised("note_density", f)) is not None]
                assert vals, f"no complete bar in track {k} for {controls}"
                means.setdefault((a, b), []).append(sum(vals) / len(vals))
        assert means[(8, 1)][0] > means[(1, 8)][0], means
        assert means[(8, 1)][1] < means[(1, 8)][1], means
    finally:
        corpus.close()


def test_a_primer_sets_where_the_steer_starts() -> None:
    """After a primer of two tracks, the steer is in the second track, after its bars, on its
    entry (by order, or by the program that opened it)."""
    from cadenza.sample.steer import TrackMarks, replay

    marks = TrackMarks(track_start=7, program_entry={33: 0, 34: 1})
    bar = 5
    ids = [1, 7, 34, bar, 60, bar, 8, 7, 33, bar, 61, bar, 62, bar]
    by_order = replay(ids, bar, marks, False, 2)
    assert (by_order.tracks, by_order.bars, by_order.entry) == (2, 3, 1)
    by_program = replay(ids, bar, marks, True, 2)
    assert (by_program.tracks, by_program.bars, by_program.entry) == (2, 3, 0)
    assert replay([1, bar, bar], bar, None, False, 0).bars == 2  # one stream: bars of the piece
