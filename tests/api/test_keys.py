"""API keys in-process (real SQLite): scopes, expiry, revocation, the key routes, `/readyz`
detail and the throttled `last_used_at`."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import ApiKey, utcnow
from cadenza.db.repo import issue_api_key
from cadenza.db.session import SQLITE_BUSY_TIMEOUT_MS, session_scope
from cadenza_api.app import create_app


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def app(settings: Settings) -> TestClient:
    return TestClient(create_app(settings))


def make_key(settings: Settings, owner: str, *scopes: str, **options: Any) -> tuple[str, str]:
    """(id, secret) of a new key."""
    with session_scope(settings.resolved_database_url) as s:
        row, secret = issue_api_key(
            session=s, owner_name=owner, scopes=scopes or ("read", "write", "train"), **options
        )
        return row.id, secret


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_scopes_decide_by_method_and_route(settings: Settings, app: TestClient) -> None:
    _, reader = make_key(settings, "alice", "read")
    _, writer = make_key(settings, "alice", "read", "write")
    assert app.get("/v1/datasets", headers=auth(reader)).status_code == 200
    r = app.post("/v1/datasets", json={"name": "d"}, headers=auth(reader))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    message = r.json()["error"]["message"]
    assert "'write'" in message and "it has: read" in message
    assert app.post("/v1/datasets", json={"name": "d"}, headers=auth(writer)).status_code == 201
    # Training needs `train`: a write key is refused before the body is even looked at.
    r = app.post("/v1/models", json={"corpus_id": "x"}, headers=auth(writer))
    assert r.status_code == 403 and "'train'" in r.json()["error"]["message"]
    # Admin routes need `admin`; `admin` implies every other scope.
    r = app.get("/v1/admin/keys", headers=auth(writer))
    assert r.status_code == 403 and "'admin'" in r.json()["error"]["message"]
    _, admin = make_key(settings, "root", "admin")
    assert app.get("/v1/admin/keys", headers=auth(admin)).status_code == 200
    assert app.post("/v1/datasets", json={"name": "d"}, headers=auth(admin)).status_code == 201


def test_expired_and_revoked_keys_are_refused_saying_why(
    settings: Settings, app: TestClient
) -> None:
    _, old = make_key(settings, "alice", expires_at=utcnow() - timedelta(seconds=1))
    r = app.get("/v1/datasets", headers=auth(old))
    assert r.status_code == 401 and "expired at" in r.json()["error"]["message"]
    key_id, live = make_key(settings, "alice")
    assert app.get("/v1/datasets", headers=auth(live)).status_code == 200  # now cached
    assert app.delete(f"/v1/keys/{key_id}", headers=auth(live)).json()["revoked_at"]
    r = app.get("/v1/datasets", headers=auth(live))  # this process's cache was cleared
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]


def test_admin_key_routes(settings: Settings, app: TestClient) -> None:
    _, admin = make_key(settings, "root", "admin")
    body = {"owner": "bob", "scopes": ["read"], "name": "dash", "expires_in_s": 3600}
    r = app.post("/v1/admin/keys", json=body, headers=auth(admin))
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("cz_") and created["scopes"] == ["read"]
    assert created["owner"] == "bob" and created["expires_at"]
    assert app.get("/v1/datasets", headers=auth(created["secret"])).status_code == 200

    listed = app.get("/v1/admin/keys", params={"owner": "bob"}, headers=auth(admin)).json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert all("secret" not in k and "key_hash" not in k for k in listed)
    assert app.get("/v1/admin/keys", params={"owner": "nobody"}, headers=auth(admin)).json() == []

    r = app.post("/v1/admin/keys", json=body | {"scopes": ["read", "sudo"]}, headers=auth(admin))
    assert r.status_code == 422 and "'sudo'" in r.json()["error"]["message"]
    r = app.post("/v1/admin/keys", json=body | {"scopes": []}, headers=auth(admin))
    assert r.status_code == 422 and "scopes" in r.json()["error"]["message"]

    r = app.delete(f"/v1/admin/keys/{created['id']}", headers=auth(admin))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert app.get("/v1/datasets", headers=auth(created["secret"])).status_code == 401
    assert app.delete("/v1/admin/keys/nope", headers=auth(admin)).status_code == 404


def test_self_service_sees_and_revokes_only_its_own_keys(
    settings: Settings, app: TestClient
) -> None:
    a1, alice = make_key(settings, "alice")
    a2, _ = make_key(settings, "alice", "read", name="laptop")
    b1, bob = make_key(settings, "bob")
    mine = app.get("/v1/keys", headers=auth(alice)).json()
    assert {k["id"] for k in mine} == {a1, a2}
    assert {k["name"] for k in mine} == {"", "laptop"}
    r = app.delete(f"/v1/keys/{b1}", headers=auth(alice))
    assert r.status_code == 404  # another owner's key is not found, like any resource
    assert app.get("/v1/keys", headers=auth(bob)).status_code == 200
    assert app.delete(f"/v1/keys/{a2}", headers=auth(alice)).status_code == 200


def test_last_used_is_written_at_most_once_a_minute(settings: Settings, app: TestClient) -> None:
    key_id, secret = make_key(settings, "alice")

    def last_used() -> object:
        with session_scope(settings.resolved_database_url) as s:
            return s.get_one(ApiKey, key_id).last_used_at

    assert last_used() is None
    app.get("/v1/datasets", headers=auth(secret))
    first = last_used()
    assert first is not None
    for _ in range(3):
        app.get("/v1/datasets", headers=auth(secret))
    assert last_used() == first


def test_a_held_write_lock_does_not_hold_up_a_read(settings: Settings, app: TestClient) -> None:
    """A process stopped inside a write transaction holds SQLite's one writer lock: a GET
    still answers (WAL reads), skipping the key's `last_used_at` write instead of waiting
    the 30 s busy timeout and failing with 503; the write is made once the lock is free."""
    key_id, secret = make_key(settings, "alice")
    path = settings.resolved_database_url.removeprefix("sqlite:///")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # the writer lock, as a stalled worker holds it
    try:
        r = app.get("/v1/datasets", headers=auth(secret))
        assert r.status_code == 200, r.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with session_scope(settings.resolved_database_url) as s:
        assert s.get_one(ApiKey, key_id).last_used_at is None  # skipped, not half-written
        # The pooled connection is back at the normal busy timeout.
        assert s.execute(text("PRAGMA busy_timeout")).scalar() == SQLITE_BUSY_TIMEOUT_MS
    # Retried a minute later; a new process (its own throttle) writes it at once.
    assert TestClient(create_app(settings)).get("/v1/datasets", headers=auth(secret)).is_success
    with session_scope(settings.resolved_database_url) as s:
        assert s.get_one(ApiKey, key_id).last_used_at is not None


def test_readyz_details_only_for_admin_keys(settings: Settings, app: TestClient) -> None:
    _, admin = make_key(settings, "root", "admin")
    _, user = make_key(settings, "alice")
    for headers in ({}, auth(user), auth("cz_wrong"), {"Authorization": "Basic x"}):
        r = app.get("/readyz", headers=headers)
        assert r.status_code == 200 and set(r.json()) == {"status", "checks"}, headers
    r = app.get("/readyz", headers=auth(admin))
    assert r.status_code == 200 and r.json()["errors"] == {}


def test_readyz_names_the_failing_dependency_class_for_admins(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="redis://:hunter2@127.0.0.1:1/0")
    upgrade(settings.resolved_database_url)
    app = TestClient(create_app(settings))
    _, admin = make_key(settings, "root", "admin")
    r = app.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["broker"] == "unavailable"
    assert "errors" not in r.json()
    r = app.get("/readyz", headers=auth(admin))
    errors = r.json()["errors"]
    assert r.status_code == 503 and set(errors) == {"broker"} and errors["broker"].isidentifier()
    assert "hunter2" not in r.text and "127.0.0.1" not in r.text
