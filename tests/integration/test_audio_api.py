"""Audio through the API and a real worker: upload, crop, convert, transcribe, render."""

from __future__ import annotations

import importlib.util
import io
import struct
import wave
from pathlib import Path

import pytest
import soundfile as sf
import symusic

from cadenza.client import Client
from tests.support.music import midi_bytes
from tests.support.stack import Stack

pytestmark = pytest.mark.integration


def scale_midi() -> bytes:
    """A C-major scale, quarter notes at 120 bpm: 8 notes, 4 s."""
    return midi_bytes(
        [(i * 480, 440, p, 90) for i, p in enumerate([60, 62, 64, 65, 67, 69, 71, 72])]
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from cadenza.render.audio import render_midi

    out = tmp_path_factory.mktemp("audio")
    paths = {}
    for fmt in ("wav", "mp3"):
        p = out / f"scale.{fmt}"
        p.write_bytes(render_midi(scale_midi(), fmt=fmt))  # type: ignore[arg-type]
        paths[fmt] = p
    return paths


def test_audio_jobs_and_rendering(stack: Stack, rendered: dict[str, Path]) -> None:
    c = Client(stack.api_url, stack.api_key)
    ds = c.create_dataset("recordings")
    files = c.upload(ds["id"], [rendered["wav"], rendered["mp3"]])
    assert [(f["kind"], f["format"]) for f in files] == [("audio", "wav"), ("audio", "mp3")]
    wav_id = files[0]["id"]
    content = c.http.get(f"/v1/files/{wav_id}/content")
    assert content.headers["content-type"] == "audio/wav"
    duration = sf.info(io.BytesIO(content.content)).duration

    job = c.post(
        f"/v1/datasets/{ds['id']}/audio-jobs",
        {"operation": "crop", "file_ids": [wav_id], "crop": {"positions_text": "1.5, 3"}},
    )
    job = c.wait(job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    pieces = [c.get(f"/v1/files/{i}") for i in job["file_ids"]]
    assert [p["source_file_id"] for p in pieces] == [wav_id] * 3
    spans = [(p["meta"]["crop_start_s"], p["meta"]["crop_end_s"]) for p in pieces]
    assert spans[0][0] == 0 and spans[0][1] == pytest.approx(1.5, abs=1e-3)
    assert spans[1] == pytest.approx((1.5, 3.0), abs=1e-3)
    assert spans[2][1] == pytest.approx(duration, abs=1e-3)  # the tail is kept

    job = c.post(
        f"/v1/datasets/{ds['id']}/audio-jobs",
        {"operation": "convert", "file_ids": [files[1]["id"]], "convert": {"sample_rate": 16000}},
    )
    job = c.wait(job["id"], timeout=300)
    assert job["state"] == "succeeded", job
    converted = c.get(f"/v1/files/{job['file_ids'][0]}")
    assert converted["meta"]["sample_rate"] == 16000 and converted["meta"]["channels"] == 1

    job = c.post(
        f"/v1/datasets/{ds['id']}/audio-jobs", {"operation": "transcribe", "file_ids": [wav_id]}
    )
    job = c.wait(job["id"], timeout=600)
    assert job["state"] == "succeeded", job
    midi_file = c.get(f"/v1/files/{job['file_ids'][0]}")
    assert midi_file["kind"] == "midi" and midi_file["source_file_id"] == wav_id
    score = symusic.Score.from_midi(c.http.get(f"/v1/files/{midi_file['id']}/content").content)
    pitches = sorted({n.pitch for t in score.tracks for n in t.notes})
    assert {60, 64, 67, 72} <= set(pitches), pitches

    # Rendering is worker work: the first request answers 202 with the render job.
    first = c.http.get(f"/v1/files/{midi_file['id']}/pianoroll.png")
    assert first.status_code == 202 and first.json()["type"] == "render"  # its own job type
    png = stack.data_dir / "roll.png"
    c.download(f"/v1/files/{midi_file['id']}/pianoroll.png", png)
    assert png.read_bytes().startswith(b"\x89PNG")
    mp3 = c.http.get(f"/v1/files/{midi_file['id']}/audio", params={"format": "mp3"})
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"
    assert len(mp3.content) > 1000


def test_bad_audio_is_refused(stack: Stack) -> None:
    c = Client(stack.api_url, stack.api_key)
    ds = c.create_dataset("bad-audio")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x00" * 16000)
    one_second = bytearray(buf.getvalue())
    claims_hours = bytearray(one_second)
    struct.pack_into("<I", claims_hours, 40, 16000 * 2 * 3600 * 5)  # data chunk says 5 hours
    absurd = bytearray(one_second)
    struct.pack_into("<I", absurd, 24, 0)  # sample rate 0
    for name, data in (
        ("text.wav", b"just some text pretending to be audio\n" * 10),
        ("hours.wav", bytes(claims_hours)),
        ("absurd.wav", bytes(absurd)),
        ("truncated.mp3", b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\xff\xfb\x90\x00" + b"\x00" * 20),
    ):
        r = c.http.post(f"/v1/datasets/{ds['id']}/files", files=[("files", (name, data))])
        assert 400 <= r.status_code < 500, (name, r.text)
        assert r.json()["error"]["message"]
    assert c.get(f"/v1/datasets/{ds['id']}/files")["files"] == []
    r = c.http.post(
        f"/v1/datasets/{ds['id']}/audio-jobs",
        json={"operation": "crop", "crop": {"positions_text": "1,abc"}},
    )
    assert r.status_code == 409  # no audio files in this dataset yet


@pytest.mark.skipif(
    importlib.util.find_spec("transkun") is None, reason="transkun is not installed"
)
def test_cli_transcribes_piano_with_transkun(stack: Stack, rendered: dict[str, Path]) -> None:
    """`cadenza datasets transcribe --engine transkun`: the REST audio job, run by a worker,
    writes a piano MIDI file with velocities into the dataset (~15 s of CPU for this 4 s WAV)."""
    from tests.integration.test_cli import cli, cli_json

    c = Client(stack.api_url, stack.api_key)
    ds = cli_json(stack, "datasets", "create", "piano recordings")
    (wav,) = c.upload(ds["id"], [rendered["wav"]])
    bad = cli(stack, "datasets", "transcribe", ds["id"], "--engine", "nope", ok=False)
    assert bad.returncode == 1 and "422" in bad.stdout + bad.stderr
    listed = cli(stack, "datasets", "transcribe", ds["id"], "--engine", "transkun").stdout
    (line,) = [row for row in listed.splitlines() if " midi " in row]
    midi_file = c.get(f"/v1/files/{line.split()[0]}")
    assert midi_file["source_file_id"] == wav["id"] and midi_file["name"].endswith(".mid")
    jobs = [
        j
        for j in c.get("/v1/jobs")["jobs"]
        if j["type"] == "audio" and j["params"]["dataset_id"] == ds["id"]
    ]
    assert [j["params"]["transcribe"]["engine"] for j in jobs] == ["transkun"]
    assert jobs[0]["file_ids"] == [midi_file["id"]]
    score = symusic.Score.from_midi(c.http.get(f"/v1/files/{midi_file['id']}/content").content)
    notes = sorted((n for t in score.tracks for n in t.notes), key=lambda n: n.time)
    assert [n.pitch for n in notes] == [60, 62, 64, 65, 67, 69, 71, 72]  # the scale, no more
    assert all(1 <= n.velocity <= 127 for n in notes)
