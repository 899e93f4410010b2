"""A shared base model and another owner's LoRA adapter, through HTTP and a real worker.

alice trains and publishes a small base on four chorales; bob tokenizes four others with the
base's tokenizer (BPE vocabulary included), trains an adapter, and samples both. Embedded
deployment only: what is new here is API and job logic, which the production stack runs
the same way.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import symusic

from cadenza.client import ApiFailure, Client
from tests.support.stack import Stack, finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_a_public_base_is_adapted_and_sampled_by_another_owner(
    embedded_stack: Stack, chorales: list[Path]
) -> None:
    alice = Client(embedded_stack.api_url, embedded_stack.api_key)
    bob = Client(embedded_stack.api_url, embedded_stack.other_key("bob-lora"))
    steps = {"batch_size": 4, "seq_len": 64, "warmup_steps": 2, "eval_interval": 10}

    ds = alice.create_dataset("bach-a")
    alice.upload(ds["id"], chorales[:4])
    job = finished(alice, alice.create_corpus(ds["id"], tokenizer="REMI", bpe={"vocab_size": 400}))
    base_corpus = alice.get(f"/v1/corpora/{job['corpus_id']}")
    job = alice.create_model(
        base_corpus["id"], architecture="gpt", preset="tiny", train={**steps, "max_steps": 20}
    )
    base_id = finished(alice, job)["model_id"]
    assert alice.set_visibility(base_id, "public")["visibility"] == "public"

    mine = bob.create_dataset("bach-b")
    bob.upload(mine["id"], chorales[4:8])
    job = finished(bob, bob.create_corpus(mine["id"], base_model_id=base_id))
    corpus = bob.get(f"/v1/corpora/{job['corpus_id']}")
    assert corpus["tokenizer_hash"] == base_corpus["tokenizer_hash"]
    assert corpus["vocab_size"] == base_corpus["vocab_size"]
    with pytest.raises(ApiFailure) as exc:
        bob.get(f"/v1/corpora/{base_corpus['id']}")
    assert exc.value.status == 404

    lora = {"type": "lora", "rank": 4, "alpha": 8, "targets": ["attn.c_attn", "mlp.c_fc"]}
    job = bob.create_model(
        corpus["id"],
        base_model_id=base_id,
        adapter=lora,
        train={**steps, "max_steps": 10, "lr": 3e-3},
    )
    adapter = bob.get(f"/v1/models/{finished(bob, job)['model_id']}")
    assert adapter["state"] == "ready" and adapter["base_model_id"] == base_id
    assert adapter["summary"]["trainable_params"] < adapter["summary"]["num_params"] // 20
    base = bob.get(f"/v1/models/{base_id}")  # public: bob sees its checkpoints' sizes
    biggest = max(c["size"] for c in base["checkpoints"])
    assert adapter["checkpoints"] and all(c["size"] < biggest / 10 for c in adapter["checkpoints"])
    weights = bob.http.get(f"/v1/models/{adapter['id']}/weights.safetensors")
    assert weights.status_code == 200 and len(weights.content) < biggest / 10
    assert bob.http.get(f"/v1/models/{base_id}/weights.safetensors").status_code == 404

    for model_id in (base_id, adapter["id"]):
        job = finished(bob, bob.sample(model_id, n=1, max_new_tokens=48, seed=3))
        data = bob.http.get(f"/v1/samples/{job['sample_ids'][0]}/midi").content
        assert sum(len(t.notes) for t in symusic.Score.from_midi(data).tracks) > 0

    with pytest.raises(ApiFailure) as exc:
        alice.delete(f"/v1/models/{base_id}")
    assert exc.value.status == 409 and adapter["id"] in exc.value.message
