"""Sampling modes through the API, in-process (real SQLite and store, no worker): a model's
`capabilities.modes`, and every check an infill or accompany request meets before a job is
queued (the mode, the source, its bars and tracks), for the JSON route and the MIDI routes.
tests/integration/test_sample_modes.py runs the jobs on a trained model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Corpus, File, Model, Sample
from cadenza.db.session import session_scope
from cadenza.storage import open_store
from cadenza.tokenize.presets import resolve_spec
from tests.api.test_delete import keyed_client, made_by_jobs, upload
from tests.support.music import multitrack_pairs

MIDI = {"Content-Type": "audio/midi"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, sweep_grace_seconds=0)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> TestClient:
    return keyed_client(settings, "alice")


def _can_edit(settings: Settings, model_id: str) -> None:
    """Make the model one trained to edit: a multitrack corpus, infill_fraction 0.5."""
    with session_scope(settings.resolved_database_url) as s:
        model = s.get(Model, model_id)
        assert model is not None
        corpus = s.get(Corpus, model.corpus_id)
        assert corpus is not None
        spec = resolve_spec(preset="multitrack").model_dump(mode="json")
        corpus.params = {"tokenizer_spec": spec}
        model.train_config = {"infill_fraction": 0.5}


def _upload_chorale(client: TestClient) -> tuple[dict[str, object], bytes]:
    name, data = multitrack_pairs()[1]
    ds = client.post("/v1/datasets", json={"name": "band"}).json()["id"]
    r = client.post(f"/v1/datasets/{ds}/files", files=[("files", (f"{name}.mid", data))])
    assert r.status_code == 201, r.text
    return r.json()["files"][0], data


def test_modes_and_edit_requests_are_checked_before_anything_is_queued(
    client: TestClient, settings: Settings
) -> None:
    ds, _ = upload(client, "d", 60)
    made = made_by_jobs(settings, ds, "ab" * 32)
    model = made["model"]
    route = f"/v1/models/{model}/samples"
    caps = client.get(f"/v1/models/{model}").json()["capabilities"]
    assert caps == {"modes": ["continue"], "controls": {}, "tags": [], "output": "midi"}
    source, data = _upload_chorale(client)
    assert source["meta"]["tracks"] == 4 and source["meta"]["bars"] == 22  # type: ignore[index]
    infill = {"mode": "infill", "source_file_id": source["id"], "infill": {"bars": [3, 4]}}

    # a model without infill training refuses, naming the mode and how to get one
    r = client.post(route, json=infill)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "mode_not_supported" and "multitrack" in err["message"]
    r = client.post(f"/v1/models/{model}/infill?bars=3-4&wait=0", content=data, headers=MIDI)
    assert r.status_code == 422 and r.json()["error"]["code"] == "mode_not_supported"

    _can_edit(settings, model)
    caps = client.get(f"/v1/models/{model}").json()["capabilities"]
    assert caps["modes"] == ["continue", "infill", "accompany"]

    for body, named in [
        ({**infill, "infill": {"bars": [3, 30]}}, "infill.bars"),
        ({**infill, "infill": {"bars": [4, 3]}}, "bars"),
        ({**infill, "infill": {"bars": [3, 4], "tracks": [7]}}, "infill.tracks"),
        ({"mode": "infill", "source_file_id": source["id"]}, "infill"),
        ({**infill, "primer_file_id": source["id"]}, "primer_file_id"),
        ({"mode": "accompany", "source_file_id": source["id"]}, "accompany"),
        ({**infill, "mode": "accompany", "accompany": {"programs": [200]}}, "programs"),
        ({"infill": {"bars": [3, 4]}}, "infill"),
        ({"mode": "remix", "source_file_id": source["id"]}, "mode"),
        ({**infill, "controls": {"key": "Dm"}}, "keeps the source's own controls"),
        ({**infill, "tags": ["baroque"]}, "tags: mode infill"),
    ]:
        r = client.post(route, json=body)
        assert r.status_code == 422, (body, r.text)
        assert named in r.text, (named, r.text)

    # another owner's source is not found; a source that is not MIDI says how to fix it
    mallory = keyed_client(settings, "mallory")
    theirs, _ = _upload_chorale(mallory)
    r = client.post(route, json={**infill, "source_file_id": theirs["id"]})
    assert r.status_code == 404
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(File, source["id"])
        assert row is not None
        audio = File(
            owner_id=row.owner_id,
            dataset_id=row.dataset_id,
            name="take.wav",
            kind="audio",
            format="wav",
            sha256="0" * 64,
            size=4,
            object_key=row.object_key,
        )
        s.add(audio)
        s.flush()
        audio_id = audio.id
    r = client.post(route, json={**infill, "source_file_id": audio_id})
    assert r.status_code == 422 and "transcribe" in r.json()["error"]["message"]
    r = client.post(
        route, json={**infill, "source_sample_id": made["sample"], "source_file_id": None}
    )
    assert r.status_code == 202, r.text
    client.post(f"/v1/jobs/{r.json()['id']}/cancel")
    # a source sample's bars are measured from its MIDI, as an upload's are
    with session_scope(settings.resolved_database_url) as s:
        sample = s.get(Sample, made["sample"])
        assert sample is not None
        open_store(settings).put(sample.midi_key, data)  # the chorale: 22 bars
    r = client.post(
        route,
        json={
            **infill,
            "infill": {"bars": [60, 62]},
            "source_sample_id": made["sample"],
            "source_file_id": None,
        },
    )
    assert r.status_code == 422 and "the source has 22 bars" in r.text, r.text

    # a file uploaded before bars were measured: measured once on request, kept in its row
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(File, source["id"])
        assert row is not None
        row.meta = {k: v for k, v in row.meta.items() if k != "bars"}
    r = client.post(route, json={**infill, "infill": {"bars": [3, 30]}})
    assert r.status_code == 422 and "the source has 22 bars" in r.text, r.text
    with session_scope(settings.resolved_database_url) as s:
        row = s.get(File, source["id"])
        assert row is not None and row.meta["bars"] == 22

    # the MIDI routes: their own query parameters, checked against the body
    for query, named in [
        ("bars=3-30", "infill.bars"),
        ("bars=3-4&tracks=9", "infill.tracks"),
        ("bars=x", "bars"),
        ("bars=3-4&primer_bars=2", "primer_bars"),
    ]:
        r = client.post(f"/v1/models/{model}/infill?{query}&wait=0", content=data, headers=MIDI)
        assert r.status_code == 422, (query, r.text)
        assert named in r.text, (named, r.text)
    r = client.post(f"/v1/models/{model}/accompany?wait=0", content=data, headers=MIDI)
    assert r.status_code == 422 and "programs" in r.text
    r = client.post(f"/v1/models/{model}/infill?bars=3", content=b"RIFF", headers=MIDI)
    assert r.status_code == 415

    # valid requests are queued with the source recorded
    r = client.post(route, json={**infill, "n": 2, "seed": 3, "top_k": 8})
    assert r.status_code == 202, r.text
    assert r.json()["params"]["infill"] == {"bars": [3, 4], "tracks": None}
    r = client.post(
        f"/v1/models/{model}/accompany?programs=33&drums=true&wait=0&seed=1",
        content=data,
        headers=MIDI,
    )
    assert r.status_code == 202, r.text
    params = r.json()["params"]
    assert params["mode"] == "accompany" and params["accompany"] == {
        "programs": [33],
        "drums": True,
    }
    assert params["source_file_id"] and params["primer_file_id"] is None
    r = client.post(
        f"/v1/models/{model}/infill?bars=3-4&tracks=0&wait=0", content=data, headers=MIDI
    )
    assert r.status_code == 202 and r.json()["params"]["infill"]["tracks"] == [0]
    # a source a queued job edits cannot be deleted meanwhile
    r = client.delete(f"/v1/files/{source['id']}")
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_use"
