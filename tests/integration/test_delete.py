"""Deleting what real jobs made, through the CLI and the HTTP API, on both deployments: every
row goes, and the store holds exactly the objects it held before (compared key by key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cadenza.client import ApiFailure, Client
from cadenza.novelty import INDEX_NAME
from tests.integration.test_e2e import store_keys
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration

CADENZA = str(Path(sys.executable).with_name("cadenza"))


def cadenza(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [CADENZA, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"cadenza {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr  # results on stdout, summaries on stderr


def delete(stack: Stack, kind: str, id: str) -> str:
    """`cadenza KIND delete ID` as a script would run it (no prompt): what it printed."""
    env = {**os.environ, "CADENZA_API_URL": stack.api_url, "CADENZA_API_KEY": stack.api_key}
    printed = cadenza(env, kind, "delete", id)
    assert printed.startswith("deleted "), printed
    return printed


def test_delete_everything_a_pipeline_made(stack: Stack, chorales: list[Path]) -> None:
    client = Client(stack.api_url, stack.api_key)
    mallory = Client(stack.api_url, stack.other_key("mallory-delete"))
    # Objects other tests deleted may still wait out the grace period: gone first, so that
    # the sweep at the end removes only what this test made (the stack is shared).
    cadenza(stack.env, "sweep", "--grace", "0")
    before = store_keys(stack)

    ds = client.create_dataset("to delete")
    files = client.upload(ds["id"], chorales[5:8])
    tokenize = finished(client, client.create_corpus(ds["id"], preset="remi-colab", seed=1))
    train = client.create_model(
        tokenize["corpus_id"],
        architecture="music-transformer",
        preset="tiny",
        train={"max_steps": 4, "eval_interval": 2, "batch_size": 2, "seq_len": 32},
    )
    model_id = train["model_id"]
    finished(client, train)
    sampling = finished(client, client.sample(model_id, n=1, max_new_tokens=16, seed=3))
    assert store_keys(stack) - before, "the pipeline stored nothing"
    # the copy check's index lives beside the corpus and must go with it
    assert any(k.endswith(INDEX_NAME) for k in store_keys(stack) - before)

    paths = [f"/v1/datasets/{ds['id']}", f"/v1/models/{model_id}", f"/v1/jobs/{train['id']}"]
    for path in paths:
        with pytest.raises(ApiFailure) as other:
            mallory.delete(path)
        assert other.value.status == 404
    with pytest.raises(ApiFailure) as used:
        client.delete(f"/v1/corpora/{tokenize['corpus_id']}")
    assert used.value.status == 409 and model_id in used.value.message

    assert client.delete(f"/v1/files/{files[0]['id']}")["rows"] == {"files": 1}
    assert "2 files, 1 datasets" in delete(stack, "datasets", ds["id"])
    # The model trained on a corpus of the deleted dataset still samples.
    again = finished(client, client.sample(model_id, n=1, max_new_tokens=8, seed=4))
    assert "1 samples" in delete(stack, "samples", sampling["sample_ids"][0])
    assert "1 samples, " in delete(stack, "models", model_id)  # the other sample goes with it
    delete(stack, "corpora", tokenize["corpus_id"])
    for job in (tokenize, train, sampling, again):
        assert "1 jobs" in delete(stack, "jobs", job["id"])
    with pytest.raises(ApiFailure) as gone:
        client.get(f"/v1/models/{model_id}")
    assert gone.value.status == 404

    # Blobs written moments ago wait out the grace period; the sweep by hand, without it,
    # removes them (the workers' periodic sweep would, an hour later).
    swept = cadenza(stack.env, "sweep", "--grace", "0")
    assert "0 still wait" in swept, swept
    assert store_keys(stack) == before
