"""Generate variations and turn each into measured MIDI: the music part of a `sample` job.

The job (`cadenza.jobs.handlers.sample`) adds loading, cancellation, storage and rendering
around this; `bench/quality.py` calls it directly, so the benchmark measures exactly what a
user gets. The near-empty guard lives here too: a variation whose *new* music has fewer than
`min_notes` notes is sampled again (a fresh seed per try, at most `resample_empty` tries), and
each variation reports how many attempts it took.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel
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
    steer: Callable[[int], Steer | None] | None = None,
) -> list[Variation]:
    """`n` variations of `prompt`, decoded and measured; near-empty ones re-sampled (bounded).

    `steer(rows)` makes a fresh attribute-control steer for a generation of `rows` rows.

    `options` are a request's `SamplingOptions` fields. A re-sampling try draws only the rows
    still short of `min_notes`, with seed + try, so a seeded request stays reproducible.
    `on_token` returning True ends a generation early (cancel or a length limit reached);
    once `should_stop()` is true (cancel) no re-sampling try starts.
    """
    from cadenza.evaluate import compare, midi_metrics
    from cadenza.sample import SamplingParams, generate
    from cadenza.tokenize import special_ids

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
        return Variation(i, list(new), ids, midi, notes, new_notes, seconds, metrics, attempt)

    def steering(rows: int) -> Steer | None:
        return steer(rows) if steer is not None else None

    rows = generate(
        model, [prompt], params, n=n, on_token=on_token, device=device, steer=steering(n)
    )
    out = [make(i, new, 1) for i, new in enumerate(rows)]
    seed = params.seed
    for attempt in range(2, resample_empty + 2):
        short = [v.index for v in out if v.new_notes < min_notes]
        if not short or (should_stop is not None and should_stop()):
            break
        retry = SamplingParams(
            **{**dict(options), "seed": None if seed is None else seed + attempt - 1},
            eos_id=params.eos_id,
        )
        again = generate(
            model,
            [prompt],
            retry,
            n=len(short),
            on_token=on_token,
            device=device,
            steer=steering(len(short)),
        )
        for i, new in zip(short, again, strict=True):
            candidate = make(i, new, attempt)
            if candidate.new_notes > out[i].new_notes:
                out[i] = candidate
            else:
                out[i].attempts = attempt
    return out


__all__ = ["Variation", "decode_variation", "sample_variations"]
