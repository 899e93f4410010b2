"""`render` jobs: MIDI → MP3, WAV and a piano-roll PNG, cached in the store by content hash.

The API queues one when a rendering is asked for and not cached yet (sample jobs render their
own outputs as they store them). A target that fails in every format fails the job; a partial
failure is reported per format in the job's result.
"""

from __future__ import annotations

from cadenza.jobs.context import JobContext, Outcome, UserError
from cadenza.render.params import RenderParams


def run(ctx: JobContext) -> Outcome:
    from cadenza.render import render_all

    p = RenderParams.model_validate(ctx.params)
    errors: dict[str, dict[str, str]] = {}
    for i, t in enumerate(p.targets):
        ctx.check_cancel()
        ctx.progress(i / len(p.targets), f"rendering {i + 1}/{len(p.targets)}", force=True)
        failed = render_all(ctx.store, ctx.store.get(t.key), t.sha256)
        if failed:
            errors[t.sha256] = failed
    if errors and len(errors) == len(p.targets):
        first = next(iter(errors.values()))
        raise UserError(f"rendering failed: {'; '.join(f'{k}: {v}' for k, v in first.items())}")
    return Outcome(lambda s: {"render_errors": errors}, message=f"rendered {len(p.targets)}")
