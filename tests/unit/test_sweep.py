"""The object sweep on a real SQLite database and local store: a crash between the row delete
and the object delete leaves nothing behind, shared or young objects stay, and a failed
upload's cleanup no longer deletes a blob that a concurrent upload is about to commit."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Dataset, File, Job, PendingDelete
from cadenza.db.repo import get_or_create_owner
from cadenza.db.session import session_scope
from cadenza.ingest import Checked, Incoming, cleanup_unreferenced, store_files
from cadenza.render import render_key
from cadenza.storage import ObjectStore, blob_key, job_key, open_store, sha256_of
from cadenza.sweep import schedule, sweep_pending


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, sweep_grace_seconds=0)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return open_store(settings)


def pending(settings: Settings) -> int:
    with session_scope(settings.resolved_database_url) as s:
        return s.scalar(select(func.count()).select_from(PendingDelete)) or 0


def test_a_crash_after_the_row_delete_leaves_a_to_do_the_sweep_finishes(
    settings: Settings, store: ObjectStore
) -> None:
    # What a delete committed before its process died: rows gone, objects and to-dos left.
    store.put(job_key("deadbeef", "checkpoints", "step-1.pt"), b"c")
    store.put(job_key("deadbeef", "loss.png"), b"p")
    store.put(blob_key("ab" * 32, "mid"), b"m")
    store.put(job_key("deadbeefs", "keep.bin"), b"k")  # shares the prefix's first characters
    with session_scope(settings.resolved_database_url) as s:
        schedule(s, [blob_key("ab" * 32, "mid")], [job_key("deadbeef")])
    report = sweep_pending(settings)
    assert report.finished == 2 and report.waiting == 0 and len(report.deleted) == 3
    assert [o.key for o in store.list("")] == [job_key("deadbeefs", "keep.bin")]
    assert pending(settings) == 0
    assert sweep_pending(settings).finished == 0  # nothing left: a second sweep is a no-op


def _checked(data: bytes) -> Checked:
    return Checked(Incoming("a.mid", io.BytesIO(data), len(data), sha256_of([data])), "midi", "mid")


def _race(settings: Settings, store: ObjectStore, data: bytes, grace_s: float) -> str:
    """Two uploads of the same bytes: the first writes its blob and will commit its row; the
    second writes the same blob, fails to commit, and cleans up before the first commits.

    (SQLite has one writer, so the first upload's row insert waits for its commit here; on
    PostgreSQL it would sit uncommitted in its own transaction, invisible all the same.)"""
    url = settings.resolved_database_url
    with session_scope(url) as s:
        owner = get_or_create_owner(session=s, name="alice").id
        s.add(Dataset(id="d1", owner_id=owner, name="d"))
    key = blob_key(sha256_of([data]), "mid")
    store.put(key, data)  # the first upload's write (store_files writes before its rows)
    with session_scope(url) as failing:
        rows = store_files(
            session=failing, store=store, owner_id=owner, dataset_id="d1", checked=[_checked(data)]
        )
        keys = [r.object_key for r in rows]
        failing.rollback()  # the commit that failed
        cleanup_unreferenced(session=failing, store=store, keys=keys, grace_s=grace_s)
    with session_scope(url) as committing:  # the first upload commits its row now
        sha = sha256_of([data])
        row = File(owner_id=owner, dataset_id="d1", name="a.mid", kind="midi", format="mid")
        row.sha256, row.size, row.object_key = sha, len(data), key
        committing.add(row)
    return key


def test_a_failed_upload_never_deletes_a_blob_a_concurrent_upload_commits(
    settings: Settings, store: ObjectStore
) -> None:
    key = _race(settings, store, b"MThd same bytes", grace_s=3600)
    assert store.exists(key), "the cleanup deleted a blob another upload has just committed"
    assert pending(settings) == 1
    # Later (the grace period over), the sweep sees the committed row and keeps the blob.
    report = sweep_pending(settings)
    assert report.finished == 1 and report.deleted == [] and store.exists(key)
    assert pending(settings) == 0


def test_without_a_grace_period_the_race_loses_the_bytes(
    settings: Settings, store: ObjectStore
) -> None:
    """The same interleaving with no grace period leaves a file row without its bytes: why the
    period exists (an hour by default)."""
    key = _race(settings, store, b"MThd racing bytes", grace_s=0)
    assert not store.exists(key)


def test_objects_a_running_job_may_still_write_wait_for_it(
    settings: Settings, store: ObjectStore
) -> None:
    sha = "cd" * 32
    store.put(job_key("j1", "model.safetensors"), b"w")
    store.put(render_key(sha, "png"), b"p")
    with session_scope(settings.resolved_database_url) as s:
        owner = get_or_create_owner(session=s, name="alice").id
        s.add(Job(id="j1", owner_id=owner, type="train", queue="gpu", state="running"))
        render = {"targets": [{"sha256": sha, "key": blob_key(sha, "mid")}]}
        s.add(Job(id="j2", owner_id=owner, type="render", queue="cpu", params=render))
        schedule(s, [render_key(sha, "png")], [job_key("j1")])
    assert sweep_pending(settings).waiting == 2 and len(store.list("")) == 2
    with session_scope(settings.resolved_database_url) as s:
        for job in s.scalars(select(Job)):
            job.state = "failed"
    report = sweep_pending(settings)
    assert report.finished == 2 and store.list("") == [] and pending(settings) == 0


def test_a_referenced_object_is_kept_and_its_to_do_dropped(
    settings: Settings, store: ObjectStore
) -> None:
    data = b"MThd kept"
    key = blob_key(sha256_of([data]), "mid")
    with session_scope(settings.resolved_database_url) as s:
        owner = get_or_create_owner(session=s, name="alice").id
        s.add(Dataset(id="d1", owner_id=owner, name="d"))
        store_files(
            session=s, store=store, owner_id=owner, dataset_id="d1", checked=[_checked(data)]
        )
        schedule(s, [key, render_key(sha256_of([data]), "mp3")])
    report = sweep_pending(settings)
    assert report.finished == 2 and report.deleted == [] and store.exists(key)
    with session_scope(settings.resolved_database_url) as s:
        assert s.scalar(select(File.object_key)) == key
