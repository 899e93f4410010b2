"""Infill and accompaniment with a real (tiny, briefly trained) model on real multi-track
music: chorales with one program per part, a corpus of the `multitrack` preset, a model
trained with `infill_fraction` 0.5 (in each `train.infill_layout`), and a held-out chorale
to edit. What must hold whatever
the model writes: every note outside the region comes back (on the tokenizer's grid), the
region gets notes, other tracks stay identical, an accompaniment adds its program's track.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from cadenza.midi.clean import CleanOptions
from cadenza.sample import edit as E
from cadenza.tokenize import build_corpus, mmm
from cadenza.tokenize.base import Tokenizer
from cadenza.tokenize.presets import resolve_spec
from tests.support.music import PART_PROGRAMS, multitrack_pairs

pytestmark = pytest.mark.slow

OPTIONS: dict[str, Any] = {"temperature": 0.9, "top_k": 20, "max_new_tokens": 48, "seed": 5}


@dataclass
class Trained:
    model: Any
    tokenizer: Tokenizer
    source: bytes  # a held-out chorale's first 6 bars
    style: mmm.InfillLayout  # the layout it was trained with, and its edits are prompted in


@pytest.fixture(scope="module", params=mmm.INFILL_LAYOUTS)
def trained(request: pytest.FixtureRequest) -> Iterator[Trained]:
    from cadenza.models import resolve_config
    from cadenza.models.checkpoint import load_for_inference
    from cadenza.tokenize.primer import crop_score
    from cadenza.train import TrainConfig, train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    files = multitrack_pairs()
    clean = CleanOptions(merge_tracks=False, drop_drums=False)
    build = build_corpus(
        files[:5], resolve_spec(preset="multitrack"), seed=0, split=(0.8, 0.2, 0.0), clean=clean
    )
    tok = build.tokenizer
    data = {k: np.asarray(v) for k, v in build.splits.items() if v.size}
    cfg = TrainConfig(
        max_steps=120,
        warmup_steps=10,
        seq_len=64,
        batch_size=8,
        lr=3e-3,
        eval_interval=1000,
        eval_batches=1,
        log_interval=1000,
        checkpoint_interval=1000,
        precision="fp32",
        compile=False,
        infill_fraction=0.5,
        infill_layout=request.param,
    )
    saved: dict[str, bytes] = {}

    class Hooks:
        def on_metrics(self, record: dict[str, Any]) -> None: ...
        def on_progress(self, fraction: float, message: str) -> None: ...
        def should_stop(self) -> bool:
            return False

        def save_checkpoint(
            self, step: int, payload: bytes, *, val_loss: float | None, is_best: bool
        ) -> None:
            saved["last"] = payload

        def load_latest_checkpoint(self) -> bytes | None:
            return None

    spec = {
        "architecture": "gpt",
        "config": resolve_config("gpt", "tiny", {"n_layer": 1, "block_size": 64}),
        "vocab_size": tok.vocab_size,
    }
    ids = mmm.MMMIds.from_vocab(tok.miditok.vocab)  # type: ignore[attr-defined]
    train(spec, data, cfg, Hooks(), tokenizer_hash=tok.hash(), device="cpu", infill_ids=ids)
    model, _ = load_for_inference(saved["last"], "cpu")
    from symusic import Score

    held_out = crop_score(Score.from_midi(files[5][1]), bars=6)
    yield Trained(model, tok, bytes(held_out.dumps_midi()), request.param)
    build.close()
    torch.set_num_threads(before)


def _notes(track: Any) -> set[tuple[int, int, int, int]]:
    soa = track.notes.numpy()
    return set(
        zip(
            *(np.asarray(soa[k]).tolist() for k in ("time", "duration", "pitch", "velocity")),
            strict=True,
        )
    )


def _grid_tracks(t: Trained, source: E.Source) -> list[set[tuple[int, int, int, int]]]:
    """The source's notes per track as the tokenizer's grid has them (what must survive)."""
    ids = E.mmm_ids(t.tokenizer)
    out = []
    for track in source.tracks:
        decoded = t.tokenizer.decode(mmm.layout([track], ids, []))
        out.append(_notes(decoded.tracks[0]) if len(decoded.tracks) else set())
    return out


def _result(midi: bytes) -> Any:
    from symusic import Score

    return Score.from_midi(midi)  # written at the tokenizer's ticks per quarter


def test_infill_keeps_everything_outside_the_region(trained: Trained) -> None:
    from cadenza.tokenize.primer import bar_end_tick

    source = E.load_source(trained.tokenizer, trained.source)
    assert len(source.tracks) == 4 and source.bars == 6
    plan = E.plan_infill(source, (3, 4), None)
    assert len(plan.holes) == 8  # 2 bars x 4 tracks
    rows, stopped = E.write_holes(
        trained.model, trained.tokenizer, plan, OPTIONS, n=2, style=trained.style
    )
    assert not stopped
    grid = _grid_tracks(trained, source)
    new_notes = 0
    for row in rows:
        score, made = E.reassemble(trained.tokenizer, source, plan, row)
        # as the sample's MIDI file has it: a written note held into a kept one of its pitch
        # would change that note's length there
        score = _result(bytes(score.dumps_midi()))
        lo, hi = bar_end_tick(score, 2), bar_end_tick(score, 4)
        assert [int(tr.program) for tr in score.tracks] == list(PART_PROGRAMS[:4])
        for k, tr in enumerate(score.tracks):
            got = _notes(tr)
            outside = {n for n in got if not lo <= n[0] < hi}
            assert outside == {n for n in grid[k] if not lo <= n[0] < hi}, k
        new_notes += made
    assert new_notes > 0  # the region was written

    # the whole job path: the same seed gives the same music, each variation has notes
    first, _ = E.edit_variations(
        trained.model, trained.tokenizer, source, plan, OPTIONS, n=2, style=trained.style
    )
    again, _ = E.edit_variations(
        trained.model, trained.tokenizer, source, plan, OPTIONS, n=2, style=trained.style
    )
    assert [v.midi for v in first] == [v.midi for v in again]
    assert all(v.notes > 0 for v in first)


def test_track_infill_leaves_the_other_tracks_identical(trained: Trained) -> None:
    from cadenza.tokenize.primer import bar_end_tick

    source = E.load_source(trained.tokenizer, trained.source)
    plan = E.plan_infill(source, (2, 5), [1])
    assert {k for k, _ in plan.holes} == {1}
    rows, _ = E.write_holes(
        trained.model, trained.tokenizer, plan, OPTIONS, n=1, style=trained.style
    )
    score, _ = E.reassemble(trained.tokenizer, source, plan, rows[0])
    grid = _grid_tracks(trained, source)
    lo, hi = bar_end_tick(score, 1), bar_end_tick(score, 5)
    by_program = {int(tr.program): _notes(tr) for tr in score.tracks}
    for k in (0, 2, 3):
        assert by_program[PART_PROGRAMS[k]] == grid[k]
    edited = by_program.get(PART_PROGRAMS[1], set())
    assert {n for n in edited if not lo <= n[0] < hi} == {n for n in grid[1] if not lo <= n[0] < hi}


def test_accompaniment_keeps_the_piece_and_adds_a_track(trained: Trained) -> None:
    tok = trained.tokenizer
    source = E.load_source(tok, trained.source)
    plan = E.plan_accompany(source, E.mmm_ids(tok), [33], drums=False)
    assert plan.new_tracks == [4] and len(plan.holes) == source.bars
    variations, _ = E.edit_variations(
        trained.model, tok, source, plan, OPTIONS, n=2, style=trained.style
    )
    grid = _grid_tracks(trained, source)
    added = 0
    for v in variations:
        score = _result(v.midi)
        kept = [_notes(tr) for tr in score.tracks[:4]]
        assert kept == grid  # the melody and the other parts, unchanged
        extra = score.tracks[4:]
        assert all(int(tr.program) == 33 for tr in extra)
        added += sum(len(tr.notes) for tr in extra)
        assert v.new_notes == sum(len(tr.notes) for tr in extra)
    assert added > 0


def test_edits_refuse_what_the_source_does_not_have(trained: Trained) -> None:
    source = E.load_source(trained.tokenizer, trained.source)
    with pytest.raises(E.EditError, match=r"infill.bars: the source has 6 bars"):
        E.plan_infill(source, (5, 7), None)
    with pytest.raises(E.EditError, match=r"infill.tracks: .* no track 4"):
        E.plan_infill(source, (1, 2), [0, 4])
    with pytest.raises(E.EditError, match="accompany.programs"):
        E.plan_accompany(source, E.mmm_ids(trained.tokenizer), [128], drums=False)


def test_edits_are_masked_by_the_grammar_and_copy_checked(trained: Trained) -> None:
    from cadenza.novelty import NGRAM, NoveltyIndex, score_hashes

    tok = trained.tokenizer
    source = E.load_source(tok, trained.source)
    plan = E.plan_accompany(source, E.mmm_ids(tok), [33], drums=False)
    # an index of the source's own notes: what the model writes for a new track is checked
    # alone (the source's notes are the user's), so its n-grams are the written notes'
    index = NoveltyIndex.from_hashes([score_hashes(source.score)], 1)
    variations, _ = E.edit_variations(
        trained.model,
        tok,
        source,
        plan,
        OPTIONS,
        n=2,
        style=trained.style,
        novelty_index=index,
        max_copied_fraction=0.0,
    )
    for v in variations:
        assert v.novelty is not None
        assert v.novelty["ngrams"] == max(v.new_notes - NGRAM + 1, 0)
        assert v.novelty["max_copied_fraction"] == 0.0
        assert v.attempts == 1 + v.novelty["resampled"]
        if trained.style == "spm":  # written where a continuation is: the grammar masks it
            assert v.invalid_tokens == 0
