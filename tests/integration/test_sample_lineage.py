"""Continuing a sample through a real worker on the embedded stack: the child starts with the
parent's notes (on the child's tokenizer's grid, also when that is another model's tokenizer),
lineage lists the chain, and deleting a parent keeps its child without the link."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import symusic

from cadenza.client import Client
from cadenza.config import Settings
from cadenza.storage import job_key, open_store
from cadenza.tokenize import decode_to_midi, encode_primer, tokenizer_from_bytes
from cadenza.tokenize.base import Tokenizer
from tests.integration.test_cli import cli
from tests.support.stack import Stack, finished

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = {"max_steps": 4, "eval_interval": 2, "batch_size": 2, "seq_len": 32}

Note = tuple[float, int, float]


@dataclass
class Trained:
    """A tiny model with the tokenizer of the corpus it was trained on."""

    id: str
    tokenizer: Tokenizer


@pytest.fixture(scope="module")
def client(embedded_stack: Stack) -> Iterator[Client]:
    with Client(embedded_stack.api_url, embedded_stack.api_key) as c:
        yield c


@dataclass
class Setup:
    file_id: str  # a chorale of the dataset
    remi: Trained
    tsd: Trained


@pytest.fixture(scope="module")
def setup(embedded_stack: Stack, client: Client, chorales: list[Path]) -> Setup:
    """Two tiny models on the same two chorales, one with REMI and one with TSD tokens."""
    env = embedded_stack.env
    store = open_store(
        Settings(
            **{
                k.removeprefix("CADENZA_").lower(): v
                for k, v in env.items()
                if k.startswith("CADENZA_")
            }
        )
    )
    ds = client.create_dataset("lineage")
    files = client.upload(ds["id"], chorales[:2])
    out: dict[str, Trained] = {}
    for name, corpus_options in [
        ("remi", {"preset": "remi-colab"}),
        ("tsd", {"tokenizer": "TSD"}),
    ]:
        job = finished(client, client.create_corpus(ds["id"], seed=1, **corpus_options))
        tok = tokenizer_from_bytes(store.get(f"{job_key(job['id'], 'corpus')}/tokenizer.json"))
        trained = finished(
            client,
            client.create_model(
                job["corpus_id"], architecture="music-transformer", preset="tiny", train=TRAIN
            ),
        )
        out[name] = Trained(trained["model_id"], tok)
    return Setup(files[0]["id"], out["remi"], out["tsd"])


def notes(midi: bytes) -> set[Note]:
    """(onset, pitch, duration) in quarters of every note of a MIDI file."""
    score = symusic.Score.from_midi(midi)
    tpq = score.ticks_per_quarter
    return {
        (round(n.time / tpq, 3), n.pitch, round(n.duration / tpq, 3))
        for t in score.tracks
        for n in t.notes
    }


def on_grid(tok: Tokenizer, midi: bytes, bars: int | None = None) -> set[Note]:
    """The notes of a primer as a model with this tokenizer sees it: encoded, then decoded."""
    return notes(decode_to_midi(tok, encode_primer(tok, midi, bars=bars)))


def before(ns: set[Note], cut: float) -> set[Note]:
    return {n for n in ns if n[0] < cut}


def midi_of(client: Client, sample_id: str) -> bytes:
    return bytes(client.http.get(f"/v1/samples/{sample_id}/midi").content)


def quarters_per_bar(midi: bytes) -> float:
    ts = symusic.Score.from_midi(midi).time_signatures
    return ts[0].numerator * 4 / ts[0].denominator if len(ts) else 4.0


def test_a_continued_sample_starts_with_its_parent_and_keeps_its_lineage(
    embedded_stack: Stack, client: Client, setup: Setup, tmp_path: Path
) -> None:
    remi, tsd, file_id = setup.remi, setup.tsd, setup.file_id
    sampling = {"max_new_tokens": 48, "top_k": 20, "min_notes": 0}
    parent_job = finished(
        client, client.sample(remi.id, primer_file_id=file_id, primer_bars=2, seed=1, **sampling)
    )
    parent = client.get(f"/v1/samples/{parent_job['sample_id']}")
    assert parent["parent_sample_id"] is None
    parent_midi = midi_of(client, parent["id"])

    # The same model, the parent's first 2 bars as the primer (primer_bars as for a file),
    # the way a user types it.
    (path,) = cli(
        embedded_stack,
        *("sample", remi.id, "--from-sample", parent["id"], "--primer-bars", "2"),
        *("--max-new-tokens", "48", "--top-k", "20", "--seed", "2"),
        *("--options", '{"min_notes": 0}', "-o", str(tmp_path)),
    ).stdout.split()
    child = client.get(f"/v1/samples/{Path(path).stem}")
    assert child["params"]["primer_sample_id"] == parent["id"]
    assert child["parent_sample_id"] == parent["id"]
    child_midi = midi_of(client, child["id"])
    # The child starts with the parent's first 2 bars as REMI encodes them: every one of
    # those notes, and before the primer's last bar nothing else (a generated note may join
    # the last bar: a sampled Position can step back within the current bar, never before it).
    head = on_grid(remi.tokenizer, parent_midi, bars=2)
    assert head and head <= notes(child_midi)
    qpb = quarters_per_bar(parent_midi)
    last_bar = max(n[0] for n in head) // qpb * qpb
    assert last_bar > 0 and before(notes(child_midi), last_bar) == before(head, last_bar)
    prompt = encode_primer(remi.tokenizer, parent_midi, bars=2)
    assert child["meta"]["primer_tokens"] == 1 + len(prompt)  # BOS + the primer, exactly

    # Another model, another tokenizer: the whole child, re-encoded with TSD, primes it.
    grandchild_job = finished(
        client, client.sample(tsd.id, primer_sample_id=child["id"], seed=3, **sampling)
    )
    grandchild = client.get(f"/v1/samples/{grandchild_job['sample_id']}")
    assert grandchild["parent_sample_id"] == child["id"] and grandchild["model_id"] == tsd.id
    # TSD's time only moves on: before the primer's last onset, the notes are the primer's.
    primer, grand_notes = (
        on_grid(tsd.tokenizer, child_midi),
        notes(midi_of(client, grandchild["id"])),
    )
    last = max(n[0] for n in primer)
    assert primer <= grand_notes and before(grand_notes, last) == before(primer, last)

    lineage = client.get(f"/v1/samples/{grandchild['id']}/lineage")
    assert [s["id"] for s in lineage["samples"]] == [parent["id"], child["id"], grandchild["id"]]
    assert [s["model_id"] for s in lineage["samples"]] == [remi.id, remi.id, tsd.id]
    assert lineage["truncated"] is False
    shown = cli(embedded_stack, "samples", "lineage", grandchild["id"], "--json").stdout
    assert json.loads(shown) == lineage
    table = cli(embedded_stack, "samples", "lineage", grandchild["id"]).stdout
    ids = [line.split()[0] for line in table.splitlines()[1:]]  # under the header
    assert ids == [parent["id"], child["id"], grandchild["id"]], table

    # Deleting the parent keeps the child, without the link; the chain now starts there.
    assert client.delete(f"/v1/samples/{parent['id']}")["rows"] == {"samples": 1}
    assert client.get(f"/v1/samples/{child['id']}")["parent_sample_id"] is None
    lineage = client.get(f"/v1/samples/{grandchild['id']}/lineage")
    assert [s["id"] for s in lineage["samples"]] == [child["id"], grandchild["id"]]
    assert midi_of(client, child["id"]) == child_midi
