"""Editing a piece with a model that learned to fill: infill bars, accompany with new tracks.

The source MIDI is cleaned the way multi-track corpora are (tracks kept apart, drums kept)
and encoded with the model's MMM tokenizer; its tracks and bars come out of the ids
(`cadenza.tokenize.mmm`). An edit is a list of *holes*, (track, bar) pairs whose bodies the
model writes: the bars of an infill region, or every bar of each new accompaniment track.

Holes are written chunk by chunk so each prompt fits the model's context: a chunk is a run of
the region's bars, shown with as many bars around it as fit (`_plan`); holes not written yet
are ``Infill_Bar`` placeholders. Prompts follow the layout the model was trained with
(`cadenza.tokenize.mmm.InfillLayout`): ``spm`` writes the chunk track by track, each track's
bars after the other tracks and the bars after the chunk, right after the track's own bars
before it, each bar ended by the next ``Bar``; ``mmm`` appends ``FillBar_Start`` per hole, in
placeholder order, and samples until ``FillBar_End``. Later holes see the bars written for
earlier ones. Each of the `n` variations is one row of the same batched generation.

Reassembly works on notes: a rewritten track keeps the source's notes outside the region
exactly (as the tokenizer's grid has them) and takes the model's notes inside it, so nothing
the model writes can move a note outside the region; new tracks are added after the source's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from cadenza.tokenize.mmm import (
    InfillLayout,
    MMMIds,
    Track,
    fill_body,
    layout,
    n_bars,
    parse_tracks,
    spm_layout,
)

if TYPE_CHECKING:
    from symusic.core import ScoreTick

    from cadenza.models.base import CadenzaModel
    from cadenza.novelty import NoveltyIndex
    from cadenza.sample.variations import Variation
    from cadenza.tokenize.base import Tokenizer

#: Program id GM drums get in MMM's Program tokens.
DRUM_PROGRAM = -1


class EditError(ValueError):
    """The request does not fit the source piece (a bar or track it does not have); the
    message names the field."""


@dataclass
class Source:
    """The piece being edited: its cleaned score, its tracks as MMM ids, its bar count."""

    tracks: list[Track]
    bars: int
    score: ScoreTick


@dataclass
class Edit:
    """What to write: the (track, bar) holes in placeholder order, over these tracks (the
    source's, plus new empty ones for an accompaniment), and which bars are rewritten."""

    tracks: list[Track]
    holes: list[tuple[int, int]]
    region: range  # 0-based bars the holes lie in
    new_tracks: list[int] = field(default_factory=list)  # indexes of added tracks


def mmm_ids(tokenizer: Tokenizer) -> MMMIds:
    """The structure tokens of a model's tokenizer (KeyError if it cannot edit)."""
    return MMMIds.from_vocab(getattr(getattr(tokenizer, "miditok", None), "vocab", None) or {})


def load_source(tokenizer: Tokenizer, midi: bytes) -> Source:
    """Clean (tracks apart, drums kept) and encode a source piece; EditError if empty."""
    from cadenza.midi.clean import CleanOptions, clean_score
    from cadenza.midi.load import load_score
    from cadenza.tokenize.base import count_bars

    score = load_score(midi)
    cleaned, report = clean_score(
        score, CleanOptions(merge_tracks=False, drop_drums=False, min_notes=1)
    )
    if cleaned is None:
        raise EditError(f"the source has no usable notes ({report[-1] if report else 'empty'})")
    tracks = parse_tracks(tokenizer.encode(cleaned), mmm_ids(tokenizer))
    if not tracks:
        raise EditError("the source has no notes the model's tokenizer can encode")
    return Source(tracks, max(n_bars(tracks), count_bars(cleaned)), cleaned)


def plan_infill(source: Source, bars: tuple[int, int], tracks: Sequence[int] | None) -> Edit:
    """Holes for rewriting 1-based inclusive ``bars`` of ``tracks`` (default all)."""
    first, last = bars
    if first < 1 or last < first:
        raise EditError(f"infill.bars: [{first}, {last}] is not a range of bars")
    if last > source.bars:
        raise EditError(
            f"infill.bars: the source has {source.bars} bars; [{first}, {last}] goes past its end"
        )
    count = len(source.tracks)
    chosen = sorted(set(tracks)) if tracks is not None else list(range(count))
    unknown = [k for k in chosen if not 0 <= k < count]
    if unknown:
        raise EditError(
            f"infill.tracks: the source has {count} tracks with notes (0..{count - 1}); "
            f"no track {unknown[0]}"
        )
    region = range(first - 1, last)
    holes = [(k, b) for k in chosen for b in region]
    return Edit([_copy(t) for t in source.tracks], holes, region)


def plan_accompany(source: Source, t: MMMIds, programs: Sequence[int], drums: bool) -> Edit:
    """Holes for every bar of a new track per program (and one drum track if asked)."""
    wanted = [*programs, *([DRUM_PROGRAM] if drums else [])]
    missing = [p for p in wanted if p not in t.programs]
    if missing:
        raise EditError(f"accompany.programs: the model's tokenizer has no program {missing[0]}")
    tracks = [_copy(tr) for tr in source.tracks]
    new = []
    for p in wanted:
        new.append(len(tracks))
        tracks.append(Track([t.programs[p]], [[] for _ in range(source.bars)]))
    region = range(source.bars)
    holes = [(k, b) for k in new for b in region]
    return Edit(tracks, holes, region, new)


def _copy(track: Track) -> Track:
    return Track(list(track.head), [list(b) for b in track.bars])


# ----------------------------------------------------------------------------- prompting


def _bar_costs(edit: Edit) -> tuple[np.ndarray, np.ndarray]:
    """Per bar: ids the bar costs in a prompt (all tracks, holes as one id) and the ids its
    holes are expected to take when written (a rewritten bar: its old length; a new track's
    bar: the mean of the source's bars there)."""
    count = max(max(len(tr.bars) for tr in edit.tracks), edit.region.stop)
    shown = np.zeros(count, dtype=np.int64)
    written = np.zeros(count, dtype=np.int64)
    holes = set(edit.holes)
    new = set(edit.new_tracks)
    for b in range(count):
        old = [
            len(tr.bars[b]) for k, tr in enumerate(edit.tracks) if k not in new and b < len(tr.bars)
        ]
        mean = int(np.mean(old)) if old else 8
        for k, tr in enumerate(edit.tracks):
            body = len(tr.bars[b]) if b < len(tr.bars) else 0
            if (k, b) in holes:
                shown[b] += 2
                written[b] += (body if k not in new else mean) + 2
            else:
                shown[b] += 1 + body
    return shown, written


def _plan(edit: Edit, budget: int | None) -> list[tuple[list[int], range]]:
    """Chunks of the region's bars, each with the bars shown around it, fitting ``budget``
    ids (prompt plus the expected fills; None = everything in one prompt)."""
    region = list(edit.region)
    if budget is None:
        return [(region, range(0, max(len(tr.bars) for tr in edit.tracks)))]
    shown, written = _bar_costs(edit)
    heads = sum(len(tr.head) + 2 for tr in edit.tracks) + 1

    def cost(chunk: list[int], ctx: range) -> int:
        return heads + int(shown[ctx.start : ctx.stop].sum()) + int(written[chunk].sum())

    chunks: list[list[int]] = []
    for b in region:
        if chunks and cost([*chunks[-1], b], range(chunks[-1][0], b + 1)) <= budget:
            chunks[-1].append(b)
        else:
            chunks.append([b])
    out = []
    total = len(shown)
    for chunk in chunks:
        lo, hi = chunk[0], chunk[-1] + 1
        grew = True
        while grew:  # add a bar on each side in turn while it fits
            grew = False
            if lo > 0 and cost(chunk, range(lo - 1, hi)) <= budget:
                lo, grew = lo - 1, True
            if hi < total and cost(chunk, range(lo, hi + 1)) <= budget:
                hi, grew = hi + 1, True
        out.append((chunk, range(lo, hi)))
    return out


@dataclass
class EditedRow:
    """One variation: the tracks with their holes written, and the ids it sampled."""

    tracks: list[Track]
    new_ids: list[int] = field(default_factory=list)
    invalid_tokens: int = 0  # written ids the tokenizer's grammar forbids (0 when constrained)


def write_holes(
    model: CadenzaModel,
    tokenizer: Tokenizer,
    edit: Edit,
    options: Mapping[str, Any],
    *,
    n: int,
    style: InfillLayout = "spm",
    device: str | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
) -> tuple[list[EditedRow], bool]:
    """Sample every hole of ``edit`` for ``n`` variations; (rows, stopped early).

    ``style`` is the layout the model was trained with (`cadenza.tokenize.mmm.InfillLayout`):
    ``spm`` writes a chunk's bars track by track, each right after its track's prefix and
    ended by the next ``Bar``; ``mmm`` writes each after ``FillBar_Start`` at the end of the
    piece with placeholders, until ``FillBar_End``. ``options`` are a request's
    `SamplingOptions` fields; ``max_new_tokens`` caps each bar. Each bar is one `generate`
    call over the n rows, seeded ``seed + call`` so a seeded request is reproducible.
    ``should_stop(done, total)`` is asked before each bar; True ends the edit (the holes left
    keep the source's bars, or stay empty in new tracks).
    """
    from cadenza.sample import SamplingParams, generate
    from cadenza.tokenize.grammar import grammar_for

    t = mmm_ids(tokenizer)
    # spm writes a bar where a continuation would, so the grammar that masks a continuation
    # masks it too (the prompt's walk skips the fill markers and resets at Track_Start); an
    # mmm fill starts after FillBar_Start, past the piece's end, where no grammar state fits
    grammar = grammar_for(tokenizer) if style == "spm" else None
    block = model.block_size
    longest = max((len(b) for tr in edit.tracks for b in tr.bars), default=16)
    cap = max(1, min(int(options.get("max_new_tokens", 256)), max(48, 2 * longest + 8)))
    budget = None if block is None else max(16, int(block) - cap // 2)
    rows = [EditedRow([_copy(tr) for tr in edit.tracks]) for _ in range(n)]
    seed = options.get("seed")
    base = {k: v for k, v in options.items() if k not in ("max_new_tokens", "seed", "stop_at_eos")}
    # spm: a bar ends where the next one opens; mmm: at the fill's end marker
    opener, stop = ([], t.bar) if style == "spm" else ([t.fill_start], t.fill_end)
    pending = set(edit.holes)  # holes not written yet: placeholders in every prompt
    calls = 0
    total = len(edit.holes)
    for chunk, ctx in _plan(edit, budget):
        holes = [h for h in edit.holes if h[1] in chunk]
        lead = [t.bos] if ctx.start == 0 else []
        if style == "spm":
            run = range(chunk[0], chunk[-1] + 1)
            groups = [[h for h in holes if h[0] == k] for k in dict.fromkeys(k for k, _ in holes)]
        else:
            groups = [holes]
        for group in groups:
            if style == "spm":
                k, others = group[0][0], pending - set(group)
                prompts = [
                    [*lead, *spm_layout(r.tracks, t, k, run, bars=ctx, holes=others), t.bar]
                    for r in rows
                ]
            else:
                prompts = [[*lead, *layout(r.tracks, t, group, bars=ctx)] for r in rows]
            for hole in group:
                if should_stop is not None and should_stop(calls, total):
                    return rows, True
                params = SamplingParams(
                    **base,
                    max_new_tokens=cap,
                    seed=None if seed is None else int(seed) + calls,
                    stop_at_eos=True,
                    eos_id=stop,
                )
                asked = [[*p, *opener] for p in prompts]
                if block is not None:
                    asked = [p[-int(block) :] for p in asked]
                outs = generate(model, asked, params, n=1, device=device, grammar=grammar)
                calls += 1
                for i, (row, out) in enumerate(zip(rows, outs, strict=True)):
                    if grammar is not None:
                        row.invalid_tokens += grammar.walk(out, grammar.walk(asked[i])[0])[1]
                    body = fill_body(out, t, stop)
                    k, b = hole
                    track = row.tracks[k]
                    while len(track.bars) <= b:
                        track.bars.append([])
                    track.bars[b] = body
                    row.new_ids += out
                    prompts[i] = [*prompts[i], *opener, *body, stop]
                pending.discard(hole)
    return rows, False


# ---------------------------------------------------------------------------- reassembly


def _decode_track(tokenizer: Tokenizer, t: MMMIds, track: Track, bars: int) -> Any:
    """One track's notes as a symusic track (None when it decodes to no notes)."""
    span = range(max(len(track.bars), bars))
    ids = layout([track], t, [], bars=span)
    score = tokenizer.decode(ids)
    tracks = [tr for tr in score.tracks if len(tr.notes) > 0]
    return tracks[0] if tracks else None


def _notes_in(track: Any, lo: int, hi: int, inside: bool) -> dict[str, np.ndarray]:
    soa = track.notes.numpy()
    t = np.asarray(soa["time"], dtype=np.int64)
    keep = (t >= lo) & (t < hi)
    if not inside:
        keep = ~keep
    return {
        k: np.asarray(soa[k], dtype=np.int64)[keep]
        for k in ("time", "duration", "pitch", "velocity")
    }


def _all(track: Any) -> dict[str, np.ndarray]:
    soa = track.notes.numpy()
    return {
        k: np.asarray(soa[k], dtype=np.int64) for k in ("time", "duration", "pitch", "velocity")
    }


def _clip_overlaps(arr: dict[str, np.ndarray], written: np.ndarray) -> None:
    """Shorten each ``written`` note (in place) so it ends by the next onset of its pitch in
    the track: MIDI cannot hold two overlapping notes of one pitch on one channel, and a
    written note held into a kept one would change that note's length in the file."""
    by_pitch = np.lexsort((arr["time"], arr["pitch"]))
    pitch, time = arr["pitch"][by_pitch], arr["time"][by_pitch]
    room = np.full(by_pitch.size, np.iinfo(np.int64).max, dtype=np.int64)
    same = pitch[1:] == pitch[:-1]
    room[:-1][same] = time[1:][same] - time[:-1][same]
    limit = np.empty_like(room)
    limit[by_pitch] = room
    clip = written & (arr["duration"] > limit)
    arr["duration"][clip] = np.maximum(limit[clip], 1)


def reassemble(
    tokenizer: Tokenizer, source: Source, edit: Edit, row: EditedRow
) -> tuple[ScoreTick, int]:
    """The edited piece as a score, and how many of its notes are new (in the region of a
    rewritten track, or in an added track)."""
    score, written = _reassemble(tokenizer, source, edit, row)
    return score, sum(len(tr.notes) for tr in written.tracks)


def _reassemble(
    tokenizer: Tokenizer, source: Source, edit: Edit, row: EditedRow
) -> tuple[ScoreTick, ScoreTick]:
    """(the edited piece, only the notes the model wrote, in the same tracks and time)."""
    from symusic.core import ScoreTick, TempoTick, TimeSignatureTick, TrackTick

    from cadenza.midi.clean import notes_from_arrays
    from cadenza.tokenize.primer import bar_end_tick

    t = mmm_ids(tokenizer)
    bars = max(source.bars, edit.region.stop)
    original = tokenizer.decode(layout(source.tracks, t, []))
    out = ScoreTick(int(original.ticks_per_quarter))
    out.tempos = original.tempos.copy()
    out.time_signatures = original.time_signatures.copy()
    if len(out.tempos) == 0:
        out.tempos.append(TempoTick(0, 120.0))
    if len(out.time_signatures) == 0:
        out.time_signatures.append(TimeSignatureTick(0, 4, 4))
    lo = bar_end_tick(out, edit.region.start) if edit.region.start else 0
    hi = bar_end_tick(out, edit.region.stop)
    edited = {k for k, _ in edit.holes}
    written = ScoreTick(int(original.ticks_per_quarter))
    written.tempos = out.tempos.copy()
    written.time_signatures = out.time_signatures.copy()
    for k, track in enumerate(row.tracks):
        head_prog = next((p for p, i in t.programs.items() if track.head and i == track.head[0]), 0)
        parts: list[dict[str, np.ndarray]] = []
        if k not in edit.new_tracks:
            old = _decode_track(tokenizer, t, source.tracks[k], bars)
            if old is not None:  # a rewritten track keeps only what lies outside the region
                parts.append(_notes_in(old, lo, hi, False) if k in edited else _all(old))
        if k in edited or k in edit.new_tracks:
            made = _decode_track(tokenizer, t, track, bars)
            if made is not None:
                parts.append(_notes_in(made, lo, hi, True))
        if not parts:
            continue
        arr = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        order = np.lexsort((arr["pitch"], arr["time"]))
        arr = {key: v[order] for key, v in arr.items()}
        inside = (arr["time"] >= lo) & (arr["time"] < hi)
        if k in edited or k in edit.new_tracks:
            _clip_overlaps(arr, inside)
        drum = head_prog == DRUM_PROGRAM
        name, program = "drums" if drum else f"track {k}", 0 if drum else max(head_prog, 0)
        out_track = TrackTick(name, program, drum)
        out_track.notes = notes_from_arrays(
            arr["time"], arr["duration"], arr["pitch"], arr["velocity"]
        )
        out.tracks.append(out_track)
        if (k in edited or k in edit.new_tracks) and inside.any():
            new_track = TrackTick(name, program, drum)
            new_track.notes = notes_from_arrays(
                *(arr[key][inside] for key in ("time", "duration", "pitch", "velocity"))
            )
            written.tracks.append(new_track)
    return out, written


def edit_variations(
    model: CadenzaModel,
    tokenizer: Tokenizer,
    source: Source,
    edit: Edit,
    options: Mapping[str, Any],
    *,
    n: int,
    style: InfillLayout = "spm",
    corpus_stats: Mapping[str, Any] | None = None,
    device: str | None = None,
    should_stop: Callable[[int, int], bool] | None = None,
    novelty_index: NoveltyIndex | None = None,
    max_copied_fraction: float | None = None,
    min_notes: int = 1,
) -> tuple[list[Variation], bool]:
    """``n`` edited versions of ``source``, decoded and measured like any variation;
    (variations, stopped early). ``style``: the layout the model was trained with.

    With a ``novelty_index`` each variation's ``novelty`` is the copy check of the notes the
    model wrote (the source's are the user's); with ``max_copied_fraction`` too, variations
    over it are written again as a continuation's are (`variations.resample_copies`), each
    try seeded past every seed the earlier ones used.
    """
    from cadenza.evaluate import compare, midi_metrics
    from cadenza.sample.variations import Variation, resample_copies

    t = mmm_ids(tokenizer)
    stopped = False

    def draw(count: int, offset: int) -> list[EditedRow]:
        nonlocal stopped
        seed = options.get("seed")
        tries = dict(options)
        if offset and seed is not None:  # each bar takes seed + call: skip past them all
            tries["seed"] = int(seed) + offset * max(len(edit.holes), 1)
        rows, halted = write_holes(
            model,
            tokenizer,
            edit,
            tries,
            n=count,
            style=style,
            device=device,
            should_stop=should_stop,
        )
        stopped = stopped or halted
        return rows

    def make(i: int, row: EditedRow, attempt: int) -> Variation:
        score, written = _reassemble(tokenizer, source, edit, row)
        midi = bytes(score.dumps_midi())
        notes = sum(len(tr.notes) for tr in score.tracks)
        new_notes = sum(len(tr.notes) for tr in written.tracks)
        seconds = float(score.to("second").end()) if notes else 0.0  # type: ignore[attr-defined]
        metrics: dict[str, Any] = dict(midi_metrics(midi))
        if corpus_stats:
            metrics = dict(compare(metrics, corpus_stats))
        novelty = novelty_index.check_score(written) if novelty_index is not None else None
        ids = layout(row.tracks, t, [])
        return Variation(
            i,
            row.new_ids,
            ids,
            midi,
            notes,
            new_notes,
            seconds,
            metrics,
            attempt,
            novelty,
            row.invalid_tokens,
        )

    out = [make(i, row, 1) for i, row in enumerate(draw(n, 0))]
    if novelty_index is not None and max_copied_fraction is not None:

        def redraw(rows: list[int], k: int) -> list[Variation]:
            again = draw(len(rows), k)
            return [make(i, r, out[i].attempts + 1) for i, r in zip(rows, again, strict=True)]

        def cancelled() -> bool:
            return stopped

        resample_copies(out, redraw, max_copied_fraction, min_notes, cancelled)
    return out, stopped


__all__ = [
    "Edit",
    "EditError",
    "EditedRow",
    "Source",
    "edit_variations",
    "load_source",
    "mmm_ids",
    "plan_accompany",
    "plan_infill",
    "reassemble",
    "write_holes",
]
