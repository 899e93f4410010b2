"""The shared render cache must not tell one owner whether another owner holds a MIDI file:
an owner's first request for a rendering queues a job even when the bytes are cached."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Job
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza.render import render_key
from cadenza.storage import open_store
from cadenza_api.app import create_app
from tests.support.music import midi_bytes

SONG = midi_bytes([(i * 240, 240, 60 + i % 12, 80) for i in range(12)])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    upgrade(s.resolved_database_url)
    return s


def client_for(settings: Settings, app: object, name: str) -> TestClient:
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name=name)
    c = TestClient(app)  # type: ignore[arg-type]
    c.headers["Authorization"] = f"Bearer {key}"
    return c


def upload(c: TestClient) -> dict[str, str]:
    ds = c.post("/v1/datasets", json={"name": "d"}).json()["id"]
    r = c.post(f"/v1/datasets/{ds}/files", files=[("files", ("song.mid", SONG))])
    assert r.status_code == 201, r.text
    return dict(r.json()["files"][0])


def finish_render(settings: Settings, job_id: str, sha256: str) -> None:
    """What a render worker leaves behind: the rendering in the store, the job succeeded."""
    open_store(settings).put(render_key(sha256, "png"), b"\x89PNG fake")
    with session_scope(settings.resolved_database_url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(state="succeeded"))


def test_cached_render_of_another_owner_is_not_served_at_once(settings: Settings) -> None:
    app = create_app(settings)
    alice, bob = client_for(settings, app, "alice"), client_for(settings, app, "bob")
    a_file, b_file = upload(alice), upload(bob)
    assert a_file["sha256"] == b_file["sha256"]

    first = alice.get(f"/v1/files/{a_file['id']}/pianoroll.png")
    assert first.status_code == 202
    finish_render(settings, first.json()["id"], a_file["sha256"])
    assert alice.get(f"/v1/files/{a_file['id']}/pianoroll.png").status_code == 200

    # Bob's identical file: the rendering is cached, yet he gets a job of his own, exactly as
    # if nobody had rendered these bytes before.
    r = bob.get(f"/v1/files/{b_file['id']}/pianoroll.png")
    assert r.status_code == 202
    assert r.json()["id"] != first.json()["id"]
    finish_render(settings, r.json()["id"], b_file["sha256"])
    done = bob.get(f"/v1/files/{b_file['id']}/pianoroll.png")
    assert done.status_code == 200 and done.content == b"\x89PNG fake"
