"""Infill and accompaniment through a real worker on the embedded stack: a `multitrack` corpus
of chorales with one program per part, a tiny model trained on it (infill_fraction defaults
to 0.5 there), then an infill through the JSON route and the CLI and an accompaniment through
the MIDI route. Every note outside the region comes back; the accompaniment keeps the source's
tracks. The music itself is checked on a better trained model in tests/unit/test_infill_edit.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import symusic

from cadenza.client import Client
from tests.integration.test_cli import cli
from tests.support.music import PART_PROGRAMS, multitrack_chorale
from tests.support.stack import Stack, finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = {"max_steps": 6, "eval_interval": 3, "batch_size": 2, "seq_len": 64}
SAMPLING = {"max_new_tokens": 24, "top_k": 20, "seed": 3}


@pytest.fixture(scope="module")
def client(embedded_stack: Stack) -> Iterator[Client]:
    with Client(embedded_stack.api_url, embedded_stack.api_key) as c:
        yield c


def notes_by_track(midi: bytes) -> list[tuple[int, set[tuple[float, int, float]]]]:
    score = symusic.Score.from_midi(midi)
    tpq = score.ticks_per_quarter
    return [
        (
            int(t.program),
            {(round(n.time / tpq, 3), n.pitch, round(n.duration / tpq, 3)) for n in t.notes},
        )
        for t in score.tracks
    ]


def test_infill_and_accompany_through_a_worker(
    client: Client, embedded_stack: Stack, chorales: list[Path], tmp_path: Path
) -> None:
    band = []
    for p in chorales[1:4]:  # four parts each (the first chorale has five)
        path = tmp_path / p.name
        path.write_bytes(multitrack_chorale(p.read_bytes()))
        band.append(path)
    ds = client.create_dataset("band")
    files = client.upload(ds["id"], band)
    corpus = finished(client, client.create_corpus(ds["id"], preset="multitrack", seed=1))
    trained = finished(
        client, client.create_model(corpus["corpus_id"], architecture="gpt", train=TRAIN)
    )
    model = client.get(f"/v1/models/{trained['model_id']}")
    assert model["train_config"]["infill_fraction"] == 0.5
    assert model["train_config"]["infill_layout"] == "spm"  # edits are prompted in it
    assert model["capabilities"]["modes"] == ["continue", "infill", "accompany"]

    # infill bars 2-3 of track 1, twice: the other tracks and bars come back as they were
    job = finished(
        client,
        client.sample(
            model["id"],
            mode="infill",
            source_file_id=files[0]["id"],
            infill={"bars": [2, 3], "tracks": [1]},
            n=2,
            **SAMPLING,
        ),
    )
    variations = [client.http.get(f"/v1/samples/{sid}/midi").content for sid in job["sample_ids"]]
    first, second = (notes_by_track(bytes(m)) for m in variations)
    assert [p for p, _ in first if p != PART_PROGRAMS[1]] == [PART_PROGRAMS[k] for k in (0, 2, 3)]
    for (p1, n1), (p2, n2) in zip(first, second, strict=True):
        if p1 != PART_PROGRAMS[1]:
            assert p1 == p2 and n1 == n2  # untouched tracks: identical in both
    bar = 4.0  # the chorales are in 4/4
    for p, ns in first:
        if p == PART_PROGRAMS[1]:
            outside = {n for n in ns if not bar <= n[0] < 3 * bar}
            other = next(n for q, n in second if q == p)
            assert outside == {n for n in other if not bar <= n[0] < 3 * bar}
    sample = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    assert sample["params"]["mode"] == "infill"
    # copy-checked like a continuation, on the notes the model wrote
    assert sample["meta"]["novelty"] is not None and sample["meta"]["novelty"]["ngram"] == 8

    # the same edit from the command line: the untouched tracks come back as they were
    out = tmp_path / "cli"
    written = cli(
        embedded_stack,
        "sample",
        model["id"],
        "--source",
        str(band[0]),
        "--infill-bars",
        "2-3",
        "--infill-tracks",
        "1",
        "--max-copied-fraction",
        "1",
        "--seed",
        "3",
        "--max-new-tokens",
        "24",
        "-o",
        str(out),
    ).stdout.split()
    assert len(written) == 1
    by_cli = notes_by_track(Path(written[0]).read_bytes())
    assert [t for t in by_cli if t[0] != PART_PROGRAMS[1]] == [
        t for t in first if t[0] != PART_PROGRAMS[1]
    ]

    # accompany through MIDI in, MIDI out: the source's tracks come back, new ones are bass
    source = band[1].read_bytes()
    r = client.http.post(
        f"/v1/models/{model['id']}/accompany",
        params={"programs": "33", "wait": 300, **SAMPLING},
        content=source,
        headers={"Content-Type": "audio/midi"},
    )
    assert r.status_code == 200, r.text
    got = notes_by_track(r.content)
    assert [p for p, _ in got[:4]] == list(PART_PROGRAMS[:4])
    assert all(p == 33 for p, _ in got[4:])
    again = client.http.post(
        f"/v1/models/{model['id']}/accompany",
        params={"programs": "33", "wait": 300, **SAMPLING},
        content=source,
        headers={"Content-Type": "audio/midi"},
    )
    assert notes_by_track(again.content)[:4] == got[:4]  # the piece itself never changes
