"""`tokenize` jobs: a dataset's MIDI files → a corpus (tokenizer + token arrays per split).

Streaming: file bytes are read from the object store one at a time as the tokenizer processes
are ready for them, per-file symbols are spooled to a temporary file, the arrays are encoded
into temporary files and uploaded from disk (`cadenza.tokenize.corpus`).

Sharded: a dataset of more than one shard's worth of files (`shard_count`, the request's
`shards`) is tokenized by `tokenize_shard` child jobs, one per contiguous slice of the files,
that any `cpu` worker runs (`cadenza.jobs.fanout`: this job runs queued ones itself while it
waits). Each writes one spool under this job's `shards/` prefix; this job merges them into the
same corpus one process builds, then deletes the prefix. A failed or cancelled shard fails
(cancels) this job after every shard ended, with the prefix deleted: nothing half-written.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, overload

from sqlalchemy import select
from sqlalchemy.orm import Session

from cadenza.db.models import Corpus, Dataset, File, Model, new_id
from cadenza.jobs.context import JobCancelled, JobContext, Outcome, UserError
from cadenza.jobs.transient import JobInterrupted, is_transient
from cadenza.storage import ObjectStore, job_key
from cadenza.tokenize.params import TokenizeParams, TokenizeShardParams, shard_count

#: Share of the job's progress bar the corpus build takes (reading, tokenizing, encoding).
_P_BUILD = 0.85


class _StoredFiles(Sequence[bytes]):
    """MIDI bytes by position, read from the store only when indexed (for corpus_metrics)."""

    def __init__(self, store: ObjectStore, keys: list[str]) -> None:
        self.store, self.keys = store, keys

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return _StoredFiles(self.store, self.keys[i])
        return self.store.get(self.keys[i])


def _download(store: ObjectStore, key: str, dest: Path) -> Path:
    with open(dest, "wb") as f:
        for chunk in store.iter_chunks(key):
            f.write(chunk)
    return dest


def build_options(p: TokenizeParams) -> dict[str, Any]:
    from cadenza.midi.clean import CleanOptions

    return {"augment": p.augment, "clean": CleanOptions(**p.clean.model_dump())}


def run(ctx: JobContext) -> Outcome:
    from cadenza.tokenize import (
        CorpusCancelled,
        CorpusEmpty,
        build_corpus,
        tokenizer_hash,
        tokenizer_to_bytes,
        vocab_size,
    )
    from cadenza.tokenize.spec import AUDIO_TOKENIZERS

    p = TokenizeParams.model_validate(ctx.params)
    kind = "audio" if p.tokenizer_spec.name in AUDIO_TOKENIZERS else "midi"
    with ctx.session() as s:
        rows = list(
            s.scalars(
                select(File)
                .where(File.dataset_id == p.dataset_id, File.kind == kind)
                .order_by(File.created_at, File.id)
            )
        )
        files = [(r.id, r.object_key) for r in rows]
        # a file's style tags with its dataset's, read once: the corpus learns this snapshot
        ds = s.get(Dataset, p.dataset_id)
        ds_tags = list(ds.tags or []) if ds is not None else []
        tags = {r.id: sorted({*ds_tags, *(r.tags or [])}) for r in rows}
    if not files:
        raise UserError(f"the dataset has no {'audio' if kind == 'audio' else 'MIDI'} files")
    keys = dict(files)
    shards = shard_count(len(files), p.shards)
    base_tokenizer = _base_tokenizer(ctx, p)

    what = "recordings" if kind == "audio" else "MIDI files"
    ctx.progress(0.0, f"tokenizing {len(files)} {what} in {shards} part(s)", force=True)

    def progress(fraction: float, message: str) -> None:
        ctx.progress(0.05 + _P_BUILD * fraction, message)

    try:
        if shards == 1:
            build = build_corpus(
                [(fid, partial(ctx.store.get, key)) for fid, key in files],
                p.tokenizer_spec,
                split=p.split,
                seed=p.seed,
                progress=progress,
                should_stop=ctx.cancelled,
                tokenizer=base_tokenizer,
                tags=tags,
                **build_options(p),
            )
        else:
            build = _sharded(ctx, p, files, shards, progress, tags, base_tokenizer)
    except CorpusCancelled as exc:
        raise JobCancelled() from exc
    except CorpusEmpty as exc:
        raise UserError(f"no usable file in the dataset: {exc}") from exc
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    try:
        if ctx.cancelled():
            raise JobCancelled()
        ctx.progress(0.92, "writing the corpus", force=True)
        corpus_id = new_id()
        prefix = job_key(ctx.job_id, "corpus")
        tok_key = f"{prefix}/tokenizer.json"
        ctx.store.put(tok_key, tokenizer_to_bytes(build.tokenizer))
        # One file serves the trainer and the nanoGPT-style export (train_data/val_data/…),
        # written to disk and uploaded from there: never the whole corpus in memory.
        with tempfile.TemporaryDirectory(prefix="cadenza-npz-") as tmp:
            npz = build.save_npz(Path(tmp) / "export.npz")
            ctx.store.put(f"{prefix}/export.npz", npz)
        stats: dict[str, Any] = build.stats.to_dict()
        stats["file_splits"] = build.file_splits
        stats["shards"] = shards
        if kind == "midi":  # notes to index and measure; a recording has none
            _note_stats(ctx, stats, prefix, build, keys)
        else:
            stats["input_kind"] = "audio"
        stats["token_names"] = token_names(build.tokenizer)
        stats["capabilities"] = build.tokenizer.capabilities()
        tok_hash = tokenizer_hash(build.tokenizer)
        vocab = vocab_size(build.tokenizer)
        tokens = build.tokens()
    finally:
        build.close()

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
                base_model_id=p.base_model_id,
            )
        )
        return {"corpus_id": corpus_id}

    return Outcome(finalize, message=f"{tokens} tokens")


def _note_stats(
    ctx: JobContext, stats: dict[str, Any], prefix: str, build: Any, keys: dict[str, str]
) -> None:
    """The copy check's index of the training notes and the training MIDI's statistics."""
    # The copy check's index of the training notes (cadenza.novelty), beside the arrays.
    ctx.progress(0.93, "indexing the training notes for the copy check", force=True)
    from cadenza.novelty import build_and_store

    stats["novelty_index"] = build_and_store(
        ctx.store, prefix, build.tokenizer, build.splits["train"]
    )
    # The training data's music statistics, which every sample is later compared against.
    ctx.progress(0.95, "measuring the corpus (pitch, scale, polyphony, groove)", force=True)
    from cadenza.evaluate import corpus_metrics

    train_keys = [keys[f] for f in build.file_splits.get("train", [])]
    stats["metrics"] = corpus_metrics(_StoredFiles(ctx.store, train_keys))


def _base_tokenizer(ctx: JobContext, p: TokenizeParams) -> Any:
    """The saved tokenizer of `p.base_model_id`'s corpus (None without a base model).

    Loaded from its bytes, BPE vocabulary and all, so the new corpus's ids are the base
    model's; the corpus stores its own copy, so it keeps working if the base goes.
    """
    if p.base_model_id is None:
        return None
    from cadenza.tokenize import tokenizer_from_bytes

    with ctx.session() as s:
        base = s.get(Model, p.base_model_id)
        if base is not None and base.owner_id != ctx.owner_id and base.visibility != "public":
            base = None  # unpublished since the request: as if it were gone
        corpus = s.get(Corpus, base.corpus_id) if base is not None else None
        key = corpus.tokenizer_key if corpus is not None else None
    if key is None:
        raise UserError(f"base model {p.base_model_id} no longer exists")
    return tokenizer_from_bytes(ctx.store.get(key))


def _sharded(
    ctx: JobContext,
    p: TokenizeParams,
    files: list[tuple[str, str]],
    shards: int,
    progress: Callable[[float, str], None],
    tags: dict[str, list[str]],
    base_tokenizer: Any = None,
) -> Any:
    """Fan the files out over `shards` child jobs, wait for them, merge their spools."""
    from cadenza.jobs.fanout import ChildFailed, run_children, spawn_children
    from cadenza.tokenize.corpus import merge_spools, scan_spool
    from cadenza.tokenize.splits import assign_splits

    prefix = job_key(ctx.job_id, "shards")
    assignment = assign_splits([f for f, _ in files], p.split, p.seed)
    children: list[TokenizeShardParams] = []
    for k in range(shards):
        lo, hi = k * len(files) // shards, (k + 1) * len(files) // shards
        manifest_key = f"{prefix}/{k}.manifest.json"
        if not ctx.store.exists(manifest_key):  # an earlier attempt's shards may be reading it
            part = [[i, *files[i], assignment[files[i][0]] == "train"] for i in range(lo, hi)]
            ctx.store.put(manifest_key, json.dumps(part).encode())
        children.append(
            TokenizeShardParams(
                parent_job_id=ctx.job_id,
                shard=k,
                shards=shards,
                manifest_key=manifest_key,
                out_key=f"{prefix}/{k}.spool",
                tokenize=p,
            )
        )
    try:
        ids = spawn_children(ctx, "tokenize_shard", children)
        run_children(
            ctx,
            ids,
            lambda done, n: progress(0.8 * done / n, f"tokenized {done}/{n} parts"),
        )
        with tempfile.TemporaryDirectory(prefix="cadenza-shards-") as tmp:
            entries = []
            for c in children:
                spool = _download(ctx.store, c.out_key, Path(tmp) / f"{c.shard}.spool")
                entries += scan_spool(spool)
            build = merge_spools(
                entries,
                p.tokenizer_spec,
                files_total=len(files),
                split=p.split,
                seed=p.seed,
                workers=shards,
                progress=progress,
                should_stop=ctx.cancelled,
                tokenizer=base_tokenizer,
                tags=tags,
            )
    except ChildFailed as exc:
        ctx.store.delete_prefix(prefix)
        raise UserError(f"the corpus build failed: {exc}") from exc
    except JobInterrupted:
        raise  # the worker drains: the next attempt of this job reuses the shards' work
    except BaseException as exc:
        # Cancelled (every shard has ended), no usable file, or a bug: nothing will merge the
        # parts. Lost or an outage: another attempt will, so they stay.
        if not ctx.lost() and not is_transient(exc):
            ctx.store.delete_prefix(prefix)
        raise
    ctx.store.delete_prefix(prefix)
    return build


def token_names(tokenizer: Any) -> list[str]:
    """The names of a plain MidiTok vocabulary (no BPE), in id order, for `force_tokens`.

    Empty for our own encodings, BPE-trained and multi-vocabulary tokenizers, whose ids do not
    map one-to-one onto named MidiTok tokens.
    """
    vocab = getattr(getattr(tokenizer, "miditok", None), "vocab", None)
    if not isinstance(vocab, dict) or getattr(tokenizer, "subword", None) is not None:
        return []
    return [name for name, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
