"""Job lifecycle: allowed transitions, compare-and-set claims, leases and the reconciler.

Run against real databases: SQLite (embedded) and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cadenza.db.migrate import upgrade
from cadenza.db.models import Job, JobEvent, Owner, utcnow
from cadenza.db.session import session_factory
from cadenza.jobs import (
    InvalidTransition,
    JobState,
    can_transition,
    check_transition,
    claim,
    create_job,
    finish,
    reconcile,
    renew_lease,
    request_cancel,
)
from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'jobs.db'}"
        upgrade(url)
        yield url
    else:
        ensure_postgres()
        with fresh_postgres_database() as url:
            upgrade(url)
            yield url


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with session_factory(db_url)() as s:
        yield s


@pytest.fixture
def owner(session: Session) -> Owner:
    o = Owner(name="alice")
    session.add(o)
    session.commit()
    return o


def new_job(session: Session, owner: Owner, **kw: object) -> Job:
    job = create_job(session, owner_id=owner.id, type="tokenize", params={}, **kw)  # type: ignore[arg-type]
    session.commit()
    return job


def test_transition_table() -> None:
    assert can_transition("queued", "running")
    assert can_transition("running", "queued")  # lease expired: requeue
    for terminal in ("succeeded", "failed", "cancelled"):
        for dst in JobState:
            assert not can_transition(terminal, dst)
    with pytest.raises(InvalidTransition):
        check_transition("succeeded", "running")
    with pytest.raises(InvalidTransition):
        check_transition("queued", "succeeded")


def test_claim_is_compare_and_set(session: Session, owner: Owner) -> None:
    job = new_job(session, owner)
    first = claim(session, job.id, lease_seconds=30)
    assert first is not None and first.state == "running" and first.attempts == 1
    assert claim(session, job.id, lease_seconds=30) is None  # a second delivery does nothing
    assert finish(session, job.id, JobState.SUCCEEDED, result={"corpus_id": "c"})
    session.commit()
    assert not finish(session, job.id, JobState.FAILED)  # already terminal
    row = session.get(Job, job.id, populate_existing=True)
    assert row is not None and row.state == "succeeded" and row.progress == 1.0
    kinds = [e.data.get("state") for e in session.query(JobEvent).filter_by(job_id=job.id)]
    assert kinds == ["queued", "running", "succeeded"]


def test_cancel_queued_and_running(session: Session, owner: Owner) -> None:
    queued = new_job(session, owner)
    assert request_cancel(session, queued).state == "cancelled"
    assert claim(session, queued.id, lease_seconds=30) is None

    running = new_job(session, owner)
    claim(session, running.id, lease_seconds=30)
    job = request_cancel(session, running)
    assert job.state == "running" and job.cancel_requested
    ours, cancel = renew_lease(session, running.id, lease_seconds=30)
    assert ours and cancel


def test_reconciler_requeues_then_fails(session: Session, owner: Owner) -> None:
    job = new_job(session, owner, max_attempts=2)
    claim(session, job.id, lease_seconds=1)
    later = utcnow() + timedelta(seconds=5)
    assert reconcile(session, now=later) == ([job.id], [])
    row = session.get(Job, job.id, populate_existing=True)
    assert row is not None and row.state == "queued"
    claim(session, job.id, lease_seconds=1)
    assert reconcile(session, now=utcnow() + timedelta(seconds=5)) == ([], [job.id])
    row = session.get(Job, job.id, populate_existing=True)
    assert row is not None and row.state == "failed" and "2 attempts" in (row.error or "")
    # A live lease is left alone.
    live = new_job(session, owner)
    claim(session, live.id, lease_seconds=60)
    assert reconcile(session) == ([], [])


def test_lost_lease_refuses_late_finish(session: Session, owner: Owner) -> None:
    job = new_job(session, owner)
    claim(session, job.id, lease_seconds=1)
    reconcile(session, now=utcnow() + timedelta(seconds=5))
    assert not finish(session, job.id, JobState.SUCCEEDED)
    ours, _ = renew_lease(session, job.id, lease_seconds=30)
    assert not ours
