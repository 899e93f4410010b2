"""The end of every DELETE route: commit the row deletes, then sweep their objects at once.

The sweep runs inline on the request's session (it holds a database slot already, so it needs
no connection of its own) and is best effort: what it cannot finish now stays in
`pending_deletes` for the workers' periodic sweep, so the answer never waits on, or fails
because of, the object store.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.delete import Deleted
from cadenza.storage import ObjectStore
from cadenza.sweep import SweepReport, sweep
from cadenza_api.schemas import DeletedOut

log = logging.getLogger("cadenza.api")

# Pending deletes one request works through (a few store calls each) before it answers; a
# bigger delete (a dataset of thousands of files) leaves the rest to the workers' sweep, so a
# request never holds its database slot for long.
INLINE_SWEEP_LIMIT = 200


def finish_delete(
    session: Session, store: ObjectStore, settings: Settings, deleted: Deleted
) -> DeletedOut:
    """Commit `deleted`, sweep its pending deletes, and say what is gone."""
    session.commit()
    try:
        report = sweep(
            session,
            store,
            grace_s=settings.sweep_grace_seconds,
            ids=deleted.pending_ids[:INLINE_SWEEP_LIMIT],
        )
    except Exception:  # the store or database hiccuped: the pending rows stay for the sweep
        log.exception("sweep after deleting %s %s failed", deleted.kind, deleted.id)
        session.rollback()
        report = SweepReport()
    return DeletedOut(
        kind=deleted.kind,
        id=deleted.id,
        rows=deleted.rows,
        objects_deleted=len(report.deleted),
        objects_pending=len(deleted.pending_ids) - report.finished,
    )
