"""Worker lifecycle pieces: transient errors, interruption requeues, heartbeat, supervision."""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import IntegrityError, OperationalError
from typer.testing import CliRunner

from cadenza.cli import app
from cadenza.db.migrate import upgrade
from cadenza.db.models import Job, Owner
from cadenza.db.session import session_factory
from cadenza.jobs import heartbeat
from cadenza.jobs.state import JobState, claim, create_job
from cadenza.jobs.transient import (
    is_transient,
    public_error,
    requeue_interrupted,
    retry_transient,
)
from cadenza.launch.stack import Launched


def _locked_error(tmp_path: Path) -> OperationalError:
    """A real "database is locked" from SQLite: another connection holds the write lock."""
    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x INTEGER)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{db}", connect_args={"timeout": 0.05})
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES (1)"))
    except OperationalError as exc:
        return exc
    finally:
        holder.close()
        engine.dispose()
    raise AssertionError("the write did not wait for the lock")


def test_outages_are_transient_and_bugs_are_not(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path)
    assert is_transient(locked)
    assert is_transient(ConnectionRefusedError("refused"))
    wrapped = RuntimeError("while saving")
    wrapped.__cause__ = locked
    assert is_transient(wrapped)
    assert not is_transient(ValueError("bad"))
    assert not is_transient(IntegrityError("INSERT", {}, Exception("duplicate")))


def test_public_error_holds_no_sql_or_paths(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path)
    message = public_error(locked)
    assert "INSERT" not in message and "locked.db" not in message and "sqlite" not in message
    assert public_error(IntegrityError("INSERT INTO x", {"a": 1}, Exception("dup"))).startswith(
        "internal database error"
    )
    leaked = public_error(FileNotFoundError(f"no such file: {tmp_path}/secret/weights.pt"))
    assert str(tmp_path) not in leaked and leaked.startswith("FileNotFoundError: no such file")


def test_retry_transient_retries_outages_only() -> None:
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("down")
        return "ok"

    assert retry_transient(flaky, what="flaky", budget_s=10, first_delay_s=0.01) == "ok"
    assert len(calls) == 3

    def broken() -> None:
        calls.append(1)
        raise ValueError("a bug")

    calls.clear()
    with pytest.raises(ValueError):
        retry_transient(broken, what="broken", budget_s=10, first_delay_s=0.01)
    assert len(calls) == 1

    def down() -> None:
        raise ConnectionRefusedError("still down")

    with pytest.raises(ConnectionRefusedError):
        retry_transient(down, what="down", budget_s=0.05, first_delay_s=0.01)


def test_interruptions_give_the_attempt_back_and_are_bounded(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with session_factory(url)() as s:
        owner = Owner(name="alice")
        s.add(owner)
        s.commit()
        job = create_job(s, owner_id=owner.id, type="tokenize", params={})
        s.commit()
        for n in (1, 2):
            claimed = claim(s, job.id, lease_seconds=60)
            assert claimed is not None
            stale_token = claimed.claim_token
            state = requeue_interrupted(
                s, job.id, stale_token, reason="the worker shut down", max_interruptions=2
            )
            s.commit()
            assert state == JobState.QUEUED
            row = s.get(Job, job.id, populate_existing=True)
            assert row is not None
            assert (row.state, row.attempts, row.interruptions) == ("queued", 0, n)
            assert row.lease_until is None and row.worker is None
        # queued now: nothing to requeue
        assert requeue_interrupted(s, job.id, stale_token, reason="x", max_interruptions=2) is None
        claimed = claim(s, job.id, lease_seconds=60)
        assert claimed is not None
        # a stale attempt's token cannot requeue the job another attempt holds
        assert requeue_interrupted(s, job.id, stale_token, reason="x", max_interruptions=2) is None
        token = claimed.claim_token
        failed = requeue_interrupted(s, job.id, token, reason="outage", max_interruptions=2)
        assert failed == "failed"
        s.commit()
        row = s.get(Job, job.id, populate_existing=True)
        assert row is not None and row.state == "failed" and row.interruptions == 3
        assert row.error == "interrupted 3 times (outage); giving up"

        job = create_job(s, owner_id=owner.id, type="tokenize", params={})
        s.commit()
        claimed = claim(s, job.id, lease_seconds=60)
        assert claimed is not None
        claimed.cancel_requested = True
        s.commit()
        token = claimed.claim_token
        assert requeue_interrupted(s, job.id, token, reason="drain", max_interruptions=2) == (
            "cancelled"
        )


def test_worker_alive_reads_the_heartbeat_age(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "hb" / "worker.alive"
    args = ["worker-alive", "--file", str(path), "--max-age", "30"]
    assert runner.invoke(app, args).exit_code == 1  # never beaten
    heartbeat.beat(path)
    assert runner.invoke(app, args).exit_code == 0
    old = time.time() - 60
    os.utime(path, (old, old))
    assert runner.invoke(app, args).exit_code == 1


def test_idle_ticker_beats_only_while_no_job_runs(tmp_path: Path) -> None:
    path = tmp_path / "worker.alive"
    ticker = heartbeat.IdleTicker(path, 0.05)
    ticker.start()
    try:
        time.sleep(0.2)
        assert (heartbeat.age(path) or 99) < 0.2
        heartbeat.job_started()  # now only the lease keeper beats
        time.sleep(0.3)
        assert (heartbeat.age(path) or 0) >= 0.2
    finally:
        heartbeat.job_ended()
        ticker.stop.set()


def test_supervise_restarts_a_dead_child(tmp_path: Path) -> None:
    launched = Launched(dict(os.environ), log_file=tmp_path / "children.log")
    launched.start("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    steady = launched.procs["steady"].pid
    launched.start("crashy", [sys.executable, "-c", "raise SystemExit(3)"])
    try:
        deadline = time.monotonic() + 20
        launched.supervise(
            until=lambda: launched.restarts.get("crashy", 0) >= 2 or time.monotonic() > deadline,
            poll=0.05,
        )
        assert launched.restarts.get("crashy") == 2
        assert launched.procs["steady"].pid == steady and launched.procs["steady"].poll() is None
    finally:
        launched.stop(timeout=5)
