"""`sample` jobs: generate variations from a checkpoint, decode them to MIDI, store them.

`run` reads like the job: load the rows, load the model, build the prompt, generate (watching
for cancel and for the music-length limits), then decode, render, measure and store each
variation; the `Sample` rows become visible with the job's final state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from cadenza.db.models import Checkpoint, Corpus, File, Model, Sample
from cadenza.jobs.context import JobContext, Outcome, UserError
from cadenza.jobs.state import JobState
from cadenza.sample.params import SampleParams, SamplingOptions
from cadenza.storage import job_key, sha256_of

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel
    from cadenza.novelty import NoveltyIndex
    from cadenza.sample.variations import Variation
    from cadenza.tokenize.base import Tokenizer


@dataclass
class _Primer:
    """A MIDI primer: a dataset file or one of the owner's samples, and where its bytes are."""

    label: str  # "primer file ID" or "primer sample ID", for messages
    key: str


@dataclass
class _Rows:
    """The stored rows a sample job reads, detached from their session."""

    model: Model
    checkpoint: Checkpoint
    corpus: Corpus
    primer: _Primer | None


@dataclass
class _Generation:
    """What `generate` saw and made: the prompt, each row's new tokens, and whether it stopped."""

    prompt: list[int]
    variations: list[Variation] = field(default_factory=list)
    cancelled: bool = False


def run(ctx: JobContext) -> Outcome:
    from cadenza.tokenize import tokenizer_from_bytes

    p = SampleParams.model_validate(ctx.params)
    rows = _load_rows(ctx, p)
    ctx.progress(0.0, "loading model", force=True)
    tokenizer = tokenizer_from_bytes(ctx.store.get(rows.corpus.tokenizer_key))
    model, device = _load_model(ctx, rows)
    if (
        tokenizer.input_kind == "audio"
    ):  # recordings in, WAV out: cadenza.jobs.handlers.sample_audio
        from cadenza.jobs.handlers import sample_audio
        from cadenza.tokenize.audio_vq import AudioVQTokenizer

        assert isinstance(tokenizer, AudioVQTokenizer)
        return sample_audio.run(ctx, p, rows, tokenizer, model, device)
    corpus_stats = rows.corpus.stats.get("metrics") or {}
    index = _novelty_index(ctx, rows.corpus, tokenizer)
    if p.mode != "continue":  # infill / accompany: cadenza.jobs.handlers.sample_edit
        from cadenza.jobs.handlers import sample_edit

        source, edited, cancelled = sample_edit.edit(
            ctx, p, model, device, tokenizer, corpus_stats, rows.model.train_config, index
        )
        gen = _Generation(source, edited, cancelled)
    else:
        prompt = _prompt(ctx, p, tokenizer, rows.primer)
        steer, prompt = _steering(p, tokenizer, prompt, device)
        gen = _generate(ctx, p, model, device, tokenizer, prompt, corpus_stats, index, steer)
    stored = [_store_variation(ctx, gen, v) for v in gen.variations]
    ctx.progress(1.0, f"{len(stored)} variation(s) written", force=True)

    rows_out = [
        {
            "index": o["index"],
            "midi_key": o["key"],
            "num_tokens": o["num_tokens"],
            "num_notes": o["num_notes"],
            "duration_s": o["duration_s"],
            "meta": {
                "primer_tokens": len(gen.prompt),
                "new_tokens": o["num_new_tokens"],
                "new_notes": o["new_notes"],
                "attempts": o["attempts"],
                "invalid_tokens": o["invalid_tokens"],
                "metrics": o["metrics"],
                "sha256": o["sha256"],
                "render_errors": o["render_errors"],
                "novelty": o["novelty"],
            },
        }
        for o in stored
    ]
    # an edit's parent is its source
    parent_id = p.primer_sample_id or p.source_sample_id
    return samples_outcome(ctx, p, rows.model.id, parent_id, rows_out, gen.cancelled)


def samples_outcome(
    ctx: JobContext,
    p: SampleParams,
    model_id: str,
    parent_id: str | None,
    rows: list[dict[str, Any]],
    cancelled: bool,
) -> Outcome:
    """The job's end for MIDI and audio samples alike: one `Sample` row per stored variation
    (`rows`: its own columns), written with the job's finish, linked to `parent_id` if that
    sample still exists. Deleting a sample waits for the jobs it primes, so the parent is
    there; were it gone all the same, the children are kept without the link, as after a
    delete."""

    def finalize(s: Session) -> dict[str, Any]:
        parent = parent_id if parent_id and s.get(Sample, parent_id) else None
        ids: list[str] = []
        for row in rows:
            sample = Sample(
                owner_id=ctx.owner_id,
                model_id=model_id,
                job_id=ctx.job_id,
                params=p.model_dump(mode="json", exclude={"model_id"}),
                partial=cancelled,
                parent_sample_id=parent,
                **row,
            )
            s.add(sample)
            s.flush()
            ids.append(sample.id)
        return {"sample_ids": ids, "sample_id": ids[0] if ids else None}

    return Outcome(
        finalize,
        state=JobState.CANCELLED if cancelled else JobState.SUCCEEDED,
        message="cancelled; partial samples kept" if cancelled else f"{len(rows)} sample(s)",
    )


def _load_rows(ctx: JobContext, p: SampleParams) -> _Rows:
    with ctx.session() as s:
        model = s.get(Model, p.model_id)
        ckpt = s.get(Checkpoint, p.checkpoint_id)
        if model is None or ckpt is None:
            raise UserError("the model or its checkpoint no longer exists")
        corpus = s.get(Corpus, model.corpus_id)
        assert corpus is not None
        primer = _load_primer(s, p, ctx.owner_id)
        s.expunge_all()
    return _Rows(model, ckpt, corpus, primer)


def _load_primer(s: Session, p: SampleParams, owner_id: str) -> _Primer | None:
    """The MIDI primer the request names, a file or a sample (the owner's: the API checked, and
    it may have been deleted since)."""
    if p.primer_file_id:
        file = s.get(File, p.primer_file_id)
        if file is None or file.owner_id != owner_id:
            raise UserError(f"primer file {p.primer_file_id} no longer exists")
        return _Primer(f"primer file {file.id}", file.object_key)
    if p.primer_sample_id:
        sample = s.get(Sample, p.primer_sample_id)
        if sample is None or sample.owner_id != owner_id:
            raise UserError(f"primer sample {p.primer_sample_id} no longer exists")
        return _Primer(f"primer sample {sample.id}", sample.midi_key)
    return None


def _load_model(ctx: JobContext, rows: _Rows) -> tuple[CadenzaModel, str]:
    import torch

    from cadenza.models.checkpoint import load_for_inference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = _adapter_base(ctx, rows.model)
    module, spec = load_for_inference(ctx.store.get(rows.checkpoint.object_key), device, base=base)
    if spec.get("tokenizer_hash") and spec["tokenizer_hash"] != rows.corpus.tokenizer_hash:
        raise UserError("the checkpoint's tokenizer does not match its corpus; retrain the model")
    return module, device


def _adapter_base(ctx: JobContext, model: Model) -> bytes | None:
    """An adapter model's base checkpoint (its adapter is merged into it), else None."""
    if model.adapter is None:
        return None
    with ctx.session() as s:
        base = s.get(Checkpoint, model.init_checkpoint_id) if model.init_checkpoint_id else None
        key = base.object_key if base is not None else None
    if key is None:
        raise UserError(f"the base model of adapter {model.id} no longer exists")
    return ctx.store.get(key)


def _prompt(
    ctx: JobContext, p: SampleParams, tokenizer: Tokenizer, primer: _Primer | None
) -> list[int]:
    """BOS, then the primer's tokens (a MIDI range or given ids), then any forced tokens.

    A MIDI primer (a file, or a sample of any model) is encoded with this model's tokenizer.
    """
    from cadenza.tokenize import encode_primer, special_ids

    bos = special_ids(tokenizer).get("bos")
    prompt: list[int]
    if primer is not None:
        try:
            prompt = encode_primer(
                tokenizer,
                ctx.store.get(primer.key),
                bars=p.primer_bars,
                seconds=p.primer_seconds,
                start_bar=p.primer_start_bar,
            )
        except ValueError as exc:
            raise UserError(f"{primer.label}: {exc}") from exc
        if not prompt:
            raise UserError(f"{primer.label} has no notes in the requested range")
        prompt = [bos, *prompt] if bos is not None else prompt
    elif p.primer_tokens:
        prompt = list(p.primer_tokens)
    else:
        prompt = [bos] if bos is not None else [0]
    if p.force_tokens:
        vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", {})
        try:
            prompt += [int(vocab[name]) for name in p.force_tokens]
        except (KeyError, TypeError) as exc:
            raise UserError(f"force_tokens: {exc} is not in this model's vocabulary") from exc
    return prompt


def _novelty_index(ctx: JobContext, corpus: Corpus, tokenizer: Tokenizer) -> NoveltyIndex:
    """The corpus's copy-check index; a corpus built before the check gets it now, once
    (written through the job's fenced store, under the corpus prefix: see `cadenza.novelty`)."""
    from cadenza.novelty import index_key, load_or_build

    if not ctx.store.exists(index_key(corpus.object_prefix)):
        ctx.progress(0.0, "indexing the training notes for the copy check (once)", force=True)
    return load_or_build(ctx.store, corpus.object_prefix, tokenizer)


def _generate(
    ctx: JobContext,
    p: SampleParams,
    model: CadenzaModel,
    device: str,
    tokenizer: Tokenizer,
    prompt: list[int],
    corpus_stats: dict[str, Any],
    novelty_index: NoveltyIndex | None = None,
    steer: Callable[[int], Any] | None = None,
) -> _Generation:
    """Sample `p.n` rows in one batch; stops early on cancel or when every row is long enough.

    Rows whose new music has fewer than `p.min_notes` notes are sampled again, at most
    `p.resample_empty` times (see `cadenza.sample.variations`).
    """
    from cadenza.midi.load import load_score
    from cadenza.sample.variations import sample_variations
    from cadenza.tokenize import decode_to_midi
    from cadenza.tokenize.primer import bar_end_tick, seconds_to_tick

    options = {name: getattr(p, name) for name in SamplingOptions.model_fields}
    gen = _Generation(prompt)
    total = p.max_new_tokens

    counted = None if p.max_seconds else p.max_bars  # bars alone: count tokens
    bars = _BarCounter(tokenizer, prompt if p.include_primer else [], counted)

    def long_enough(new: list[int]) -> bool:
        """Whether a row's music already reaches max_bars / max_seconds (by decoding it)."""
        ids = (prompt + new) if p.include_primer else new
        score = load_score(decode_to_midi(tokenizer, ids, stop_at_eos=p.stop_at_eos))
        if not any(len(t.notes) for t in score.tracks):
            return False
        end = int(score.end())
        return (p.max_bars is not None and end >= bar_end_tick(score, p.max_bars)) or (
            p.max_seconds is not None and end >= seconds_to_tick(score, p.max_seconds)
        )

    watch = _LengthWatch(bars, long_enough)

    def on_token(step: int, rows: list[list[int]]) -> bool:
        if ctx.cancelled():
            gen.cancelled = True
            return True
        if step % 16 == 0 or step == total:
            ctx.progress(step / total * 0.9, f"{step}/{total} tokens", tokens=step)
        # Music-length limits: bar tokens counted as they come where the tokenizer has them,
        # else rows not yet long enough decoded every 32 tokens; the outputs are cut later.
        if not (p.max_bars or p.max_seconds):
            return False
        return watch.all_done(step, rows)

    ctx.progress(0.0, f"sampling {p.n} variation(s) from a {len(prompt)}-token primer", force=True)
    gen.variations = sample_variations(
        model,
        tokenizer,
        prompt,
        options,
        n=p.n,
        corpus_stats=corpus_stats,
        include_primer=p.include_primer,
        max_bars=p.max_bars,
        max_seconds=p.max_seconds,
        min_notes=p.min_notes,
        resample_empty=p.resample_empty,
        on_token=on_token,
        device=device,
        should_stop=lambda: gen.cancelled,
        novelty_index=novelty_index,
        max_copied_fraction=p.max_copied_fraction,
        steer=steer,
    )
    return gen


def _steering(
    p: SampleParams, tokenizer: Tokenizer, prompt: list[int], device: str
) -> tuple[Callable[[int], Any] | None, list[int]]:
    """A maker of attribute-control steers for the request (None for a model without
    controls), and the prompt with a primer's per-piece controls and tags set as requested."""
    from cadenza.sample.steer import build_steer

    if getattr(tokenizer, "controls", None) is None:
        return None, prompt

    def make(rows: int) -> Any:
        return build_steer(
            tokenizer, prompt, controls=p.controls, tags=p.tags, rows=rows, device=device
        )

    try:
        _, prompt_out = make(1)
    except ValueError as exc:  # the API checked against the same capabilities; say so anyway
        raise UserError(str(exc)) from exc

    return lambda rows: make(rows)[0], prompt_out


def _store_variation(ctx: JobContext, gen: _Generation, v: Variation) -> dict[str, Any]:
    """Store and render one decoded, measured variation."""
    from cadenza.render import render_all

    key = job_key(ctx.job_id, "samples", f"{v.index:03d}.mid")
    ctx.store.put(key, v.midi)
    sha = sha256_of([v.midi])
    n = max(len(gen.variations), 1)
    ctx.progress(0.9 + 0.1 * v.index / n, f"rendering variation {v.index + 1}", force=True)
    render_errors = render_all(ctx.store, v.midi, sha)
    return {
        "index": v.index,
        "key": key,
        "num_tokens": len(v.ids),
        "num_new_tokens": len(v.new_ids),
        "num_notes": v.notes,
        "new_notes": v.new_notes,
        "attempts": v.attempts,
        "invalid_tokens": v.invalid_tokens,
        "duration_s": v.duration_s,
        "metrics": v.metrics,
        "sha256": sha,
        "render_errors": render_errors,
        "novelty": v.novelty,
    }


class _LengthWatch:
    """Which rows of a generation already reach the music-length limit (a row only grows).

    The same `on_token` serves the first generation and each re-sample of short rows, which
    starts again at step 1 with other rows: a step that does not grow means a new generation,
    and the rows' state starts afresh (else a re-sample would stop at once).
    """

    def __init__(self, bars: _BarCounter, long_enough: Callable[[list[int]], bool]) -> None:
        self.bars = bars
        self.long_enough = long_enough
        self.done: set[int] = set()
        self.last_step = 0

    def all_done(self, step: int, rows: list[list[int]]) -> bool:
        if step <= self.last_step:
            self.done.clear()
            self.bars.restart()
        self.last_step = step
        for i, new in enumerate(rows):
            if i in self.done:
                continue
            exact = self.bars.exact
            if (exact and self.bars.reached(i, new)) or (
                not exact and step % 32 == 0 and self.long_enough(new)
            ):
                self.done.add(i)
        return all(i in self.done for i in range(len(rows)))


class _BarCounter:
    """Bars of each generated row, counted incrementally from the tokenizer's bar tokens.

    Exact only for `max_bars` alone on a plain MidiTok vocabulary with `Bar_*` tokens (each
    opens a bar, so bar N is complete once bar N+1 opens); otherwise the caller decodes.
    """

    def __init__(self, tokenizer: Tokenizer, primer: list[int], max_bars: int | None) -> None:
        from cadenza.jobs.handlers.tokenize import token_names

        names = token_names(tokenizer) if max_bars is not None else []
        self.ids = {i for i, name in enumerate(names) if name.startswith("Bar_")}
        self.max_bars = max_bars or 0
        self.exact = bool(self.ids)
        self.base = sum(1 for t in primer if t in self.ids)
        self.counts: dict[int, int] = {}
        self.seen: dict[int, int] = {}

    def restart(self) -> None:
        """A new generation began (a re-sample of short rows): its rows count from zero."""
        self.counts.clear()
        self.seen.clear()

    def reached(self, row: int, new: list[int]) -> bool:
        start = self.seen.get(row, 0)
        count = self.counts.get(row, self.base) + sum(1 for t in new[start:] if t in self.ids)
        self.counts[row], self.seen[row] = count, len(new)
        return count > self.max_bars
