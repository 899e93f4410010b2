"""`tokenize_shard` jobs: one part of a sharded `tokenize` job (see `handlers.tokenize`).

Created by its parent through `cadenza.jobs.fanout`, never by a user; any `cpu` worker (or the
parent itself, while it waits) runs it. It tokenizes the files of its manifest into one spool
object, which the parent merges. It does nothing when its parent is no longer running, so a
parent that ended leaves no part being written.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from cadenza.jobs.context import JobCancelled, JobContext, Outcome, UserError
from cadenza.jobs.handlers.tokenize import build_options
from cadenza.tokenize.params import TokenizeShardParams


def run(ctx: JobContext) -> Outcome:
    """A `tokenize_shard` job: tokenize the files of its manifest into one spool object."""
    from cadenza.jobs.fanout import parent_running
    from cadenza.tokenize.corpus import tokenize_to_spool
    from cadenza.tokenize.corpus_data import CorpusCancelled

    p = TokenizeShardParams.model_validate(ctx.params)
    if not parent_running(ctx, p.parent_job_id):
        raise JobCancelled()  # nobody would merge this part
    part = json.loads(ctx.store.get(p.manifest_key))
    keys = {int(i): key for i, _, key, _ in part}
    tasks = [(int(i), str(fid), bool(train)) for i, fid, _, train in part]

    def progress(fraction: float, message: str) -> None:
        ctx.progress(fraction, f"part {p.shard + 1}/{p.shards}: {message}")

    t = p.tokenize
    with tempfile.TemporaryDirectory(prefix="cadenza-shard-") as tmp:
        try:
            entries = tokenize_to_spool(
                tasks,
                lambda i: ctx.store.get(keys[i]),
                t.tokenizer_spec,
                Path(tmp) / "part.spool",
                progress=progress,
                should_stop=ctx.cancelled,
                **build_options(t),
            )
        except CorpusCancelled as exc:
            raise JobCancelled() from exc
        except ValueError as exc:
            raise UserError(str(exc)) from exc
        ctx.check_cancel()
        if not parent_running(ctx, p.parent_job_id):
            raise JobCancelled()
        ctx.store.put(p.out_key, Path(tmp) / "part.spool")
    used = sum(e.skipped is None for e in entries)

    def finalize(s: Session) -> dict[str, Any]:
        return {"files": len(entries), "files_used": used, "spool_key": p.out_key}

    return Outcome(finalize, message=f"part {p.shard + 1}/{p.shards}: {used} files tokenized")
