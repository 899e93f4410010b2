"""Shared base models through the API in-process (real SQLite and local store, no worker):
publishing, what another owner may and may not read, adapter requests and their 422s, and
what deleting or unpublishing a base with adapters does.

The models and corpora are the rows their jobs would have made (written here directly, so no
training runs); tests/integration/test_lora.py trains a real base and adapter end to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Checkpoint, Corpus, Dataset, Job, Model, new_id
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza.storage import job_key, open_store
from cadenza_api.app import create_app
from tests.support.music import midi_bytes

GPT = {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 128, "dropout": 0.0, "bias": True}
SPEC = {"name": "REMI", "bpe": {"vocab_size": 500}}
MIDI = {"content-type": "audio/midi"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, sweep_grace_seconds=0)
    upgrade(s.resolved_database_url)
    return s


def keyed(settings: Settings, owner: str, scopes: tuple[str, ...] | None = None) -> TestClient:
    with session_scope(settings.resolved_database_url) as s:
        options: dict[str, Any] = {"scopes": scopes} if scopes else {}
        _, key = create_api_key(session=s, owner_name=owner, **options)
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    return c


@pytest.fixture
def alice(settings: Settings) -> Iterator[TestClient]:
    yield keyed(settings, "alice")


@pytest.fixture
def bob(settings: Settings) -> Iterator[TestClient]:
    yield keyed(settings, "bob")


def midi_dataset(client: TestClient) -> str:
    ds = client.post("/v1/datasets", json={"name": "d"}).json()["id"]
    files = [("files", ("a.mid", midi_bytes([(i * 240, 240, 60 + i % 7, 80) for i in range(16)])))]
    assert client.post(f"/v1/datasets/{ds}/files", files=files).status_code == 201
    return ds


def corpus_row(settings: Settings, dataset_id: str, tokenizer_hash: str = "h") -> str:
    """A finished corpus of the dataset's owner, as a tokenize job leaves it."""
    store = open_store(settings)
    with session_scope(settings.resolved_database_url) as s:
        owner = s.get(Dataset, dataset_id).owner_id  # type: ignore[union-attr]
        tok = new_id()
        s.add(Job(id=tok, owner_id=owner, type="tokenize", queue="cpu", state="succeeded"))
        prefix = job_key(tok, "corpus")
        store.put(f"{prefix}/export.npz", b"x")
        corpus = Corpus(
            owner_id=owner,
            dataset_id=dataset_id,
            job_id=tok,
            params={"tokenizer_spec": SPEC},
            tokenizer_key=f"{prefix}/tokenizer.json",
            tokenizer_hash=tokenizer_hash,
            vocab_size=500,
            object_prefix=prefix,
        )
        s.add(corpus)
        s.flush()
        return corpus.id


def model_row(settings: Settings, corpus_id: str, state: str = "ready") -> str:
    """A trained gpt with one checkpoint, weights and a loss curve."""
    store = open_store(settings)
    with session_scope(settings.resolved_database_url) as s:
        corpus = s.get(Corpus, corpus_id)
        assert corpus is not None
        train = new_id()
        s.add(Job(id=train, owner_id=corpus.owner_id, type="train", queue="gpu", state="succeeded"))
        model = Model(
            owner_id=corpus.owner_id,
            corpus_id=corpus_id,
            job_id=train,
            architecture="gpt",
            preset="tiny",
            config=GPT,
            vocab_size=500,
            tokenizer_hash=corpus.tokenizer_hash,
            state=state,
        )
        s.add(model)
        s.flush()
        key = job_key(train, "checkpoints", "step-000000010.pt")
        store.put(key, b"ckpt")
        store.put(job_key(train, "model.safetensors"), b"w")
        store.put(job_key(train, "loss.png"), b"png")
        s.add(
            Checkpoint(
                model_id=model.id, job_id=train, step=10, object_key=key, size=4, is_best=True
            )
        )
        return model.id


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json()["error"])


def test_a_public_model_is_seen_and_sampled_never_read(
    settings: Settings, alice: TestClient, bob: TestClient
) -> None:
    ds = midi_dataset(alice)
    corpus = corpus_row(settings, ds)
    model = model_row(settings, corpus)
    ckpt = alice.get(f"/v1/models/{model}").json()["checkpoints"][0]["id"]
    assert alice.get(f"/v1/models/{model}").json()["visibility"] == "private"

    # Private: another owner cannot see it, sample it, adapt it, or publish it.
    assert bob.get(f"/v1/models/{model}").status_code == 404
    assert bob.post(f"/v1/models/{model}/samples", json={}).status_code == 404
    r = bob.post(f"/v1/models/{model}/continue?wait=0", content=b"MThd", headers=MIDI)
    assert r.status_code == 404
    assert error(bob.patch(f"/v1/models/{model}", json={"visibility": "public"}), 404)
    bob_ds = midi_dataset(bob)
    r = bob.post("/v1/corpora", json={"dataset_id": bob_ds, "base_model_id": model})
    assert error(r, 404)["code"] == "not_found"
    assert bob.get("/v1/models", params={"public": "true"}).json() == []

    r = alice.patch(f"/v1/models/{model}", json={"visibility": "everyone"})
    assert "visibility" in error(r, 422)["message"]
    r = alice.patch(f"/v1/models/{model}", json={"visibility": "public"})
    assert r.status_code == 200 and r.json()["visibility"] == "public"

    # Public: bob sees and samples it...
    seen = bob.get(f"/v1/models/{model}")
    assert seen.status_code == 200 and seen.json()["checkpoints"][0]["id"] == ckpt
    assert [m["id"] for m in bob.get("/v1/models", params={"public": "true"}).json()] == [model]
    assert bob.get("/v1/models").json() == []  # his own list stays his
    r = bob.post(f"/v1/models/{model}/samples", json={"n": 1, "max_new_tokens": 8})
    assert r.status_code == 202, r.text
    assert bob.get(f"/v1/models/{model}/samples").json() == {"samples": []}
    song = midi_bytes([(i * 240, 240, 60 + i % 5, 80) for i in range(16)])
    r = bob.post(
        f"/v1/models/{model}/continue?wait=0&max_new_tokens=8",
        content=song,
        headers=MIDI,
    )
    assert r.status_code == 202, r.text
    # ...but never reads its corpus, dataset, checkpoint files, weights or loss curve.
    for path in (
        f"/v1/corpora/{corpus}",
        f"/v1/corpora/{corpus}/export.npz",
        f"/v1/datasets/{ds}",
        f"/v1/models/{model}/checkpoints/{ckpt}",
        f"/v1/models/{model}/weights.safetensors",
        f"/v1/models/{model}/loss.png",
    ):
        assert bob.get(path).status_code == 404, path
    assert bob.delete(f"/v1/models/{model}").status_code == 404
    assert bob.patch(f"/v1/models/{model}", json={"visibility": "private"}).status_code == 404

    # An admin key may publish and unpublish anyone's model.
    carol = keyed(settings, "carol", ("read", "admin"))
    r = carol.patch(f"/v1/models/{model}", json={"visibility": "private"})
    assert r.status_code == 200 and r.json()["visibility"] == "private"
    assert bob.get(f"/v1/models/{model}").status_code == 404


def test_adapter_requests_are_checked_naming_the_field(
    settings: Settings, alice: TestClient, bob: TestClient
) -> None:
    base = model_row(settings, corpus_row(settings, midi_dataset(alice)))
    alice.patch(f"/v1/models/{base}", json={"visibility": "public"})
    bob_ds = midi_dataset(bob)

    # A corpus for the base: its tokenizer, and no other.
    r = bob.post("/v1/corpora", json={"dataset_id": bob_ds, "base_model_id": base})
    assert r.status_code == 202, r.text
    with session_scope(settings.resolved_database_url) as s:
        params = s.get(Job, r.json()["id"]).params  # type: ignore[union-attr]
    assert params["base_model_id"] == base and params["tokenizer_spec"]["bpe"]["vocab_size"] == 500
    for extra in ({"tokenizer": "TSD"}, {"preset": "remi-colab"}, {"bpe": {"vocab_size": 900}}):
        r = bob.post("/v1/corpora", json={"dataset_id": bob_ds, "base_model_id": base, **extra})
        field = next(iter(extra))
        assert error(r, 422)["details"][0]["field"] == field
        assert "base_model_id" in r.json()["error"]["message"]

    ours = corpus_row(settings, bob_ds, tokenizer_hash="h")  # as built with base_model_id
    other = corpus_row(settings, bob_ds, tokenizer_hash="x")  # built with its own tokenizer
    lora = {"type": "lora", "rank": 8, "alpha": 16}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"corpus_id": other, "base_model_id": base, "adapter": lora}, "base_model_id"),
        ({"corpus_id": ours, "adapter": lora}, "base_model_id"),
        ({"corpus_id": ours, "base_model_id": base}, "adapter"),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": {**lora, "rank": 0}},
            "adapter.rank",
        ),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": {**lora, "rank": 300}},
            "adapter.rank",
        ),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": {**lora, "targets": ["wte"]}},
            "adapter.targets",
        ),
        ({"corpus_id": ours, "base_model_id": base, "adapter": {"type": "ia3"}}, "adapter.type"),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": lora, "config": {"n_layer": 9}},
            "config",
        ),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": lora, "architecture": "lstm"},
            "architecture",
        ),
        (
            {"corpus_id": ours, "base_model_id": base, "adapter": lora, "train": {"lr": 5}},
            "train.lr",
        ),
    ]
    for body, field in cases:
        err = error(bob.post("/v1/models", json=body), 422)
        assert err["details"][0]["field"] == field, (body, err)
    err = error(bob.post("/v1/models", json=cases[0][0]), 422)
    assert "build the corpus with" in err["message"] and "base_model_id" in err["message"]

    r = bob.post("/v1/models", json={"corpus_id": ours, "base_model_id": base, "adapter": lora})
    assert r.status_code == 202, r.text
    adapter = bob.get(f"/v1/models/{r.json()['model_id']}").json()
    assert adapter["base_model_id"] == base and adapter["architecture"] == "gpt"
    assert adapter["adapter"] == {
        **lora,
        "alpha": 16.0,
        "dropout": 0.0,
        "targets": ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"],
    }
    assert adapter["config"] == GPT
    # An adapter cannot be the base of another adapter.
    r = bob.post(
        "/v1/models",
        json={"corpus_id": ours, "base_model_id": adapter["id"], "adapter": lora},
    )
    assert error(r, 422)["details"][0]["field"] == "base_model_id"

    # A base still training is not adaptable yet; a private one is not found.
    training = model_row(settings, corpus_row(settings, midi_dataset(alice)), state="training")
    alice.patch(f"/v1/models/{training}", json={"visibility": "public"})
    body = {"corpus_id": ours, "base_model_id": training, "adapter": lora}
    assert error(bob.post("/v1/models", json=body), 409)["code"] == "model_not_ready"
    alice.patch(f"/v1/models/{training}", json={"visibility": "private"})
    assert error(bob.post("/v1/models", json=body), 404)["code"] == "not_found"


def test_a_base_with_adapters_stays_until_they_are_deleted(
    settings: Settings, alice: TestClient, bob: TestClient
) -> None:
    base = model_row(settings, corpus_row(settings, midi_dataset(alice)))
    alice.patch(f"/v1/models/{base}", json={"visibility": "public"})
    ours = corpus_row(settings, midi_dataset(bob))
    r = bob.post(
        "/v1/models",
        json={"corpus_id": ours, "base_model_id": base, "adapter": {"type": "lora", "rank": 2}},
    )
    adapter = r.json()["model_id"]
    with session_scope(settings.resolved_database_url) as s:
        s.get(Job, r.json()["id"]).state = "succeeded"  # type: ignore[union-attr]

    err = error(alice.delete(f"/v1/models/{base}"), 409)
    assert err["code"] == "has_dependents" and adapter in err["message"]
    err = error(alice.patch(f"/v1/models/{base}", json={"visibility": "private"}), 409)
    assert err["code"] == "has_dependents" and adapter in err["message"]

    assert bob.delete(f"/v1/models/{adapter}").status_code == 200
    assert alice.patch(f"/v1/models/{base}", json={"visibility": "private"}).status_code == 200
    assert alice.delete(f"/v1/models/{base}").status_code == 200


def test_the_cli_publishes_and_adapts(
    settings: Settings, alice: TestClient, bob: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from cadenza.cli import app
    from cadenza.cli import client as cli
    from cadenza.client import Client

    base = model_row(settings, corpus_row(settings, midi_dataset(alice)))
    bob_ds = midi_dataset(bob)
    ours = corpus_row(settings, bob_ds)
    as_whom = {"who": alice}

    api = create_app(settings)

    def connected(url: str, key: str | None) -> Client:
        c = Client(url, key)  # the in-process API, as alice or bob (the CLI closes it)
        c.http = TestClient(api, headers=dict(as_whom["who"].headers))
        return c

    monkeypatch.setattr(cli, "Client", connected)
    monkeypatch.setenv("CADENZA_API_KEY", "cz_unused")
    run = CliRunner().invoke
    r = run(app, ["models", "publish", base])
    assert r.exit_code == 0 and "public" in r.output, r.output
    as_whom["who"] = bob
    r = run(app, ["models", "list", "--public"])
    assert r.exit_code == 0 and base[:12] in r.output, r.output
    r = run(app, ["corpora", "create", bob_ds, "--base-model", base, "--no-wait"])
    assert r.exit_code == 0 and '"tokenize"' in r.output, r.output
    args = ["models", "create", ours, "--base-model", base, "--lora-rank", "4", "--no-wait"]
    r = run(app, [*args, "--lora-targets", "attn.c_attn, mlp.c_fc"])
    assert r.exit_code == 0, r.output
    with session_scope(settings.resolved_database_url) as s:
        adapter = s.query(Model).filter(Model.base_model_id == base).one().adapter
    assert adapter is not None and adapter["rank"] == 4
    assert adapter["targets"] == ["attn.c_attn", "mlp.c_fc"]
    r = run(app, [*args, "--lora-targets", "lm_head"])
    assert r.exit_code == 1 and "adapter.targets" in r.output, r.output


def test_a_public_base_stays_while_another_owner_builds_a_corpus_with_it(
    settings: Settings, alice: TestClient, bob: TestClient
) -> None:
    base = model_row(settings, corpus_row(settings, midi_dataset(alice)))
    alice.patch(f"/v1/models/{base}", json={"visibility": "public"})
    r = bob.post("/v1/corpora", json={"dataset_id": midi_dataset(bob), "base_model_id": base})
    assert r.status_code == 202, r.text
    err = error(alice.delete(f"/v1/models/{base}"), 409)
    assert err["code"] == "in_use" and r.json()["id"] in err["message"]
    with session_scope(settings.resolved_database_url) as s:
        s.get(Job, r.json()["id"]).state = "cancelled"  # type: ignore[union-attr]
    assert alice.delete(f"/v1/models/{base}").status_code == 200
