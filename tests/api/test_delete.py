"""DELETE of every resource in-process (real SQLite, real local store, no worker): rows and
objects go, other owners get 404, what is in use gets 409, paging of the new list is checked.

The corpus, model, checkpoints and samples are the rows and objects the jobs would have made
(written here directly, so no training runs); tests/integration/test_delete.py deletes what
real jobs made on both deployments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import (
    Checkpoint,
    Corpus,
    Dataset,
    File,
    Job,
    JobEvent,
    MetricRecord,
    Model,
    PendingDelete,
    Sample,
    new_id,
)
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza.render import render_key
from cadenza.storage import job_key, open_store
from cadenza_api.app import create_app
from tests.support.music import midi_bytes

TABLES = (Dataset, File, Corpus, Model, Checkpoint, MetricRecord, Sample, JobEvent, PendingDelete)


def tiny_midi(pitch: int) -> bytes:
    return midi_bytes([(i * 240, 240, pitch + i % 5, 80) for i in range(12)])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, sweep_grace_seconds=0)
    upgrade(s.resolved_database_url)
    return s


def keyed_client(settings: Settings, owner: str) -> TestClient:
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name=owner)
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    return c


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    yield keyed_client(settings, "alice")


def keys(settings: Settings) -> set[str]:
    return {o.key for o in open_store(settings).list("")}


def counts(settings: Settings) -> dict[str, int]:
    with session_scope(settings.resolved_database_url) as s:
        return {t.__tablename__: s.scalar(select(func.count()).select_from(t)) or 0 for t in TABLES}


def upload(client: TestClient, name: str, *pitches: int) -> tuple[str, list[dict[str, Any]]]:
    ds = client.post("/v1/datasets", json={"name": name}).json()["id"]
    files = [("files", (f"{p}.mid", tiny_midi(p))) for p in pitches]
    r = client.post(f"/v1/datasets/{ds}/files", files=files)
    assert r.status_code == 201, r.text
    return ds, r.json()["files"]


def job(
    s: Any, owner_id: str, type: str, state: str = "succeeded", job_id: str = "", **params: Any
) -> str:
    j = Job(id=job_id or new_id(), owner_id=owner_id, type=type, queue="cpu", state=state)
    j.params = params
    s.add(j)
    s.flush()
    s.add(JobEvent(job_id=j.id, kind="progress", data={}))
    return j.id


def made_by_jobs(settings: Settings, dataset_id: str, sha: str) -> dict[str, str]:
    """A corpus, a trained model (checkpoints, metrics, weights, curve) and a sample with its
    renderings, as their jobs would have left them."""
    store = open_store(settings)
    with session_scope(settings.resolved_database_url) as s:
        owner = s.get(Dataset, dataset_id).owner_id  # type: ignore[union-attr]
        tok = job(s, owner, "tokenize", dataset_id=dataset_id)
        prefix = job_key(tok, "corpus")
        for name in ("tokenizer.json", "export.npz"):
            store.put(f"{prefix}/{name}", b"x")
        corpus = Corpus(
            owner_id=owner,
            dataset_id=dataset_id,
            job_id=tok,
            tokenizer_key=f"{prefix}/tokenizer.json",
            tokenizer_hash="h",
            vocab_size=10,
            object_prefix=prefix,
        )
        s.add(corpus)
        s.flush()
        train = new_id()
        model = Model(
            owner_id=owner,
            corpus_id=corpus.id,
            job_id=train,
            architecture="a",
            vocab_size=10,
            tokenizer_hash="h",
            state="ready",
        )
        s.add(model)
        s.flush()
        job(s, owner, "train", job_id=train, model_id=model.id, corpus_id=corpus.id)
        for step in (10, 20):
            key = job_key(train, "checkpoints", f"step-{step:09d}.pt")
            store.put(key, b"ckpt")
            s.add(Checkpoint(model_id=model.id, job_id=train, step=step, object_key=key, size=4))
            s.add(MetricRecord(model_id=model.id, step=step, split="train", loss=1.0))
        store.put(job_key(train, "loss.png"), b"png")
        store.put(job_key(train, "model.safetensors"), b"w")
        smp = job(s, owner, "sample", model_id=model.id)
        midi = job_key(smp, "samples", "000.mid")
        store.put(midi, b"MThd")
        for fmt in ("mp3", "wav", "png"):
            store.put(render_key(sha, fmt), b"r")
        sample = Sample(
            owner_id=owner,
            model_id=model.id,
            job_id=smp,
            index=0,
            midi_key=midi,
            num_tokens=1,
            num_notes=1,
            duration_s=1.0,
            meta={"sha256": sha},
        )
        s.add(sample)
        s.flush()
        return {"corpus": corpus.id, "model": model.id, "sample": sample.id, "tokenize": tok}


def test_deleting_everything_leaves_no_row_and_no_object(
    client: TestClient, settings: Settings
) -> None:
    before = keys(settings)
    ds, files = upload(client, "d", 60, 64)
    made = made_by_jobs(settings, ds, "ab" * 32)
    assert len(keys(settings)) == 2 + 2 + 4 + 1 + 3  # blobs, corpus, model, sample+renders

    r = client.delete(f"/v1/files/{files[0]['id']}")
    assert r.status_code == 200 and r.json()["objects_deleted"] == 1
    r = client.delete(f"/v1/datasets/{ds}")
    assert r.status_code == 200 and r.json()["rows"] == {"files": 1, "datasets": 1}
    assert client.get(f"/v1/datasets/{ds}").status_code == 404
    # The corpus outlives its dataset, and the model trained on it is untouched.
    assert client.get(f"/v1/corpora/{made['corpus']}").json()["dataset_id"] is None
    assert client.get(f"/v1/models/{made['model']}").json()["checkpoints"]

    r = client.delete(f"/v1/corpora/{made['corpus']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "has_dependents"
    assert made["model"] in r.json()["error"]["message"]
    r = client.delete(f"/v1/samples/{made['sample']}")
    assert r.status_code == 200 and r.json()["rows"] == {"samples": 1}
    assert r.json()["objects_deleted"] == 4  # its MIDI and three renderings
    r = client.delete(f"/v1/models/{made['model']}")
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == {"samples": 0, "checkpoints": 2, "metrics": 2, "models": 1}
    assert r.json()["objects_deleted"] == 4 and r.json()["objects_pending"] == 0
    assert client.get(f"/v1/models/{made['model']}").status_code == 404
    assert client.delete(f"/v1/corpora/{made['corpus']}").json()["objects_deleted"] == 2
    for j in client.get("/v1/jobs").json()["jobs"]:
        r = client.delete(f"/v1/jobs/{j['id']}")
        assert r.status_code == 200 and r.json()["rows"]["job_events"] == 1
    assert client.get("/v1/jobs").json()["jobs"] == []

    assert keys(settings) == before
    assert set(counts(settings).values()) == {0}


def test_another_owners_ids_are_not_found(client: TestClient, settings: Settings) -> None:
    ds, files = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "cd" * 32)
    mallory = keyed_client(settings, "mallory")
    stored, rows = keys(settings), counts(settings)
    paths = [
        f"/v1/datasets/{ds}",
        f"/v1/files/{files[0]['id']}",
        f"/v1/corpora/{made['corpus']}",
        f"/v1/models/{made['model']}",
        f"/v1/samples/{made['sample']}",
        f"/v1/jobs/{made['tokenize']}",
        "/v1/datasets/" + "x" * 500,
    ]
    for path in paths:
        r = mallory.delete(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path
        assert r.json() == mallory.get(path).json() or "x" * 500 in path  # the same as GET
    assert keys(settings) == stored and counts(settings) == rows


def test_what_a_queued_or_running_job_uses_is_not_deleted(
    client: TestClient, settings: Settings
) -> None:
    ds, files = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "ef" * 32)
    with session_scope(settings.resolved_database_url) as s:
        owner = s.get(Dataset, ds).owner_id  # type: ignore[union-attr]
        sampling = job(s, owner, "sample", state="running", model_id=made["model"])
        audio = job(s, owner, "audio", state="queued", dataset_id=ds, file_ids=[files[0]["id"]])
    r = client.delete(f"/v1/models/{made['model']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_use"
    assert f"cancel job {sampling}" in r.json()["error"]["message"]
    r = client.delete(f"/v1/files/{files[0]['id']}")
    assert r.status_code == 409 and audio in r.json()["error"]["message"]
    r = client.delete(f"/v1/jobs/{sampling}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "job_active"
    assert "cancel it first" in r.json()["error"]["message"]

    assert client.post(f"/v1/jobs/{audio}/cancel").json()["state"] == "cancelled"
    assert client.delete(f"/v1/files/{files[0]['id']}").status_code == 200
    assert client.delete(f"/v1/jobs/{audio}").status_code == 200


def test_bytes_two_files_share_stay_until_the_last_goes(
    client: TestClient, settings: Settings
) -> None:
    first, _ = upload(client, "a", 60)
    second, _ = upload(client, "b", 60)
    blobs = {k for k in keys(settings) if k.startswith("blobs/")}
    assert len(blobs) == 1
    r = client.delete(f"/v1/datasets/{first}")
    assert r.status_code == 200 and r.json()["objects_deleted"] == 0
    assert blobs <= keys(settings)
    assert client.delete(f"/v1/datasets/{second}").json()["objects_deleted"] == 1
    assert keys(settings) == set() and counts(settings)["pending_deletes"] == 0


def test_a_young_shared_object_is_left_to_the_periodic_sweep(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, sweep_grace_seconds=3600)
    upgrade(settings.resolved_database_url)
    client = keyed_client(settings, "alice")
    ds, _ = upload(client, "d", 60)
    r = client.delete(f"/v1/datasets/{ds}")
    assert r.status_code == 200 and r.json()["objects_pending"] == 1
    assert len(keys(settings)) == 1 and counts(settings)["pending_deletes"] == 1
    from cadenza.sweep import sweep_pending

    assert sweep_pending(settings.model_copy(update={"sweep_grace_seconds": 0})).finished == 1
    assert keys(settings) == set() and counts(settings)["pending_deletes"] == 0


def test_a_models_samples_are_paged(client: TestClient, settings: Settings) -> None:
    ds, _ = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "aa" * 32)
    route = f"/v1/models/{made['model']}/samples"
    for query in ("limit=-1", "limit=0", f"limit={10**20}", "offset=-1", f"offset={10**20}"):
        r = client.get(f"{route}?{query}")
        assert r.status_code == 422 and query.split("=")[0] in r.json()["error"]["message"]
    page = client.get(f"{route}?limit=1&offset=0").json()["samples"]
    assert [s["id"] for s in page] == [made["sample"]]
    assert client.get(f"{route}?limit=1&offset=1").json()["samples"] == []
