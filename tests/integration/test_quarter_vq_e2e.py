"""A VQ-VAE tokenizer and its prior through the real HTTP API and worker, on both deployments:
a corpus tokenized by a learned VQ-VAE ("quarter-vq"), a tiny GPT prior over its codes, and a
sample decoded to MIDI."""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from cadenza.client import Client
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration

#: A small VQ-VAE that trains in seconds on 2 CPU cores.
TINY_VQ = {
    "channels": [8, 16, 32, 32],
    "residual_blocks": 1,
    "code_dim": 16,
    "codebook_size": 32,
    "batch_size": 16,
    "steps": 1000,
    "lr": 3e-3,
}


def test_quarter_vq_corpus_prior_and_sample(stack: Stack, chorales: list[Path]) -> None:
    client = Client(stack.api_url, stack.api_key)
    ds = client.create_dataset("chorales for a VQ prior")
    files = client.upload(ds["id"], chorales[:3])

    job = client.create_corpus(
        ds["id"], tokenizer="quarter-vq", tokenizer_config=TINY_VQ, seed=1, split=[0.67, 0.33, 0]
    )
    job = finished(client, job)
    corpus = client.get(f"/v1/corpora/{job['corpus_id']}")
    assert corpus["vocab_size"] == 3 + 32
    report = corpus["stats"]["tokenizer"]
    assert report["quarters_fit"] > 50 and report["train"]["cell_f1"] > 0.3, report

    job = client.create_model(
        corpus["id"],
        architecture="gpt",
        preset="tiny",
        train={"max_steps": 20, "eval_interval": 10, "batch_size": 4, "seq_len": 64},
    )
    job = finished(client, job)
    model = client.get(f"/v1/models/{job['model_id']}")
    assert model["state"] == "ready" and model["vocab_size"] == corpus["vocab_size"]
    assert model["train_config"]["window_grid"] == 16  # windows start on a quarter's codes

    job = client.sample(
        model["id"],
        primer_file_id=files[0]["id"],
        primer_bars=1,
        n=1,
        max_new_tokens=64,
        temperature=0.9,
        top_k=16,
        seed=42,
    )
    job = finished(client, job)
    data = client.http.get(f"/v1/samples/{job['sample_ids'][0]}/midi").content
    score = symusic.Score.from_midi(data)
    assert sum(len(t.notes) for t in score.tracks) > 0
