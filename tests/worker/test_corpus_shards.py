"""A sharded `tokenize` job through the real API and runner: `tokenize_shard` children, merged.

No Celery worker runs here: the parent job is run by `run_job` in this process, and it claims
and runs its queued shards itself (what a lone worker does), so the fan-out, the fencing of
each child and the merge are all exercised against a real database and object store.
`tests/integration/test_corpus_shards_api.py` runs shards on several real worker processes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Corpus, File, Job
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza.jobs.fanout import child_id
from cadenza.jobs.runner import run_job
from cadenza.novelty import index_key
from cadenza.storage import open_store
from cadenza_api.app import create_app

BODY = {"tokenizer": "REMI", "bpe": {"vocab_size": 300}, "seed": 4, "split": [0.6, 0.2, 0.2]}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="shards")
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    yield c


def dataset(client: TestClient, chorales: list[Path]) -> str:
    ds: str = client.post("/v1/datasets", json={"name": "shards"}).json()["id"]
    files = [("files", (p.name, p.read_bytes())) for p in chorales[:7]]
    assert client.post(f"/v1/datasets/{ds}/files", files=files).status_code == 201
    return ds


def corpus(client: TestClient, settings: Settings, ds: str, **extra: Any) -> dict[str, Any]:
    job = client.post("/v1/corpora", json={"dataset_id": ds, **BODY, **extra})
    assert job.status_code == 202, job.text
    run_job(job.json()["id"], settings)
    return dict(client.get(f"/v1/jobs/{job.json()['id']}").json())


def arrays(client: TestClient, corpus_id: str) -> dict[str, np.ndarray]:
    data = client.get(f"/v1/corpora/{corpus_id}/export.npz").content
    with np.load(io.BytesIO(data)) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def children(settings: Settings, parent: str, n: int) -> list[Job]:
    with session_scope(settings.resolved_database_url) as s:
        rows = [r for k in range(n) if (r := s.get(Job, child_id(parent, k))) is not None]
        for r in rows:
            s.expunge(r)
    return rows


def test_sharded_job_builds_the_same_corpus_as_one_process(
    client: TestClient, settings: Settings, chorales: list[Path]
) -> None:
    ds = dataset(client, chorales)
    one = corpus(client, settings, ds, shards=1)
    three = corpus(client, settings, ds, shards=3)
    assert one["state"] == three["state"] == "succeeded", (one, three)
    a = client.get(f"/v1/corpora/{one['corpus_id']}").json()
    b = client.get(f"/v1/corpora/{three['corpus_id']}").json()
    assert a["stats"]["shards"] == 1 and b["stats"]["shards"] == 3
    assert a["stats"]["file_splits"] == b["stats"]["file_splits"]
    assert a["tokenizer_hash"] == b["tokenizer_hash"] and a["vocab_size"] == b["vocab_size"]
    xa, xb = arrays(client, a["id"]), arrays(client, b["id"])
    assert xa.keys() == xb.keys() == {"train_data", "val_data", "test_data"}
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k])
    # the copy check's index is built with the corpus, the same from one process or parts
    store = open_store(settings)
    with session_scope(settings.resolved_database_url) as s:
        prefixes = [s.get(Corpus, c["id"]).object_prefix for c in (a, b)]  # type: ignore[union-attr]
    index_a, index_b = (store.get(index_key(p)) for p in prefixes)
    assert index_a == index_b and len(index_a) > 1000
    assert a["stats"]["novelty_index"]["ngrams"] == b["stats"]["novelty_index"]["ngrams"] > 0
    shards = children(settings, three["id"], 3)
    assert [j.state for j in shards] == ["succeeded"] * 3
    assert [j.type for j in shards] == ["tokenize_shard"] * 3
    assert [j.attempts for j in shards] == [1, 1, 1]  # each part ran once
    # the parts' spools and manifests are gone once merged
    assert open_store(settings).list(f"jobs/{three['id']}/shards") == []


def test_a_failing_shard_fails_the_job_and_leaves_nothing(
    client: TestClient, settings: Settings, chorales: list[Path]
) -> None:
    ds = dataset(client, chorales)
    store = open_store(settings)
    with session_scope(settings.resolved_database_url) as s:
        last = s.scalars(select(File).where(File.dataset_id == ds).order_by(File.created_at)).all()
        store.delete(last[-1].object_key)  # the object store lost one file: its part fails
    job = corpus(client, settings, ds, shards=3)
    assert job["state"] == "failed", job
    assert "part 3 of 3" in job["error"] and "tokenize_shard" in job["error"], job["error"]
    assert [j.state for j in children(settings, job["id"], 3)] == ["succeeded"] * 2 + ["failed"]
    assert store.list(f"jobs/{job['id']}") == []
    with session_scope(settings.resolved_database_url) as s:
        assert s.scalars(select(Corpus)).all() == []
        assert all(j.state in ("succeeded", "failed", "cancelled") for j in s.scalars(select(Job)))


def test_a_cancelled_part_ends_the_job_and_the_other_parts(
    client: TestClient, settings: Settings, chorales: list[Path]
) -> None:
    """A part cancelled by hand (`POST /v1/jobs/{part}/cancel`) fails its parent, which cancels
    the parts not yet run instead of running them."""
    from cadenza.db.models import Owner
    from cadenza.jobs.state import create_job, request_cancel

    ds = dataset(client, chorales)
    job = client.post("/v1/corpora", json={"dataset_id": ds, **BODY, "shards": 3}).json()
    with session_scope(settings.resolved_database_url) as s:
        owner = s.scalars(select(Owner)).one()
        part = create_job(
            s, owner_id=owner.id, type="tokenize_shard", params={}, job_id=child_id(job["id"], 0)
        )
        s.commit()
        request_cancel(s, part)
    run_job(job["id"], settings)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "failed" and "part 1 of 3" in final["error"], final
    assert "cancelled" in final["error"]
    # parts 2 and 3 were queued: cancelled before they started, never run
    states = [(j.state, j.attempts) for j in children(settings, job["id"], 3)]
    assert states == [("cancelled", 0)] * 3
    assert open_store(settings).list(f"jobs/{job['id']}") == []


def test_cancelling_the_job_waits_for_every_part_and_leaves_nothing(
    client: TestClient, settings: Settings, chorales: list[Path]
) -> None:
    """Part 1 is held by "another worker" (this test claims it), so the job runs parts 2–7
    itself, then waits. Cancelling the job flags part 1 and the job keeps waiting until that
    part ended; only then does it delete its objects and end cancelled."""
    import threading
    import time

    from cadenza.db.models import Owner
    from cadenza.jobs.state import JobState, claim, create_job, finish

    ds = dataset(client, chorales)
    job = client.post("/v1/corpora", json={"dataset_id": ds, **BODY, "shards": 7}).json()
    with session_scope(settings.resolved_database_url) as s:
        owner = s.scalars(select(Owner)).one()
        create_job(
            s, owner_id=owner.id, type="tokenize_shard", params={}, job_id=child_id(job["id"], 0)
        )
        s.commit()
        held = claim(s, child_id(job["id"], 0), lease_seconds=600)
        assert held is not None
        token = held.claim_token
    fast = settings.model_copy(update={"job_lease_seconds": 3})  # notices the cancel in ~1 s
    runner = threading.Thread(target=run_job, args=(job["id"], fast))
    runner.start()

    def until(ok: Any) -> None:
        deadline = time.monotonic() + 120
        while not ok():
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)

    until(lambda: [j.state for j in children(settings, job["id"], 7)[1:]] == ["succeeded"] * 6)
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    until(lambda: children(settings, job["id"], 1)[0].cancel_requested)
    time.sleep(1.5)  # the job must still be waiting for part 1
    assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
    with session_scope(settings.resolved_database_url) as s:  # "the other worker" stops
        assert finish(s, child_id(job["id"], 0), JobState.CANCELLED, token=token)
        s.commit()
    runner.join(timeout=120)
    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["state"] == "cancelled", final
    states = [j.state for j in children(settings, job["id"], 7)]
    assert states == ["cancelled"] + ["succeeded"] * 6
    assert open_store(settings).list(f"jobs/{job['id']}") == []
