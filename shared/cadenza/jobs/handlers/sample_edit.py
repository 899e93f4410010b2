"""The infill and accompany modes of a `sample` job: load the source, plan, write, decode.

`handlers/sample.py` runs this instead of its continuation when the request's `mode` is not
`continue`; the variations it returns are stored, rendered and recorded like any others. The
music part is `cadenza.sample.edit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cadenza.db.models import File, Sample
from cadenza.jobs.context import JobContext, UserError
from cadenza.sample.params import SampleParams, SamplingOptions

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel
    from cadenza.novelty import NoveltyIndex
    from cadenza.sample.variations import Variation
    from cadenza.tokenize.base import Tokenizer


def source_key(ctx: JobContext, p: SampleParams) -> str:
    """The object key of the request's source MIDI (the owner's file or sample)."""
    with ctx.session() as s:
        if p.source_file_id:
            file = s.get(File, p.source_file_id)
            if file is None or file.owner_id != ctx.owner_id:
                raise UserError(f"source file {p.source_file_id} no longer exists")
            return file.object_key
        sample = s.get(Sample, p.source_sample_id)
        if sample is None or sample.owner_id != ctx.owner_id:
            raise UserError(f"source sample {p.source_sample_id} no longer exists")
        return sample.midi_key


def edit(
    ctx: JobContext,
    p: SampleParams,
    model: CadenzaModel,
    device: str,
    tokenizer: Tokenizer,
    corpus_stats: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    novelty_index: NoveltyIndex | None = None,
) -> tuple[list[int], list[Variation], bool]:
    """(the source's ids, the variations, whether a cancel stopped it) for an edit request;
    `train_config` (the model's) says the layout its edits are prompted in, and the copy
    check (`novelty_index`, the request's `max_copied_fraction`) runs on what it writes."""
    from cadenza.midi.load import MidiRejected
    from cadenza.sample import edit as music
    from cadenza.sample.modes import model_infill_layout

    try:
        ids = music.mmm_ids(tokenizer)
    except KeyError as exc:
        raise UserError(f"mode: {exc.args[0]}") from exc
    label = p.source_label
    try:
        source = music.load_source(tokenizer, ctx.store.get(source_key(ctx, p)))
        if p.mode == "infill":
            assert p.infill is not None
            plan = music.plan_infill(source, p.infill.bars, p.infill.tracks)
        else:
            assert p.accompany is not None
            plan = music.plan_accompany(source, ids, p.accompany.programs, p.accompany.drums)
    except (music.EditError, MidiRejected) as exc:
        raise UserError(f"{label}: {exc}") from exc
    options = {name: getattr(p, name) for name in SamplingOptions.model_fields}
    total = len(plan.holes)
    ctx.progress(0.0, f"{p.mode}: writing {total} bar(s) for {p.n} variation(s)", force=True)
    cancelled = False

    def should_stop(done: int, total: int) -> bool:
        nonlocal cancelled
        if ctx.cancelled():
            cancelled = True
            return True
        ctx.progress(0.9 * done / max(total, 1), f"{done}/{total} bars written")
        return False

    variations, _ = music.edit_variations(
        model,
        tokenizer,
        source,
        plan,
        options,
        n=p.n,
        style=model_infill_layout(train_config),
        corpus_stats=corpus_stats,
        device=device,
        should_stop=should_stop,
        novelty_index=novelty_index,
        max_copied_fraction=p.max_copied_fraction,
        min_notes=p.min_notes,
    )
    return music.layout(source.tracks, ids, []), variations, cancelled


__all__ = ["edit", "source_key"]
