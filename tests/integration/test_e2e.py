"""The whole path through HTTP against a real worker process, on both deployments.

upload → tokenize → train → sample → download, plus the bad-input contract: clear 4xx JSON
errors and nothing stored for a rejected file.
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
import symusic

from cadenza.client import ApiFailure, Client
from cadenza.config import Settings
from cadenza.novelty import COPY_RESAMPLES, INDEX_NAME, NGRAM
from cadenza.storage import ObjectStore, open_store
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration


def stack_store(stack: Stack) -> ObjectStore:
    env = {
        k.removeprefix("CADENZA_").lower(): v
        for k, v in stack.env.items()
        if k.startswith("CADENZA_")
    }
    return open_store(Settings(**env))


def store_keys(stack: Stack) -> set[str]:
    return {o.key for o in stack_store(stack).list("")}


def primer_pitches(score: symusic.Score, bars: int) -> set[tuple[float, int]]:
    """(onset in quarters, pitch) of the notes starting in the first `bars` bars.

    A set: merging the chorale's voices into one track drops unison doublings.
    """
    ts = score.time_signatures[0] if len(score.time_signatures) else None
    quarters_per_bar = ts.numerator * 4 / ts.denominator if ts else 4.0
    tpq = score.ticks_per_quarter
    return {
        (round(n.time / tpq, 3), n.pitch)
        for t in score.tracks
        for n in t.notes
        if n.time < bars * quarters_per_bar * tpq
    }


@pytest.fixture
def client(stack: Stack) -> Client:
    return Client(stack.api_url, stack.api_key)


def test_upload_tokenize_train_sample(stack: Stack, client: Client, chorales: list[Path]) -> None:
    ds = client.create_dataset("chorales")
    # Four files directly, two inside a zip (nested folder): all become dataset files.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in chorales[4:6]:
            zf.write(p, f"nested/dir/{p.name}")
    zpath = stack.data_dir / "two.zip"
    zpath.write_bytes(buf.getvalue())
    files = client.upload(ds["id"], [*chorales[:4], zpath])
    assert len(files) == 6
    assert {f["kind"] for f in files} == {"midi"}
    assert all(f["meta"]["notes"] > 0 for f in files)
    assert client.get(f"/v1/datasets/{ds['id']}")["file_count"] == 6

    job = finished(client, client.create_corpus(ds["id"], preset="remi-colab", seed=1))
    corpus_job_id = job["id"]
    corpus = client.get(f"/v1/corpora/{job['corpus_id']}")
    assert corpus["vocab_size"] > 200
    train_files = set(corpus["stats"]["file_splits"]["train"])
    val_files = set(corpus["stats"]["file_splits"]["val"])
    assert train_files and val_files and not train_files & val_files
    assert corpus["stats"]["metrics"]["scale_consistency"]["mean"] > 0.85  # Bach is diatonic
    with np.load(
        io.BytesIO(client.http.get(f"/v1/corpora/{corpus['id']}/export.npz").content)
    ) as z:
        assert z["train_data"].ndim == 1 and z["train_data"].size > 1000
        assert int(z["train_data"].max()) < corpus["vocab_size"]

    job = client.create_model(
        corpus["id"],
        architecture="music-transformer",
        preset="tiny",
        train={"max_steps": 30, "eval_interval": 10, "batch_size": 4, "seq_len": 64},
    )
    assert job["model_id"]
    job = finished(client, job)
    model = client.get(f"/v1/models/{job['model_id']}")
    assert model["state"] == "ready"
    assert model["vocab_size"] == corpus["vocab_size"]
    assert model["checkpoints"], "training saved no checkpoint"
    train_losses = [m["loss"] for m in model["metrics"] if m["split"] == "train"]
    assert len(train_losses) >= 2 and train_losses[-1] < train_losses[0]
    assert any(m["split"] == "val" for m in model["metrics"])
    ckpt = model["checkpoints"][-1]
    full = client.http.get(f"/v1/models/{model['id']}/checkpoints/{ckpt['id']}")
    assert full.status_code == 200 and int(full.headers["content-length"]) == ckpt["size"]
    weights = client.http.get(f"/v1/models/{model['id']}/weights.safetensors")
    assert weights.status_code == 200 and len(weights.content) > 10_000
    curve = client.http.get(f"/v1/models/{model['id']}/loss.png")
    assert curve.status_code == 200 and curve.content.startswith(b"\x89PNG")

    request = {
        "primer_file_id": files[0]["id"],
        "primer_bars": 2,
        "n": 2,
        "max_new_tokens": 64,
        "temperature": 0.9,
        "top_k": 20,
        "seed": 7,
    }
    job = finished(client, client.sample(model["id"], **request))
    assert len(job["sample_ids"]) == 2
    first = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    assert first["meta"]["invalid_tokens"] == 0  # constrained decoding is on by default
    entropy = first["meta"]["metrics"]["pitch_class_entropy"]
    assert entropy["sample"] > 0 and entropy["corpus_mean"] > 0  # shown next to the corpus
    # The copy check: how much of each sample is in the training split (cadenza.novelty).
    novelty = first["meta"]["novelty"]
    assert novelty["ngram"] == NGRAM and 0 <= novelty["copied_fraction"] <= 1
    assert novelty["longest_copied_run"] in (0, *range(NGRAM, 10_000))
    assert corpus["stats"]["novelty_index"]["ngrams"] > 0
    midis = []
    for sid in job["sample_ids"]:
        data = client.http.get(f"/v1/samples/{sid}/midi").content
        score = symusic.Score.from_midi(data)
        assert sum(len(t.notes) for t in score.tracks) > 0
        midis.append(data)
    # The primer's notes come first, unchanged (pitches of its first 2 bars).
    source = symusic.Score.from_midi(chorales[0].read_bytes())
    out = symusic.Score.from_midi(midis[0])
    primer, head = primer_pitches(source, bars=2), primer_pitches(out, bars=2)
    # Every primer note is there, unchanged. (Generated notes may join them inside bar 2, at
    # positions after the primer's last: the grammar keeps positions rising within a bar.)
    assert primer <= head

    # Each variation was rendered by its job: audio and a piano roll are there at once.
    sid = job["sample_ids"][0]
    audio = client.http.get(f"/v1/samples/{sid}/audio", params={"format": "wav"})
    assert audio.status_code == 200 and audio.content[:4] == b"RIFF"
    roll = client.http.get(f"/v1/samples/{sid}/pianoroll.png")
    assert roll.status_code == 200 and roll.content.startswith(b"\x89PNG")

    # A bar range as primer: bars 3-4 of the file, moved to the start.
    job = finished(
        client,
        client.sample(
            model["id"],
            primer_file_id=files[0]["id"],
            primer_start_bar=3,
            primer_bars=2,
            max_new_tokens=8,
            seed=2,
        ),
    )
    out = symusic.Score.from_midi(client.http.get(f"/v1/samples/{job['sample_id']}/midi").content)
    bars_3_4 = primer_pitches(source, bars=4) - primer_pitches(source, bars=2)
    shifted = {(round(t - 8.0, 3), p) for t, p in bars_3_4}  # 4/4: bar 3 starts at quarter 8
    assert shifted <= primer_pitches(out, bars=2)

    # A token primer from another tokenizer is refused before any work is queued.
    with pytest.raises(ApiFailure) as e:
        client.sample(model["id"], primer_tokens=[1, 2, 3], primer_tokenizer_hash="0" * 64)
    assert e.value.status == 409 and e.value.code == "tokenizer_mismatch"

    # A corpus made before the copy check gets its index on its first sample job; a limit
    # re-samples a copying variation a bounded number of times and says if it stayed over.
    # (this corpus's: its objects are under its tokenize job's key; the stack is shared)
    [index_key] = [k for k in store_keys(stack) if k.endswith(INDEX_NAME) and corpus_job_id in k]
    stack_store(stack).delete(index_key)
    capped = finished(
        client, client.sample(model["id"], max_copied_fraction=0.0, max_new_tokens=64, seed=8)
    )
    got = client.get(f"/v1/samples/{capped['sample_id']}")["meta"]["novelty"]
    assert got["max_copied_fraction"] == 0.0 and got["over_limit"] == (got["copied_fraction"] > 0)
    if got["over_limit"]:
        assert got["resampled"] == COPY_RESAMPLES
    assert index_key in store_keys(stack)

    # Same seed, same request: the same music.
    again = finished(client, client.sample(model["id"], **request))
    assert [client.http.get(f"/v1/samples/{s}/midi").content for s in again["sample_ids"]] == midis

    # MIDI in, MIDI out: the file is the body, the options are query parameters, and the
    # continuation comes back as MIDI (stored as a sample like any other).
    url = f"/v1/models/{model['id']}/continue"
    song = chorales[0].read_bytes()
    midi_body = {"content": song, "headers": {"Content-Type": "audio/midi"}, "timeout": 300}
    query = {"primer_bars": 2, "max_new_tokens": 32, "seed": 7, "wait": 240}
    r = client.http.post(url, params=query, **midi_body)
    assert r.status_code == 200 and r.headers["content-type"] == "audio/midi", r.text
    assert primer <= primer_pitches(symusic.Score.from_midi(r.content), bars=2)
    made = client.get(f"/v1/samples/{r.headers['x-cadenza-sample-ids']}")
    assert client.http.get(f"/v1/samples/{made['id']}/midi").content == r.content
    kept = client.get(f"/v1/files/{made['params']['primer_file_id']}")
    assert kept["sha256"] == hashlib.sha256(song).hexdigest()  # in the midi-requests dataset
    assert client.get(f"/v1/datasets/{kept['dataset_id']}")["name"] == "midi-requests"
    # Not done within `wait`: 202 with the job, whose samples are there once it ends.
    r = client.http.post(url, params={**query, "n": 2, "wait": 0}, **midi_body)
    assert r.status_code == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert len(finished(client, r.json())["sample_ids"]) == 2
    r = client.http.post(url, params={**query, "n": 2}, **midi_body)  # n > 1: a zip of MIDI
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert len(zf.namelist()) == 2 and all(n.endswith(".mid") for n in zf.namelist())
    for bad_query, body, status, says in [
        ({"top_p": 7}, song, 422, "top_p"),
        ({"primer_file_id": files[1]["id"]}, song, 422, "the request body is the primer"),
        ({"no_such_option": 1}, song, 422, "no_such_option"),
        ({}, b"RIFF not a midi file at all", 415, "not a Standard MIDI File"),
        ({}, b"MThd\x00\x00\x00\x06broken", 422, "MIDI"),
    ]:
        r = client.http.post(url, params=bad_query, content=body, headers=midi_body["headers"])
        assert r.status_code == status and says in r.json()["error"]["message"], r.text
    r = client.http.post(url, content=song, headers={"Content-Type": "application/json"})
    assert r.status_code == 415 and "audio/midi" in r.json()["error"]["message"]

    # A music-length limit stops generation early and cuts the output at that bar.
    short = finished(
        client,
        client.sample(model["id"], max_bars=3, max_new_tokens=4000, include_primer=False, seed=3),
    )
    piece = client.get(f"/v1/samples/{short['sample_ids'][0]}")
    assert piece["num_tokens"] < 4000
    score = symusic.Score.from_midi(client.http.get(f"/v1/samples/{piece['id']}/midi").content)
    assert primer_pitches(score, bars=3) == primer_pitches(score, bars=100)  # nothing after bar 3

    # Attribute control: force how a new piece starts (here: its tempo).
    names = corpus["stats"]["token_names"]
    tempo = next(n for n in names if n.startswith("Tempo_") and n != "Tempo_120.0")
    forced = ["Bar_None", "TimeSig_4/4", "Position_0", tempo]
    job = finished(client, client.sample(model["id"], force_tokens=forced, seed=4))
    score = symusic.Score.from_midi(client.http.get(f"/v1/samples/{job['sample_id']}/midi").content)
    assert score.tempos[0].time == 0 and abs(score.tempos[0].qpm - float(tempo[6:])) < 0.01
    with pytest.raises(ApiFailure) as e:
        client.sample(model["id"], force_tokens=["Tempo_1000"])
    assert e.value.status == 422 and "Tempo_" in e.value.message

    # Cancelling a running sample job keeps what was generated so far.
    long = client.sample(model["id"], max_new_tokens=60_000, seed=5, stop_at_eos=False)
    deadline = time.monotonic() + 120
    # A running job that has written tokens (progress counts them past the first 16; a job
    # requeued after a transient error waits in the queue with its old progress).
    while time.monotonic() < deadline:
        seen = client.job(long["id"])
        if seen["state"] == "running" and seen["progress"] > 0:
            break
        time.sleep(0.2)
    client.cancel(long["id"])
    cancelled = client.wait(long["id"], timeout=120)
    # The message says how it ended ("cancelled; its worker stopped": the lease ran out).
    assert cancelled["state"] == "cancelled" and cancelled["sample_ids"], (
        cancelled["message"],
        cancelled,
    )
    partial = client.get(f"/v1/samples/{cancelled['sample_ids'][0]}")
    assert partial["partial"] and 0 < partial["meta"]["new_tokens"] < 60_000

    events = client.http.get(f"/v1/jobs/{job['id']}/events", timeout=30).text
    assert "event: progress" in events and "event: end" in events


def test_bad_input_is_refused_and_leaves_nothing(stack: Stack, client: Client) -> None:
    ds = client.create_dataset("bad-input")
    before = store_keys(stack)
    cases = [
        (("notmidi.mid", b"this is not a MIDI file at all"), 415, "unsupported_type"),
        (("empty.mid", b""), 400, "empty_file"),
        (
            ("truncated.mid", b"MThd\x00\x00\x00\x06\x00\x01\x00\x02\x01\xe0MTrk\x00\x00\x10"),
            None,
            None,
        ),
    ]
    for (name, data), status, code in cases:
        r = client.http.post(f"/v1/datasets/{ds['id']}/files", files=[("files", (name, data))])
        assert 400 <= r.status_code < 500, r.text
        body = r.json()["error"]
        assert body["message"]
        if status:
            assert (r.status_code, body["code"]) == (status, code)
    assert store_keys(stack) == before
    assert client.get(f"/v1/datasets/{ds['id']}/files")["files"] == []

    with pytest.raises(ApiFailure) as e:
        client.get("/v1/datasets/0123456789abcdef0123456789abcdef")
    assert e.value.status == 404 and e.value.code == "not_found"

    other = Client(stack.api_url, stack.other_key("mallory"))
    for path in (f"/v1/datasets/{ds['id']}", f"/v1/datasets/{ds['id']}/files"):
        with pytest.raises(ApiFailure) as e:
            other.get(path)
        assert e.value.status == 404
    r = httpx.get(f"{stack.api_url}/v1/datasets")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = httpx.get(f"{stack.api_url}/v1/datasets", headers={"Authorization": "Bearer cz_wrong"})
    assert r.status_code == 401


def test_cancel_queued_and_running_jobs(stack: Stack, client: Client, chorales: list[Path]) -> None:
    ds = client.create_dataset("cancel")
    client.upload(ds["id"], chorales[:3])
    job = client.create_corpus(ds["id"], tokenizer="TSD")
    cancelled = client.cancel(job["id"])
    final = client.wait(job["id"], timeout=120)
    assert final["state"] in {"cancelled", "succeeded"}
    if cancelled["state"] == "cancelled":
        assert final["state"] == "cancelled" and final["corpus_id"] is None
