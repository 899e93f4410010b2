"""Style tags on datasets and files, controls on corpora, and sample requests checked against
a model's capabilities: each bad value is a 422 naming the field."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.models import Checkpoint, Corpus, Dataset, Model, new_id
from cadenza.db.session import session_scope
from cadenza.tokenize.controls import capabilities
from tests.api.test_api import client, dataset, settings, tiny_midi  # noqa: F401
from tests.api.test_delete import job


def _error(r: Any, field: str) -> str:
    assert r.status_code == 422, r.text
    message = str(r.json()["error"]["message"])
    assert field in message, message
    return message


def test_tags_on_datasets_and_files(client: TestClient) -> None:  # noqa: F811
    r = client.post("/v1/datasets", json={"name": "d", "tags": ["baroque", "mine-2019"]})
    assert r.status_code == 201 and r.json()["tags"] == ["baroque", "mine-2019"]
    ds = r.json()["id"]
    _error(client.post("/v1/datasets", json={"name": "d", "tags": ["Baroque"]}), "tags")
    _error(
        client.post("/v1/datasets", json={"name": "d", "tags": [f"t{i}" for i in range(17)]}),
        "tags",
    )
    _error(client.patch(f"/v1/datasets/{ds}", json={"tags": ["x" * 41]}), "tags")
    r = client.patch(f"/v1/datasets/{ds}", json={"tags": ["chorale", "bach"]})
    assert r.status_code == 200 and r.json()["tags"] == ["bach", "chorale"]
    assert client.get(f"/v1/datasets/{ds}").json()["tags"] == ["bach", "chorale"]
    fid = client.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.mid", tiny_midi()))]).json()[
        "files"
    ][0]["id"]
    r = client.patch(f"/v1/files/{fid}", json={"tags": ["late_work"]})
    assert r.status_code == 200 and r.json()["tags"] == ["late_work"]
    _error(client.patch(f"/v1/files/{fid}", json={"tags": ["no spaces"]}), "tags")
    assert client.patch(f"/v1/files/{'0' * 32}", json={"tags": []}).status_code == 404


def test_corpus_controls_are_checked_per_tokenizer(client: TestClient) -> None:  # noqa: F811
    ds = dataset(client)
    client.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.mid", tiny_midi()))])
    body = {"dataset_id": ds, "tokenizer": "TSD", "controls": ["note_density"]}
    assert "REMI" in _error(client.post("/v1/corpora", json=body), "controls")
    body = {"dataset_id": ds, "tokenizer": "midichar", "controls": ["key"]}
    _error(client.post("/v1/corpora", json=body), "controls")
    body = {"dataset_id": ds, "tokenizer": "REMI", "controls": ["loudness"]}
    _error(client.post("/v1/corpora", json=body), "controls")
    body = {"dataset_id": ds, "tokenizer": "REMI", "bpe": {"vocab_size": 600}, "learn_tags": True}
    assert client.post("/v1/corpora", json=body).status_code == 202  # controls and BPE go together
    body = {
        "dataset_id": ds,
        "tokenizer": "REMI",
        "controls": ["note_density", "key"],
        "learn_tags": True,
    }
    r = client.post("/v1/corpora", json=body)
    assert r.status_code == 202, r.text


def _model(
    settings: Settings,  # noqa: F811
    dataset_id: str,
    caps: dict[str, Any] | None,
    params: dict[str, Any] | None = None,
) -> str:
    """A ready model with a checkpoint whose corpus learned `caps` (as the jobs leave them)
    and was made with `params`."""
    with session_scope(settings.resolved_database_url) as s:
        owner = s.get(Dataset, dataset_id).owner_id  # type: ignore[union-attr]
        corpus = Corpus(
            owner_id=owner,
            dataset_id=dataset_id,
            job_id=job(s, owner, "tokenize"),
            tokenizer_key="k",
            tokenizer_hash="h",
            vocab_size=900,
            object_prefix="p",
            stats={"capabilities": caps} if caps else {},
            params=params or {},
        )
        s.add(corpus)
        s.flush()
        train = new_id()
        model = Model(
            owner_id=owner,
            corpus_id=corpus.id,
            job_id=train,
            architecture="a",
            vocab_size=900,
            tokenizer_hash="h",
            state="ready",
        )
        s.add(model)
        s.flush()
        job(s, owner, "train", job_id=train)
        s.add(Checkpoint(model_id=model.id, job_id=train, step=1, object_key="c", size=1))
        return model.id


def test_sample_controls_are_checked_against_the_model(
    client: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    ds = dataset(client)
    plain = _model(settings, ds, None)
    assert client.get(f"/v1/models/{plain}").json()["capabilities"] == {
        "modes": ["continue"],
        "controls": {},
        "tags": [],
        "output": "midi",
    }
    # A model of an audio-vq corpus says so: its samples are audio (the studio's audio form).
    audio = _model(settings, ds, None, {"tokenizer_spec": {"name": "audio-vq", "config": {}}})
    caps = client.get(f"/v1/models/{audio}").json()["capabilities"]
    assert caps["output"] == "audio" and caps["prior"] == "flat"  # trained before the option
    listed = {m["id"]: m for m in client.get("/v1/models").json()}
    assert listed[audio]["capabilities"]["output"] == "audio"
    assert listed[plain]["capabilities"]["output"] == "midi"
    msg = _error(
        client.post(f"/v1/models/{plain}/samples", json={"controls": {"key": "C"}}), "controls.key"
    )
    assert "without controls" in msg
    caps = capabilities(["key", "note_density", "pitch_range"], ["baroque"])
    steered = _model(settings, ds, caps)
    got = client.get(f"/v1/models/{steered}").json()["capabilities"]
    assert got["controls"]["note_density"] == {
        "per": "bar",
        "range": [0, 32],
        "unit": "notes per bar",
    }
    assert got["tags"] == ["baroque"] and got["modes"] == ["continue"]
    url = f"/v1/models/{steered}/samples"
    assert "[0, 32]" in _error(
        client.post(url, json={"controls": {"note_density": 40}}), "controls.note_density"
    )
    _error(
        client.post(url, json={"controls": {"note_density": [4, -1]}}), "controls.note_density[1]"
    )
    _error(client.post(url, json={"controls": {"key": "H"}}), "controls.key")
    _error(client.post(url, json={"controls": {"pitch_range": [72, 60]}}), "controls.pitch_range")
    _error(client.post(url, json={"controls": {"tempo": 90}}), "controls.tempo")
    _error(client.post(url, json={"controls": {"loudness": 3}}), "controls")
    assert "'rococo'" in _error(client.post(url, json={"tags": ["rococo"]}), "tags")
    _error(client.post(url, json={"tags": ["Not A Tag"]}), "tags")
    ok = {
        "controls": {"key": "Dm", "note_density": [4, None, 12], "pitch_range": [55, 79]},
        "tags": ["baroque"],
    }
    r = client.post(url, json=ok)
    assert r.status_code == 202, r.text


def test_audio_model_tags_are_checked_against_its_learned_tags(
    client: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    import io

    import numpy as np
    import soundfile as sf

    ds = dataset(client)
    buf = io.BytesIO()
    sf.write(buf, 0.1 * np.sin(np.arange(8000) * 0.05), 8000, format="WAV")
    r = client.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.wav", buf.getvalue()))])
    assert r.status_code in (200, 201), r.text
    body = {"dataset_id": ds, "tokenizer": "audio-vq", "controls": ["key"]}
    assert "style tags" in _error(client.post("/v1/corpora", json=body), "controls")
    body = {"dataset_id": ds, "tokenizer": "audio-vq", "learn_tags": True}
    assert client.post("/v1/corpora", json=body).status_code == 202
    spec = {"name": "audio-vq", "config": {}, "learn_tags": True}
    audio = _model(settings, ds, capabilities([], ["rock"]), {"tokenizer_spec": spec})
    assert client.get(f"/v1/models/{audio}").json()["capabilities"]["tags"] == ["rock"]
    url = f"/v1/models/{audio}/samples"
    assert "'pop'" in _error(client.post(url, json={"tags": ["pop"]}), "tags")
    _error(client.post(url, json={"controls": {"key": "C"}}), "controls")
    r = client.post(url, json={"tags": ["rock"], "max_seconds": 1})
    assert r.status_code == 202, r.text
    untagged = _model(settings, ds, None, {"tokenizer_spec": {"name": "audio-vq"}})
    msg = _error(client.post(f"/v1/models/{untagged}/samples", json={"tags": ["rock"]}), "tags")
    assert "learn_tags" in msg


def test_per_track_controls_are_checked_against_the_model(
    client: TestClient,  # noqa: F811
    settings: Settings,  # noqa: F811
) -> None:
    """A multitrack model's capabilities show `tracks`; each bad per-track value is a 422
    naming its place (`controls.tracks[1].note_density`) and the allowed range."""
    ds = dataset(client)
    band = _model(settings, ds, capabilities(["key", "note_density"], [], per_track=True))
    got = client.get(f"/v1/models/{band}").json()["capabilities"]
    assert got["tracks"] == {
        "max": 64,
        "controls": ["note_density"],
        "select": ["index", "program"],
    }
    url = f"/v1/models/{band}/samples"
    msg = _error(
        client.post(url, json={"controls": {"tracks": [{}, {"note_density": 99}]}}),
        "controls.tracks[1].note_density",
    )
    assert "[0, 32]" in msg
    _error(
        client.post(url, json={"controls": {"tracks": [{"key": "C"}]}}), "controls.tracks[0].key"
    )
    _error(client.post(url, json={"controls": {"tracks": [{"program": 300}]}}), "program")
    _error(client.post(url, json={"controls": {"tracks": {"0": {}}}}), "tracks")
    single = _model(settings, ds, capabilities(["note_density"], []))
    assert "per-track" in _error(
        client.post(f"/v1/models/{single}/samples", json={"controls": {"tracks": [{}]}}),
        "controls.tracks",
    )
    ok = {"controls": {"key": "Dm", "tracks": [{"note_density": 4}, {"note_density": [12, None]}]}}
    r = client.post(url, json=ok)
    assert r.status_code == 202, r.text
