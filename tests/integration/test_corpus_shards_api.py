"""A sharded corpus build through the real HTTP API and real worker processes, both deployments.

Two workers listen on the `cpu` queue (the stack's own plus one started here), so the
`tokenize_shard` parts of one `tokenize` job are spread over processes; the corpus must equal
the one-part build of the same request, and a part that fails must fail the whole job with
its reason and leave no object of the job behind.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadenza.client import Client
from cadenza.config import Settings
from cadenza.storage import open_store
from tests.support.stack import Stack

pytestmark = pytest.mark.integration

BODY: dict[str, Any] = {"tokenizer": "REMI", "bpe": {"vocab_size": 300}, "seed": 2}


@pytest.fixture
def client(stack: Stack) -> Iterator[Client]:
    """A client of `stack`, with a second worker process running for the test's duration."""
    proc = stack.launched.start_worker(name="worker-shards")
    try:
        yield Client(stack.api_url, stack.api_key)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        stack.launched.procs.pop("worker-shards", None)


def store(stack: Stack) -> Any:
    env = {
        k.removeprefix("CADENZA_").lower(): v
        for k, v in stack.env.items()
        if k.startswith("CADENZA_")
    }
    return open_store(Settings(**env))


def dataset(client: Client, chorales: list[Path]) -> tuple[str, list[dict[str, Any]]]:
    ds = client.create_dataset("shards")["id"]
    return ds, client.upload(ds, chorales[:6])


def export(client: Client, corpus_id: str) -> dict[str, np.ndarray]:
    data = client.http.get(f"/v1/corpora/{corpus_id}/export.npz").content
    with np.load(io.BytesIO(data)) as z:
        return {k: np.asarray(z[k]) for k in z.files}


def test_sharded_corpus_equals_the_unsharded_one(client: Client, chorales: list[Path]) -> None:
    ds, _ = dataset(client, chorales)
    one = client.wait(client.create_corpus(ds, shards=1, **BODY)["id"], timeout=120)
    three = client.wait(client.create_corpus(ds, shards=3, **BODY)["id"], timeout=120)
    assert one["state"] == three["state"] == "succeeded", (one, three)
    a = client.get(f"/v1/corpora/{one['corpus_id']}")
    b = client.get(f"/v1/corpora/{three['corpus_id']}")
    assert (a["stats"]["shards"], b["stats"]["shards"]) == (1, 3)
    assert a["tokenizer_hash"] == b["tokenizer_hash"]
    assert a["stats"]["file_splits"] == b["stats"]["file_splits"]
    xa, xb = export(client, a["id"]), export(client, b["id"])
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k])
    parts = client.get("/v1/jobs", type="tokenize_shard")["jobs"]
    mine = [j for j in parts if j["params"]["parent_job_id"] == three["id"]]
    assert sorted(j["params"]["shard"] for j in mine) == [0, 1, 2]
    assert {j["state"] for j in mine} == {"succeeded"} and {j["attempts"] for j in mine} == {1}


def test_a_failing_part_fails_the_job_cleanly(
    stack: Stack, client: Client, chorales: list[Path]
) -> None:
    ds, files = dataset(client, chorales)
    objects = store(stack)
    key = next(o.key for o in objects.list("") if files[-1]["sha256"] in o.key)
    blob = objects.get(key)
    objects.delete(key)  # the store lost the last file: the last part cannot read it
    try:
        job = client.wait(client.create_corpus(ds, shards=3, **BODY)["id"], timeout=120)
    finally:
        # Put it back: the stack is shared, and a later test uploading the same chorale would
        # find its blob row but no object (test_delete saw that as an object left behind).
        objects.put(key, blob)
    assert job["state"] == "failed", job
    assert "part 3 of 3" in job["error"], job["error"]
    assert job["corpus_id"] is None
    assert objects.list(f"jobs/{job['id']}") == []
    parts = client.get("/v1/jobs", type="tokenize_shard")["jobs"]
    mine = [j for j in parts if j["params"]["parent_job_id"] == job["id"]]
    assert len(mine) == 3 and all(j["state"] in ("succeeded", "failed", "cancelled") for j in mine)
    assert not [j for j in client.get("/v1/jobs")["jobs"] if j["state"] in ("queued", "running")]
