"""Job lifecycle: transitions, compare-and-set claims, leases, fencing and the reconciler.

Run against real databases: SQLite (embedded) and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Checkpoint, Corpus, Job, JobEvent, MetricRecord, Model, Owner, utcnow
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
from cadenza.jobs.context import JobLost, Outcome
from cadenza.jobs.handlers.train import _Hooks
from cadenza.jobs.reconciler import MAX_RESENDS, due_resends, reconcile_and_resend
from cadenza.jobs.runner import _commit, claim_context
from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.storage import job_key, open_store
from cadenza.train.config import TrainConfig


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


def embedded_with_owner(tmp_path: Path, name: str) -> tuple[Settings, sessionmaker[Session], str]:
    """Settings on a migrated SQLite database in `tmp_path`, a session factory, and an owner."""
    settings = Settings(data_dir=tmp_path, job_lease_seconds=5)
    upgrade(settings.resolved_database_url)
    factory = session_factory(settings.resolved_database_url)
    with factory() as s:
        o = Owner(name=name)
        s.add(o)
        s.commit()
        return settings, factory, o.id


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
    token = first.claim_token
    assert token
    assert claim(session, job.id, lease_seconds=30) is None  # a second delivery does nothing
    assert finish(session, job.id, JobState.SUCCEEDED, token=token, result={"corpus_id": "c"})
    session.commit()
    assert not finish(session, job.id, JobState.FAILED, token=token)  # already terminal
    row = session.get(Job, job.id, populate_existing=True)
    assert row is not None and row.state == "succeeded" and row.progress == 1.0
    kinds = [e.data.get("state") for e in session.query(JobEvent).filter_by(job_id=job.id)]
    assert kinds == ["queued", "running", "succeeded"]


def test_cancel_queued_and_running(session: Session, owner: Owner) -> None:
    queued = new_job(session, owner)
    assert request_cancel(session, queued).state == "cancelled"
    assert claim(session, queued.id, lease_seconds=30) is None

    running = new_job(session, owner)
    claimed = claim(session, running.id, lease_seconds=30)
    assert claimed is not None
    job = request_cancel(session, running)
    assert job.state == "running" and job.cancel_requested
    ours, cancel = renew_lease(session, running.id, token=claimed.claim_token, lease_seconds=30)
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
    claimed = claim(session, job.id, lease_seconds=1)
    assert claimed is not None
    token = claimed.claim_token
    reconcile(session, now=utcnow() + timedelta(seconds=5))
    assert not finish(session, job.id, JobState.SUCCEEDED, token=token)
    ours, _ = renew_lease(session, job.id, token=token, lease_seconds=30)
    assert not ours


# ----------------------------------------------------------------------------- fencing


def make_model(session: Session, owner: Owner, job_id: str) -> Model:
    corpus = Corpus(
        owner_id=owner.id,
        job_id="c",
        tokenizer_key="t",
        tokenizer_hash="h",
        vocab_size=8,
        object_prefix="p",
    )
    session.add(corpus)
    session.flush()
    model = Model(
        owner_id=owner.id,
        corpus_id=corpus.id,
        job_id=job_id,
        architecture="gpt",
        vocab_size=8,
        tokenizer_hash="h",
    )
    session.add(model)
    session.commit()
    return model


def count(session: Session, model: type[Any], **where: Any) -> int:
    session.rollback()  # a fresh snapshot
    return len(list(session.scalars(select(model).filter_by(**where))))


def test_stale_attempt_cannot_write(
    session: Session, owner: Owner, db_url: str, tmp_path: Path
) -> None:
    """An attempt whose lease expired and whose job was claimed again writes nothing."""
    settings = Settings(data_dir=tmp_path, database_url=db_url, job_lease_seconds=5)
    job = new_job(session, owner)
    model = make_model(session, owner, job.id)
    cfg = TrainConfig(keep_last_n=2)
    old = claim_context(job.id, settings)
    assert old is not None
    reconcile(session, now=utcnow() + timedelta(seconds=60))  # old "paused" past its lease
    new = claim_context(job.id, settings)
    assert new is not None and new.claim_token != old.claim_token

    assert renew_lease(session, job.id, token=old.claim_token, lease_seconds=5) == (False, True)
    stale = _Hooks(old, model, cfg)
    with pytest.raises(JobLost):
        old.progress(0.5, "stale", force=True)
    with pytest.raises(JobLost):
        old.event("note", {})
    with pytest.raises(JobLost):
        stale.on_metrics({"step": 1, "split": "train", "loss": 1.0})
    with pytest.raises(JobLost):
        stale.save_checkpoint(10, b"stale", val_loss=None, is_best=True)
    with pytest.raises(JobLost):
        old.store.put(job_key(job.id, "out.bin"), b"stale")
    assert old.cancelled()
    with pytest.raises(JobLost):
        old.check_cancel()
    assert _commit(old, Outcome(lambda s: {"by": "old"})) == JobState.QUEUED

    # The attempt that holds the job writes; a step written twice updates its row.
    current = _Hooks(new, model, cfg)
    new.progress(0.5, "current", force=True)
    current.on_metrics({"step": 1, "split": "train", "loss": 2.0})
    current.on_metrics({"step": 1, "split": "train", "loss": 1.5})
    current.save_checkpoint(10, b"one", val_loss=None, is_best=True)
    current.save_checkpoint(10, b"two", val_loss=None, is_best=True)
    assert _commit(new, Outcome(lambda s: {"by": "new"})) == JobState.SUCCEEDED

    assert count(session, MetricRecord, model_id=model.id) == 1
    assert session.scalar(select(MetricRecord.loss)) == 1.5
    ckpts = list(session.scalars(select(Checkpoint).filter_by(model_id=model.id)))
    assert [c.step for c in ckpts] == [10] and new.claim_token[:12] in ckpts[0].object_key
    keys = [o.key for o in new.store.list(job_key(job.id))]
    assert keys == [ckpts[0].object_key]  # no stale object, no replaced object
    assert new.store.get(keys[0]) == b"two"
    row = session.get(Job, job.id, populate_existing=True)
    assert row is not None and row.state == "succeeded" and row.result["by"] == "new"
    assert row.claim_token is None


def test_cancel_racing_claim_is_never_lost(session: Session, owner: Owner, db_url: str) -> None:
    # The API read the job while it was queued; a worker claims it before the cancel lands.
    job = new_job(session, owner)
    seen = session.get(Job, job.id)
    assert seen is not None and seen.state == "queued"
    factory = session_factory(db_url)
    with factory() as worker:
        claimed = claim(worker, job.id, lease_seconds=30)
    assert claimed is not None
    after = request_cancel(session, seen)
    assert after.state == "running" and after.cancel_requested
    with factory() as worker:
        assert renew_lease(worker, job.id, token=claimed.claim_token, lease_seconds=30) == (
            True,
            True,
        )

    # Both at once, repeatedly: the job ends up cancelled, or running with the flag set.
    for _ in range(6):
        job = new_job(session, owner)
        barrier = threading.Barrier(2)
        tokens: list[str | None] = []

        def do_claim(
            job_id: str = job.id, b: threading.Barrier = barrier, out: list[str | None] = tokens
        ) -> None:
            with factory() as s:
                b.wait()
                got = claim(s, job_id, lease_seconds=30)
                out.append(got.claim_token if got else None)

        def do_cancel(job_id: str = job.id, b: threading.Barrier = barrier) -> None:
            with factory() as s:
                stale = s.get(Job, job_id)
                assert stale is not None
                b.wait()
                request_cancel(s, stale)

        threads = [threading.Thread(target=do_claim), threading.Thread(target=do_cancel)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        row = session.get(Job, job.id, populate_existing=True)
        assert row is not None and row.cancel_requested
        if tokens == [None]:
            assert row.state == "cancelled"
        else:
            assert row.state == "running"
            with factory() as s:
                assert renew_lease(s, job.id, token=tokens[0], lease_seconds=30) == (True, True)


def test_resends_back_off_and_stop(tmp_path: Path) -> None:
    settings, factory, owner_id = embedded_with_owner(tmp_path, "bob")
    with factory() as s:
        o = s.get(Owner, owner_id)
        assert o is not None
        job_id = new_job(s, o).id
        base = 120.0
        # Quiet for 1.5 periods: due a first re-send, not a second one.
        for resends, quiet, due in [(0, 1.5, True), (1, 1.5, False), (1, 2.5, True)]:
            row = s.get(Job, job_id)
            assert row is not None
            row.resends = resends
            row.updated_at = utcnow() - timedelta(seconds=base * quiet)
            s.commit()
            assert (job_id in [j.id for j in due_resends(s, base_seconds=base)]) == due
            s.rollback()
        row = s.get(Job, job_id)
        assert row is not None
        row.resends = 0
        s.commit()
    sent: list[list[str]] = []
    for _ in range(MAX_RESENDS + 2):
        with factory() as s:
            row = s.get(Job, job_id)
            assert row is not None
            row.updated_at = utcnow() - timedelta(days=30)
            s.commit()
        sent.append(reconcile_and_resend(settings)[2])
    assert sent == [[job_id]] * MAX_RESENDS + [[], []]  # then it waits, re-sent no more
    with factory() as s:
        row = s.get(Job, job_id)
        assert row is not None and row.state == "queued" and row.resends == MAX_RESENDS
        assert "filesystem broker" in row.message and "'cpu'" in row.message


_CHECKPOINT_WRITER = """
import hashlib, os, sys
from cadenza.config import Settings
from cadenza.db.models import Model
from cadenza.jobs.handlers.train import _Hooks
from cadenza.jobs.runner import claim_context
from cadenza.train.config import TrainConfig

data_dir, job_id, model_id, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ctx = claim_context(job_id, Settings(data_dir=data_dir, job_lease_seconds=5))
assert ctx is not None
with ctx.session() as s:
    model = s.get(Model, model_id)
    s.expunge_all()
hooks = _Hooks(ctx, model, TrainConfig(keep_last_n=2))
latest = hooks.load_latest_checkpoint()
assert latest is None or hashlib.sha256(latest[32:]).digest() == latest[:32]
first = 1 if latest is None else int.from_bytes(latest[32:40], "big") + 1
print("ready", flush=True)
for step in range(first, first + steps):
    body = step.to_bytes(8, "big") + os.urandom(1 << 20)
    hooks.save_checkpoint(step, hashlib.sha256(body).digest() + body, val_loss=None, is_best=False)
"""


def test_killed_checkpoint_writer_leaves_a_loadable_latest(tmp_path: Path) -> None:
    """SIGKILL a process writing checkpoints at random points: the latest row always loads."""
    settings, factory, owner_id = embedded_with_owner(tmp_path, "carol")
    with factory() as s:
        o = s.get(Owner, owner_id)
        assert o is not None
        job_id = new_job(s, o, max_attempts=100).id
        model_id = make_model(s, o, job_id).id
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADENZA_")}
    store = open_store(settings)
    rng = random.Random(1234)

    def writer(steps: int) -> subprocess.Popen[str]:
        argv = [sys.executable, "-c", _CHECKPOINT_WRITER, str(tmp_path), job_id, model_id]
        return subprocess.Popen([*argv, str(steps)], env=env, stdout=subprocess.PIPE, text=True)

    def latest_loads() -> int:
        with factory() as s:
            row = s.scalar(
                select(Checkpoint)
                .filter_by(model_id=model_id)
                .order_by(Checkpoint.step.desc())
                .limit(1)
            )
            if row is None:
                return 0
            data = store.get(row.object_key)
            assert hashlib.sha256(data[32:]).digest() == data[:32]
            assert int.from_bytes(data[32:40], "big") == row.step
            return row.step

    for _ in range(5):
        proc = writer(10_000)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.6))  # mid-put, mid-rename or mid-commit
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        latest_loads()
        with factory() as s:
            assert reconcile(s, now=utcnow() + timedelta(seconds=60))[0] == [job_id]
    proc = writer(3)  # a last attempt runs to the end
    assert proc.wait(60) == 0
    assert latest_loads() > 0
    with factory() as s:
        named = set(s.scalars(select(Checkpoint.object_key).filter_by(model_id=model_id)))
    assert len(named) == 2  # keep_last_n
    # What killed attempts left without a row was deleted by the next one.
    assert {o.key for o in store.list(job_key(job_id, "checkpoints"))} == named


def test_a_held_training_job_is_never_sent_to_a_worker(tmp_path: Path) -> None:
    """`cluster_job`: the job waits for its Kubernetes Job's pods, which claim it by id; no
    message on any queue (first send, re-send, requeue), and the reconciler never gives up on it."""
    from cadenza.jobs.queue import HELD_QUEUE, enqueue
    from cadenza.jobs.submit import submit
    from cadenza.sample.params import SampleParams
    from cadenza.train.params import TrainParams

    settings, factory, owner_id = embedded_with_owner(tmp_path, "bob")

    def messages() -> int:
        folder = settings.broker_dir / "queue"
        return len(list(folder.iterdir())) if folder.exists() else 0

    with factory() as s:
        held = submit(
            s,
            settings,
            owner_id=owner_id,
            type="train",
            params=TrainParams(model_id="m", corpus_id="c"),
            held=True,
        )
        assert held.queue == HELD_QUEUE and held.state == "queued"
        assert messages() == 0
        sent = submit(
            s,
            settings,
            owner_id=owner_id,
            type="train",
            params=TrainParams(model_id="n", corpus_id="c"),
        )
        assert sent.queue == "gpu" and messages() == 1  # the control: an ordinary job is sent
        with pytest.raises(ValueError, match="only training jobs"):
            submit(
                s,
                settings,
                owner_id=owner_id,
                type="sample",
                params=SampleParams(model_id="m", checkpoint_id="k"),
                held=True,
            )
    enqueue(settings, held.id, HELD_QUEUE)  # a requeue after a drain takes this path too
    assert messages() == 1
    for _ in range(MAX_RESENDS + 2):
        with factory() as s:
            for row in s.scalars(select(Job)):
                row.updated_at = utcnow() - timedelta(days=30)
            s.commit()
        assert held.id not in reconcile_and_resend(settings)[2]
    with factory() as s:
        row = s.get(Job, held.id)
        assert row is not None and row.state == "queued" and row.resends == 0
        assert claim_context(held.id, settings) is not None  # its pods claim it by id
