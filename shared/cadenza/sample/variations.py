"""Generate variations and turn each into measured MIDI: the music part of a `sample` job.

The job (`cadenza.jobs.handlers.sample`) adds loading, cancellation, storage and rendering
around this; `bench/quality.py` calls it directly, so the benchmark measures exactly what a
user gets. The near-empty guard lives here too: a variation whose *new* music has fewer than
`min_notes` notes is sampled again (a fresh seed per try, at most `resample_empty` tries), and
each variation reports how many attempts it took. So does the copy check (`cadenza.novelty`):
given the corpus's index, each variation reports `novelty`, and one whose copied fraction is
above `max_copied_fraction` is sampled again (at most `COPY_RESAMPLES` tries).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel
    from cadenza.novelty import NoveltyIndex
    from cadenza.sample.steer import Steer
    from cadenza.tokenize.base import Tokenizer


@dataclass
class Variation:
    """One decoded variation: its tokens, MIDI, note counts and metrics beside the corpus."""

    index: int
    new_ids: list[int]
    ids: list[int]  # what was decoded: prompt + new with include_primer, else new
    midi: bytes
    notes: int
    new_notes: int  # notes beyond the primer's own
    duration_s: float
    metrics: dict[str, Any]
    attempts: int = 1
    novelty: dict[str, Any] | None = None  # the copy check against the training split
    invalid_tokens: int = 0  # new tokens the tokenizer's grammar forbids (0 when constrained)


def _count_notes(midi: bytes) -> int:
    from cadenza.midi.load import MidiRejected, load_score

    try:
        return sum(len(t.notes) for t in load_score(midi).tracks)
    except MidiRejected:
        return 0


def decode_variation(
    tokenizer: Tokenizer,
    prompt: Sequence[int],
    new: Sequence[int],
    *,
    include_primer: bool = True,
    max_bars: int | None = None,
    max_seconds: float | None = None,
    stop_at_eos: bool = True,
) -> tuple[bytes, int, float]:
    """(MIDI bytes, notes, seconds) of a row, cut to the music-length limits."""
    from cadenza.midi.load import MidiRejected, load_score
    from cadenza.tokenize import decode_to_midi
    from cadenza.tokenize.primer import crop_score

    ids = [*prompt, *new] if include_primer else list(new)
    midi = decode_to_midi(tokenizer, ids, stop_at_eos=stop_at_eos)
    try:
        score = load_score(midi)
    except MidiRejected:
        return midi, 0, 0.0
    if max_bars or max_seconds:
        score = crop_score(score, bars=max_bars, seconds=max_seconds)
        midi = bytes(score.dumps_midi())
    notes = sum(len(t.notes) for t in score.tracks)
    seconds = float(score.to("second").end()) if notes else 0.0  # type: ignore[attr-defined]
    return midi, notes, seconds


def sample_variations(
    model: CadenzaModel,
    tokenizer: Tokenizer,
    prompt: list[int],
    options: Mapping[str, Any],
    *,
    n: int,
    corpus_stats: Mapping[str, Any] | None = None,
    include_primer: bool = True,
    max_bars: int | None = None,
    max_seconds: float | None = None,
    min_notes: int = 0,
    resample_empty: int = 0,
    on_token: Callable[[int, list[list[int]]], bool] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | None = None,
    novelty_index: NoveltyIndex | None = None,
    max_copied_fraction: float | None = None,
    steer: Callable[[int], Steer | None] | None = None,
) -> list[Variation]:
    """`n` variations of `prompt`, decoded and measured; near-empty ones re-sampled (bounded).

    `steer(rows)` makes a fresh attribute-control steer for a generation of `rows` rows.

    `options` are a request's `SamplingOptions` fields. A re-sampling try draws only the rows
    still short of `min_notes`, with seed + try, so a seeded request stays reproducible.
    `on_token` returning True ends a generation early (cancel or a length limit reached);
    once `should_stop()` is true (cancel) no re-sampling try starts. The tokenizer's grammar
    masks forbidden ids while `options["constrained"]` is true (the default), and each
    variation counts the new ids it forbids (`invalid_tokens`) either way.
    """
    from cadenza.evaluate import compare, midi_metrics
    from cadenza.sample import SamplingParams, generate
    from cadenza.tokenize import special_ids
    from cadenza.tokenize.grammar import grammar_for

    grammar = grammar_for(tokenizer)  # masks when constrained; counts violations either way
    after_prompt, _ = grammar.walk(prompt)
    params = SamplingParams(**dict(options), eos_id=special_ids(tokenizer).get("eos"))
    stop_at_eos = bool(options.get("stop_at_eos", True))
    primer_notes = 0
    if include_primer and len(prompt) > 1:
        _, primer_notes, _ = decode_variation(tokenizer, prompt, [], stop_at_eos=stop_at_eos)

    def make(i: int, new: list[int], attempt: int) -> Variation:
        midi, notes, seconds = decode_variation(
            tokenizer,
            prompt,
            new,
            include_primer=include_primer,
            max_bars=max_bars,
            max_seconds=max_seconds,
            stop_at_eos=stop_at_eos,
        )
        metrics: dict[str, Any] = dict(midi_metrics(midi))
        if corpus_stats:
            metrics = dict(compare(metrics, corpus_stats))
        ids = [*prompt, *new] if include_primer else list(new)
        new_notes = max(notes - primer_notes, 0)
        novelty = None
        if novelty_index is not None:  # the primer's own n-grams are the user's, not copied
            novelty = novelty_index.check_midi(midi, skip_notes=primer_notes)
        _, invalid = grammar.walk(new, after_prompt)
        return Variation(
            i, list(new), ids, midi, notes, new_notes, seconds, metrics, attempt, novelty, invalid
        )

    def steering(rows: int) -> Steer | None:
        return steer(rows) if steer is not None else None

    seed = params.seed

    def draw(n_rows: int, offset: int) -> list[list[int]]:
        """`n_rows` new tries; `offset` > 0 re-seeds them past the request's seed."""
        tries = params
        if offset:
            tries = SamplingParams(
                **{**dict(options), "seed": None if seed is None else seed + offset},
                eos_id=params.eos_id,
            )
        return generate(
            model,
            [prompt],
            tries,
            n=n_rows,
            on_token=on_token,
            device=device,
            grammar=grammar,
            steer=steering(n_rows),
        )

    out = [make(i, new, 1) for i, new in enumerate(draw(n, 0))]
    for attempt in range(2, resample_empty + 2):
        short = [v.index for v in out if v.new_notes < min_notes]
        if not short or (should_stop is not None and should_stop()):
            break
        for i, new in zip(short, draw(len(short), attempt - 1), strict=True):
            candidate = make(i, new, attempt)
            if candidate.new_notes > out[i].new_notes:
                out[i] = candidate
            else:
                out[i].attempts = attempt
    if novelty_index is not None and max_copied_fraction is not None:

        def redraw(rows: list[int], k: int) -> list[Variation]:
            """Fresh tries for `rows`, seeded past every seed the empty guard may use."""
            again = draw(len(rows), resample_empty + k)
            return [make(i, new, out[i].attempts + 1) for i, new in zip(rows, again, strict=True)]

        resample_copies(out, redraw, max_copied_fraction, min_notes, should_stop)
    return out


def resample_copies(
    out: list[Variation],
    redraw: Callable[[list[int], int], list[Variation]],
    limit: float,
    min_notes: int,
    should_stop: Callable[[], bool] | None,
) -> None:
    """Re-sample the variations whose copied fraction is above `limit`, at most
    `COPY_RESAMPLES` times, keeping the least-copied try; then record in each `novelty` the
    limit, the re-samples it took and whether it is still over the limit.

    A try with fewer new notes than `min_notes` (and than the kept one) is never kept: a
    near-empty piece has no n-grams, so it would always look new.
    """
    from cadenza.novelty import COPY_RESAMPLES

    def over(v: Variation) -> bool:
        return v.novelty is not None and v.novelty["copied_fraction"] > limit

    resampled = [0] * len(out)
    for k in range(1, COPY_RESAMPLES + 1):
        rows = [v.index for v in out if over(v)]
        if not rows or (should_stop is not None and should_stop()):
            break
        for candidate in redraw(rows, k):
            i = candidate.index
            kept = out[i]
            resampled[i] += 1
            assert candidate.novelty is not None and kept.novelty is not None
            enough = candidate.new_notes >= min(min_notes, kept.new_notes)
            if enough and candidate.novelty["copied_fraction"] < kept.novelty["copied_fraction"]:
                out[i] = candidate
            else:
                kept.attempts = candidate.attempts
    for v in out:
        if v.novelty is not None:
            v.novelty.update(
                max_copied_fraction=limit, resampled=resampled[v.index], over_limit=over(v)
            )


__all__ = ["Variation", "decode_variation", "resample_copies", "sample_variations"]
