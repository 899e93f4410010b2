"""`tokenize` jobs: a dataset's MIDI files → a corpus (tokenizer + token arrays per split)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.db.models import Corpus, File, new_id
from cadenza.jobs.context import JobCancelled, JobContext, Outcome, UserError
from cadenza.storage import job_key
from cadenza.tokenize.params import TokenizeParams


def run(ctx: JobContext) -> Outcome:
    from cadenza.midi.clean import CleanOptions
    from cadenza.tokenize import (
        CorpusCancelled,
        CorpusEmpty,
        build_corpus,
        tokenizer_hash,
        tokenizer_to_bytes,
        vocab_size,
    )

    p = TokenizeParams.model_validate(ctx.params)
    with ctx.session() as s:
        rows = list(
            s.scalars(
                select(File)
                .where(File.dataset_id == p.dataset_id, File.kind == "midi")
                .order_by(File.created_at, File.id)
            )
        )
        files = [(r.id, r.object_key) for r in rows]
    if not files:
        raise UserError("the dataset has no MIDI files")

    ctx.progress(0.0, f"reading {len(files)} MIDI files", force=True)
    data = [(fid, ctx.store.get(key)) for fid, key in files]
    clean = CleanOptions(**p.clean.model_dump())

    def progress(fraction: float, message: str) -> None:
        ctx.progress(0.05 + 0.85 * fraction, message)

    try:
        build = build_corpus(
            data,
            p.tokenizer_spec,
            split=p.split,
            seed=p.seed,
            augment=p.augment,
            clean=clean,
            progress=progress,
            should_stop=ctx.cancelled,
        )
    except CorpusCancelled as exc:
        raise JobCancelled() from exc
    except CorpusEmpty as exc:
        raise UserError(f"no usable file in the dataset: {exc}") from exc
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if ctx.cancelled():
        raise JobCancelled()

    ctx.progress(0.92, "writing the corpus", force=True)
    corpus_id = new_id()
    prefix = job_key(ctx.job_id, "corpus")
    tok_key = f"{prefix}/tokenizer.json"
    ctx.store.put(tok_key, tokenizer_to_bytes(build.tokenizer))
    # One file serves the trainer and the nanoGPT-style export (train_data/val_data/test_data).
    ctx.store.put(f"{prefix}/export.npz", build.to_npz_bytes())
    stats: dict[str, Any] = build.stats.to_dict()
    stats["file_splits"] = build.file_splits
    # The training data's music statistics, which every sample is later compared against.
    ctx.progress(0.95, "measuring the corpus (pitch, scale, polyphony, groove)", force=True)
    from cadenza.evaluate import corpus_metrics

    by_id = dict(data)
    stats["metrics"] = corpus_metrics(by_id[f] for f in build.file_splits.get("train", []))
    stats["token_names"] = token_names(build.tokenizer)
    tok_hash = tokenizer_hash(build.tokenizer)
    vocab = vocab_size(build.tokenizer)

    def finalize(s: Session) -> dict[str, Any]:
        s.add(
            Corpus(
                id=corpus_id,
                owner_id=ctx.owner_id,
                dataset_id=p.dataset_id,
                job_id=ctx.job_id,
                params=p.model_dump(mode="json", exclude={"dataset_id"}),
                tokenizer_key=tok_key,
                tokenizer_hash=tok_hash,
                vocab_size=vocab,
                object_prefix=prefix,
                stats=stats,
            )
        )
        return {"corpus_id": corpus_id}

    return Outcome(finalize, message=f"{sum(v.size for v in build.splits.values())} tokens")


def token_names(tokenizer: Any) -> list[str]:
    """The names of a plain MidiTok vocabulary (no BPE), in id order, for `force_tokens`.

    Empty for our own encodings, BPE-trained and multi-vocabulary tokenizers, whose ids do not
    map one-to-one onto named MidiTok tokens.
    """
    vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", None)
    if not isinstance(vocab, dict) or getattr(tokenizer, "subword", None) is not None:
        return []
    return [name for name, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
