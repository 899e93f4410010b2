"""`sample` jobs: generate variations from a checkpoint, decode them to MIDI, store them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy.orm import Session

from cadenza.db.models import Checkpoint, Corpus, File, Model, Sample
from cadenza.jobs.context import JobContext, Outcome, UserError
from cadenza.jobs.state import JobState
from cadenza.sample.params import SampleParams
from cadenza.storage import job_key, sha256_of

if TYPE_CHECKING:
    from cadenza.models.base import CadenzaModel


def run(ctx: JobContext) -> Outcome:
    import torch

    from cadenza.evaluate import compare, midi_metrics
    from cadenza.midi.load import load_score
    from cadenza.models.checkpoint import load_for_inference
    from cadenza.render import render_all
    from cadenza.sample import SamplingOptions, SamplingParams, generate
    from cadenza.tokenize import decode_to_midi, encode_primer, special_ids, tokenizer_from_bytes
    from cadenza.tokenize.primer import bar_end_tick, crop_score, seconds_to_tick

    p = SampleParams.model_validate(ctx.params)
    with ctx.session() as s:
        model_row = s.get(Model, p.model_id)
        ckpt = s.get(Checkpoint, p.checkpoint_id)
        if model_row is None or ckpt is None:
            raise UserError("the model or its checkpoint no longer exists")
        corpus = s.get(Corpus, model_row.corpus_id)
        assert corpus is not None
        primer = s.get(File, p.primer_file_id) if p.primer_file_id else None
        s.expunge_all()

    ctx.progress(0.0, "loading model", force=True)
    tokenizer = tokenizer_from_bytes(ctx.store.get(corpus.tokenizer_key))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    module, spec = load_for_inference(ctx.store.get(ckpt.object_key), device)
    model = cast("CadenzaModel", module)
    if spec.get("tokenizer_hash") and spec["tokenizer_hash"] != corpus.tokenizer_hash:
        raise UserError("the checkpoint's tokenizer does not match its corpus; retrain the model")

    specials = special_ids(tokenizer)
    prompt: list[int]
    if primer is not None:
        try:
            prompt = encode_primer(
                tokenizer,
                ctx.store.get(primer.object_key),
                bars=p.primer_bars,
                seconds=p.primer_seconds,
                start_bar=p.primer_start_bar,
            )
        except ValueError as exc:
            raise UserError(f"primer {primer.id}: {exc}") from exc
        if not prompt:
            raise UserError(f"primer {primer.id} has no notes in the requested range")
        prompt = [specials["bos"], *prompt] if specials.get("bos") is not None else prompt
    elif p.primer_tokens:
        prompt = list(p.primer_tokens)
    else:
        prompt = [specials["bos"]] if specials.get("bos") is not None else [0]
    if p.force_tokens:
        vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", {})
        try:
            prompt += [int(vocab[name]) for name in p.force_tokens]
        except (KeyError, TypeError) as exc:
            raise UserError(f"force_tokens: {exc} is not in this model's vocabulary") from exc

    options = SamplingOptions.model_fields
    params = SamplingParams(
        **{name: getattr(p, name) for name in options}, eos_id=specials.get("eos")
    )
    total = params.max_new_tokens
    cancelled = False

    max_bars, max_seconds = p.max_bars, p.max_seconds
    include = p.include_primer

    def long_enough(new: list[int]) -> bool:
        """Whether a row's music already reaches max_bars / max_seconds."""
        score = load_score(decode_to_midi(tokenizer, (prompt + new) if include else new))
        if not any(len(t.notes) for t in score.tracks):
            return False
        end = int(score.end())
        return (max_bars is not None and end >= bar_end_tick(score, max_bars)) or (
            max_seconds is not None and end >= seconds_to_tick(score, max_seconds)
        )

    def on_token(step: int, rows: list[list[int]]) -> bool:
        nonlocal cancelled
        if ctx.cancelled():
            cancelled = True
            return True
        if step % 16 == 0 or step == total:
            ctx.progress(step / total * 0.9, f"{step}/{total} tokens", tokens=step)
        # Music-length limits: checked every 32 tokens by decoding; the outputs are cut below.
        return bool(
            (max_bars or max_seconds) and step % 32 == 0 and all(long_enough(r) for r in rows)
        )

    ctx.progress(0.0, f"sampling {p.n} variation(s) from a {len(prompt)}-token primer", force=True)
    outputs = generate(model, [prompt], params, n=p.n, on_token=on_token, device=device)

    corpus_stats = corpus.stats.get("metrics") or {}
    stored: list[dict[str, Any]] = []
    for i, new in enumerate(outputs):
        ids = (prompt + new) if include else new
        midi = decode_to_midi(tokenizer, ids)
        score = load_score(midi)
        if max_bars or max_seconds:
            score = crop_score(score, bars=max_bars, seconds=max_seconds)
            midi = bytes(score.dumps_midi())
        notes = sum(len(t.notes) for t in score.tracks)
        key = job_key(ctx.job_id, "samples", f"{i:03d}.mid")
        ctx.store.put(key, midi)
        sha = sha256_of([midi])
        ctx.progress(0.9 + 0.1 * i / len(outputs), f"rendering variation {i + 1}", force=True)
        render_errors = render_all(ctx.store, midi, sha)
        metrics = midi_metrics(midi)
        stored.append(
            {
                "index": i,
                "key": key,
                "num_tokens": len(ids),
                "num_new_tokens": len(new),
                "num_notes": notes,
                "duration_s": float(score.to("second").end()) if notes else 0.0,  # type: ignore[attr-defined]
                "metrics": compare(metrics, corpus_stats) if corpus_stats else metrics,
                "sha256": sha,
                "render_errors": render_errors,
            }
        )
    ctx.progress(1.0, f"{len(stored)} variation(s) written", force=True)

    def finalize(s: Session) -> dict[str, Any]:
        ids: list[str] = []
        for o in stored:
            sample = Sample(
                owner_id=ctx.owner_id,
                model_id=model_row.id,
                job_id=ctx.job_id,
                index=o["index"],
                params=p.model_dump(mode="json", exclude={"model_id"}),
                midi_key=o["key"],
                num_tokens=o["num_tokens"],
                num_notes=o["num_notes"],
                duration_s=o["duration_s"],
                partial=cancelled,
                meta={
                    "primer_tokens": len(prompt),
                    "new_tokens": o["num_new_tokens"],
                    "metrics": o["metrics"],
                    "sha256": o["sha256"],
                    "render_errors": o["render_errors"],
                },
            )
            s.add(sample)
            s.flush()
            ids.append(sample.id)
        return {"sample_ids": ids, "sample_id": ids[0] if ids else None}

    return Outcome(
        finalize,
        state=JobState.CANCELLED if cancelled else JobState.SUCCEEDED,
        message="cancelled; partial samples kept" if cancelled else f"{len(stored)} sample(s)",
    )
