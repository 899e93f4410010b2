"""Attribute controls through a real worker on the embedded stack: a REMI + BPE corpus with
controls and tags, and a `multitrack` (MMM) corpus with per-track controls, each trained a few
steps and sampled with controls through the API. Whether the music follows is checked on
better trained models in tests/unit/test_controls.py and tests/unit/test_track_controls.py;
here: the corpora build, the capabilities say what a request may set, and steered sample
jobs succeed with MIDI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import symusic

from cadenza.client import ApiFailure, Client
from tests.support.music import multitrack_chorale
from tests.support.stack import Stack, finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = {"max_steps": 6, "eval_interval": 3, "batch_size": 2, "seq_len": 64}


@pytest.fixture(scope="module")
def client(embedded_stack: Stack) -> Iterator[Client]:
    with Client(embedded_stack.api_url, embedded_stack.api_key) as c:
        yield c


def _trained(client: Client, files: list[Path], **corpus: Any) -> dict[str, Any]:
    ds = client.create_dataset("steer", tags=["baroque"])
    client.upload(ds["id"], files)
    built = finished(client, client.create_corpus(ds["id"], seed=1, **corpus))
    trained = finished(
        client, client.create_model(built["corpus_id"], architecture="gpt", train=TRAIN)
    )
    return client.get(f"/v1/models/{trained['model_id']}")


def _notes(client: Client, job: dict[str, Any]) -> list[int]:
    out = []
    for sid in job["sample_ids"]:
        midi = client.http.get(f"/v1/samples/{sid}/midi").content
        out.append(sum(len(t.notes) for t in symusic.Score.from_midi(bytes(midi)).tracks))
    return out


def test_controls_with_bpe_through_a_worker(client: Client, chorales: list[Path]) -> None:
    model = _trained(
        client,
        chorales[:4],
        tokenizer="REMI",
        bpe={"vocab_size": 1000},
        controls=["key", "note_density", "polyphony"],
        learn_tags=True,
    )
    caps = model["capabilities"]
    assert set(caps["controls"]) == {"key", "note_density", "polyphony"}
    assert caps["tags"] == ["baroque"] and "tracks" not in caps
    job = finished(
        client,
        client.sample(
            model["id"],
            controls={"key": "Dm", "note_density": [4, 8], "polyphony": 2},
            tags=["baroque"],
            n=2,
            max_new_tokens=48,
            seed=3,
            min_notes=0,
        ),
    )
    assert len(_notes(client, job)) == 2
    sample = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    assert sample["params"]["controls"]["key"] == "Dm"


def test_per_track_controls_through_a_worker(
    client: Client, chorales: list[Path], tmp_path: Path
) -> None:
    band = []
    for p in chorales[1:4]:
        path = tmp_path / p.name
        path.write_bytes(multitrack_chorale(p.read_bytes()))
        band.append(path)
    model = _trained(client, band, preset="multitrack", controls=["note_density", "polyphony"])
    assert model["capabilities"]["tracks"] == {
        "max": 64,
        "controls": ["note_density", "polyphony"],
        "select": ["index", "program"],
    }
    with pytest.raises(ApiFailure, match=r"controls.tracks\[0\].note_density"):
        client.sample(model["id"], controls={"tracks": [{"note_density": 99}]})
    job = finished(
        client,
        client.sample(
            model["id"],
            controls={"polyphony": 2, "tracks": [{"note_density": 3}, {"note_density": [9, None]}]},
            n=2,
            max_new_tokens=48,
            seed=3,
            min_notes=0,
        ),
    )
    assert len(_notes(client, job)) == 2
