"""Continuing a sample (`primer_sample_id`) and its lineage, in-process (real SQLite, real
local store, no worker): the request's checks, `parent_sample_id`, the lineage route, and what
a delete does to the chain. The rows are the ones the jobs would have made (written here
directly); tests/integration/test_sample_lineage.py continues a real sample through a worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Sample
from cadenza.db.repo import sample_lineage
from cadenza.db.session import session_scope
from tests.api.test_delete import job, keyed_client, made_by_jobs, upload


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, sweep_grace_seconds=0)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return keyed_client(settings, "alice")


def continued(settings: Settings, parent_id: str, *, n: int = 1) -> list[str]:
    """`n` generations of samples, each continuing the one before, as sample jobs make them."""
    ids: list[str] = []
    with session_scope(settings.resolved_database_url) as s:
        parent = s.get(Sample, parent_id)
        assert parent is not None
        for _ in range(n):
            smp = job(s, parent.owner_id, "sample", model_id=parent.model_id)
            row = Sample(
                owner_id=parent.owner_id,
                model_id=parent.model_id,
                job_id=smp,
                index=0,
                params={"primer_sample_id": parent.id},
                midi_key=parent.midi_key,
                num_tokens=1,
                num_notes=1,
                duration_s=1.0,
                meta={"sha256": parent.meta["sha256"]},
                parent_sample_id=parent.id,
            )
            s.add(row)
            s.flush()
            ids.append(row.id)
            parent = row
    return ids


def test_a_primer_sample_is_checked_before_anything_is_queued(
    client: TestClient, settings: Settings
) -> None:
    ds, files = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "ab" * 32)
    route = f"/v1/models/{made['model']}/samples"
    sample = made["sample"]
    for body, named in [
        ({"primer_sample_id": sample, "primer_file_id": files[0]["id"]}, "primer_file_id"),
        ({"primer_sample_id": sample, "primer_tokens": [1, 2]}, "primer_tokens"),
        ({"primer_bars": 2}, "primer_sample_id"),
        ({"primer_sample_id": sample, "force_tokens": ["Bar_None"]}, "force_tokens"),
        ({"primer_sample_id": "x" * 65}, "primer_sample_id"),
    ]:
        r = client.post(route, json=body)
        assert r.status_code == 422, (body, r.text)
        message = r.json()["error"]["message"]
        assert named in message and ("primer_sample_id" in message or "force" in named), body

    r = client.post(route, json={"primer_sample_id": "0" * 32})
    assert r.status_code == 404 and r.json()["error"] == {
        "code": "not_found",
        "message": f"sample {'0' * 32} not found",
    }
    mallory = keyed_client(settings, "mallory")
    their_ds, _ = upload(mallory, "m", 62)
    their_model = made_by_jobs(settings, their_ds, "cd" * 32)["model"]
    r = mallory.post(f"/v1/models/{their_model}/samples", json={"primer_sample_id": sample})
    assert r.status_code == 404
    assert r.json() == mallory.get(f"/v1/samples/{sample}").json()  # the same as a GET
    assert client.get("/v1/jobs?state=queued").json()["jobs"] == []

    # A sample of this (or any) model of the owner's: queued, with the primer cut like a file.
    body = {"primer_sample_id": sample, "primer_bars": 2, "n": 2}
    r = client.post(route, json=body)
    assert r.status_code == 202, r.text
    queued = r.json()
    assert queued["params"]["primer_sample_id"] == sample and queued["params"]["primer_bars"] == 2

    # The sample that job continues, and the model it belongs to, stay until it ends.
    r = client.delete(f"/v1/samples/{sample}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_use"
    assert f"cancel job {queued['id']}" in r.json()["error"]["message"]
    r = client.delete(f"/v1/models/{made['model']}")
    assert r.status_code == 409 and queued["id"] in r.json()["error"]["message"]
    assert client.post(f"/v1/jobs/{queued['id']}/cancel").json()["state"] == "cancelled"
    assert client.delete(f"/v1/samples/{sample}").status_code == 200


def test_lineage_lists_the_chain_and_a_delete_unlinks_without_deleting(
    client: TestClient, settings: Settings
) -> None:
    ds, _ = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "ab" * 32)
    root = made["sample"]
    child, grandchild = continued(settings, root, n=2)

    got = client.get(f"/v1/samples/{grandchild}/lineage").json()
    assert [s["id"] for s in got["samples"]] == [root, child, grandchild]
    assert [s["parent_sample_id"] for s in got["samples"]] == [None, root, child]
    assert got["truncated"] is False
    assert all(s["model_id"] == made["model"] and s["created_at"] for s in got["samples"])
    assert client.get(f"/v1/samples/{root}/lineage").json()["samples"][0]["id"] == root
    # parent_sample_id is in every answer that holds a sample.
    assert client.get(f"/v1/samples/{child}").json()["parent_sample_id"] == root
    listed = client.get(f"/v1/models/{made['model']}/samples").json()["samples"]
    assert {s["id"]: s["parent_sample_id"] for s in listed} == {
        root: None,
        child: root,
        grandchild: child,
    }

    mallory = keyed_client(settings, "mallory")
    r = mallory.get(f"/v1/samples/{grandchild}/lineage")
    assert r.status_code == 404 and r.json() == mallory.get(f"/v1/samples/{grandchild}").json()
    assert client.get("/v1/samples/" + "0" * 32 + "/lineage").status_code == 404

    # Deleting the middle one keeps both others; the chain ends at the survivor.
    r = client.delete(f"/v1/samples/{child}")
    assert r.status_code == 200 and r.json()["rows"] == {"samples": 1}
    assert client.get(f"/v1/samples/{grandchild}").json()["parent_sample_id"] is None
    got = client.get(f"/v1/samples/{grandchild}/lineage").json()
    assert [s["id"] for s in got["samples"]] == [grandchild] and got["truncated"] is False
    assert client.get(f"/v1/samples/{root}").status_code == 200

    # A model's delete takes its samples; a child of another model would only lose the link
    # (tests/unit/test_sample_lineage.py checks that on both databases).
    r = client.delete(f"/v1/models/{made['model']}")
    assert r.status_code == 200 and r.json()["rows"]["samples"] == 2


def test_a_lineage_that_loops_or_runs_deep_ends(client: TestClient, settings: Settings) -> None:
    ds, _ = upload(client, "d", 60)
    root = made_by_jobs(settings, ds, "ab" * 32)["sample"]
    chain = [root, *continued(settings, root, n=4)]
    with session_scope(settings.resolved_database_url) as s:
        owner = s.get(Sample, root).owner_id  # type: ignore[union-attr]
        deep, truncated = sample_lineage(s, chain[-1], owner, max_depth=2)
        assert [r.id for r in deep] == chain[-3:] and truncated
        # The API cannot make a loop; a hand-edited row must not make the walk endless.
        s.execute(update(Sample).where(Sample.id == root).values(parent_sample_id=chain[-1]))
    got = client.get(f"/v1/samples/{chain[2]}/lineage").json()
    assert [s["id"] for s in got["samples"]] == [chain[3], chain[4], root, chain[1], chain[2]]
    assert got["truncated"] is True
