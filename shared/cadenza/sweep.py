"""The object sweep: delete the objects that `pending_deletes` names, once nothing needs them.

A delete removes rows and, in the same transaction, writes the keys of their objects to
`pending_deletes`; the sweep then deletes each object and only then its pending row, so a
crash in between leaves a to-do, never an orphan. It runs right after each delete (best
effort, in the API request), periodically in the workers, and by hand (`cadenza sweep`).

Objects can be shared, so the sweep decides per key, in SQL, at sweep time:
- `blobs/…` (uploads, content-addressed): kept while any file row names the key;
- `renders/…` (renderings, by MIDI content hash): kept while a MIDI file or a sample has that
  hash, and left for later while a render job for it is queued or running;
- `jobs/{id}/…` (job outputs): kept while the corpus, model or sample made by that job exists,
  and left for later while the job itself is queued or running.
A content-addressed object younger than `sweep_grace_seconds` is left for later too: an
upload of the same bytes rewrites the object before it commits its row, so a young object may
belong to a row that is not visible yet.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Corpus, File, Job, Model, PendingDelete, Sample
from cadenza.storage import ObjectStore

log = logging.getLogger(__name__)

Verdict = Literal["referenced", "busy", "free"]
ACTIVE_STATES = ("queued", "running")


@dataclass
class SweepReport:
    """What one sweep did: objects deleted, pending rows finished, pending rows left for later."""

    deleted: list[str] = field(default_factory=list)
    finished: int = 0
    waiting: int = 0


def schedule(session: Session, keys: Iterable[str], prefixes: Iterable[str] = ()) -> list[int]:
    """Add pending deletes for `keys` and `prefixes` (the caller commits with its row deletes).

    Returns the new rows' ids, so the caller can sweep exactly those right after its commit.
    """
    rows = [PendingDelete(object_key=k, is_prefix=False) for k in dict.fromkeys(keys)]
    rows += [PendingDelete(object_key=p, is_prefix=True) for p in dict.fromkeys(prefixes)]
    session.add_all(rows)
    session.flush()
    return [r.id for r in rows]


def verdict(session: Session, store: ObjectStore, key: str, *, grace_s: float) -> Verdict:
    """Whether a row still needs `key` (referenced), may soon (busy), or nothing does (free)."""
    if key.startswith("blobs/"):
        if session.scalar(select(File.id).where(File.object_key == key).limit(1)):
            return "referenced"
        return "busy" if _young(store, key, grace_s) else "free"
    if key.startswith("renders/"):
        return _render_verdict(session, store, key, grace_s)
    if key.startswith("jobs/"):
        return _job_output_verdict(session, key)
    return "free"  # a key no row scheme knows: only a delete named it


def _young(store: ObjectStore, key: str, grace_s: float) -> bool:
    modified = store.modified_at(key)
    return modified is not None and datetime.now(UTC) - modified < timedelta(seconds=grace_s)


def _render_verdict(session: Session, store: ObjectStore, key: str, grace_s: float) -> Verdict:
    sha = key.rsplit("/", 1)[-1].split(".", 1)[0]
    midi = select(File.id).where(File.sha256 == sha, File.kind == "midi").limit(1)
    sample = select(Sample.id).where(Sample.meta["sha256"].as_string() == sha).limit(1)
    if session.scalar(midi) or session.scalar(sample):
        return "referenced"
    renders = session.scalars(
        select(Job.params).where(Job.type == "render", Job.state.in_(ACTIVE_STATES))
    )
    if any(t.get("sha256") == sha for p in renders for t in p.get("targets", [])):
        return "busy"
    return "busy" if _young(store, key, grace_s) else "free"


def _job_output_verdict(session: Session, key: str) -> Verdict:
    job_id = key.split("/", 2)[1]
    if session.scalar(select(Job.id).where(Job.id == job_id, Job.state.in_(ACTIVE_STATES))):
        return "busy"  # the job may still write here (or be retried and rewrite it)
    owners = (
        select(Corpus.id).where(Corpus.job_id == job_id).limit(1),
        select(Model.id).where(Model.job_id == job_id).limit(1),
        select(Sample.id).where(Sample.midi_key == key).limit(1),
    )
    return "referenced" if any(session.scalar(q) for q in owners) else "free"


def sweep(
    session: Session,
    store: ObjectStore,
    *,
    grace_s: float,
    ids: Sequence[int] | None = None,
    limit: int = 1000,
) -> SweepReport:
    """Work through pending deletes (oldest first, or just `ids`); commits per pending row.

    Idempotent and safe to run in several processes at once: deleting a missing object or an
    already finished pending row is a no-op.
    """
    stmt = select(PendingDelete.id, PendingDelete.object_key, PendingDelete.is_prefix)
    if ids is not None:
        stmt = stmt.where(PendingDelete.id.in_(list(ids)))
    todo = list(session.execute(stmt.order_by(PendingDelete.id).limit(limit)))
    session.rollback()
    report = SweepReport()
    for pending_id, key, is_prefix in todo:
        # Listed objects exist; a named key may not (a rendering never made, a second sweep).
        keys = [o.key for o in store.list(key)] if is_prefix else [key] if store.exists(key) else []
        waiting = False
        for k in keys:
            found = verdict(session, store, k, grace_s=grace_s)
            session.rollback()  # the next check reads a fresh snapshot (SQLite keeps one per tx)
            if found == "free":
                store.delete(k)
                report.deleted.append(k)
            waiting = waiting or found == "busy"
        if waiting:
            report.waiting += 1
            continue
        session.execute(delete(PendingDelete).where(PendingDelete.id == pending_id))
        session.commit()
        report.finished += 1
    return report


def sweep_pending(settings: Settings, *, limit: int = 1000) -> SweepReport:
    """One sweep round with its own session and store: for workers' periodic loops and the CLI."""
    from cadenza.db.session import session_factory
    from cadenza.storage import open_store

    session = session_factory(settings.resolved_database_url)()
    try:
        report = sweep(
            session, open_store(settings), grace_s=settings.sweep_grace_seconds, limit=limit
        )
    finally:
        session.close()
    if report.deleted or report.waiting:
        log.info(
            "sweep: deleted %d object(s), %d pending delete(s) wait",
            len(report.deleted),
            report.waiting,
        )
    return report
