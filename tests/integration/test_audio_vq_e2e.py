"""Music from recordings through the real HTTP API and worker (embedded stack): a corpus of
rendered chorale recordings tokenized by the learned audio-vq VQ-VAE, a tiny GPT prior over
its codes, and continuations of a recording (and of a sample) served as WAV."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from cadenza.client import ApiFailure, Client
from tests.integration.test_cli import cli
from tests.support.music import bach_paths, chorale_recordings
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration

#: A VQ-VAE that trains in seconds on 2 CPU cores; the figures it reaches are in BENCHMARKS.md.
SMALL_VQ = {"steps": 150, "channels": 48, "coarse_codebook": 64, "fine_codebook": 64}
#: White noise has a spectral flatness near 0.56 with this measure; music far below.
NOISE_FLATNESS = 0.56


def refused(call: Any, status: int, field: str | None = None) -> None:
    with pytest.raises(ApiFailure) as info:
        call()
    assert info.value.status == status, info.value
    if field is not None:
        assert field in str(info.value), info.value


def tagged_corpus(client: Client, dataset_id: str) -> dict[str, Any]:
    """The audio-vq corpus both tests train on: the small codebooks, 3:1 split, tags learned."""
    job = finished(
        client,
        client.create_corpus(
            dataset_id,
            tokenizer="audio-vq",
            tokenizer_config=SMALL_VQ,
            split=[0.75, 0.25, 0],
            learn_tags=True,
        ),
    )
    corpus: dict[str, Any] = client.get(f"/v1/corpora/{job['corpus_id']}")
    return corpus


def wav_of(client: Client, sample_id: str) -> tuple[np.ndarray, int]:
    r = client.http.get(f"/v1/samples/{sample_id}/audio", params={"format": "wav"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text[:200]
    wave, rate = sf.read(io.BytesIO(r.content), dtype="float32")
    return wave, rate


def test_audio_vq_corpus_prior_and_continuation(embedded_stack: Stack, tmp_path: Path) -> None:
    client = Client(embedded_stack.api_url, embedded_stack.api_key)
    recordings: list[Path] = chorale_recordings()[:4]
    ds = client.create_dataset("chorale recordings")
    files = client.upload(ds["id"], recordings)
    assert {f["kind"] for f in files} == {"audio"}
    for f in files[:2]:  # a per-file label the prior learns (Jukebox's artist/genre)
        client.patch(f"/v1/files/{f['id']}", {"tags": ["choir"]})
    midi_ds = client.create_dataset("chorale MIDI")
    midi = client.upload(midi_ds["id"], bach_paths()[:1])[0]

    # bad requests: no audio in the dataset, an impossible option
    refused(lambda: client.create_corpus(midi_ds["id"], tokenizer="audio-vq"), 422, "tokenizer")
    refused(
        lambda: client.create_corpus(
            ds["id"], tokenizer="audio-vq", tokenizer_config={"coarse_frames": 6}
        ),
        422,
        "coarse_frames",
    )
    # a MIDI tokenizer on an audio-only dataset keeps its answer
    refused(lambda: client.create_corpus(ds["id"], tokenizer="REMI"), 409)

    corpus = tagged_corpus(client, ds["id"])
    assert corpus["vocab_size"] == 3 + 64 + 64 + 2  # the codes, then "choir" and no-tag
    report = corpus["stats"]["tokenizer"]
    assert report["measured_on"] == "held_out" and report["codes_per_second"]["total"] > 39
    # the held-out log-mel comes back above 10 dB SNR with both levels, and the fine level
    # adds to the coarse one
    assert report["fine"]["log_mel_snr_db"] > 10, report
    assert report["fine"]["log_mel_snr_db"] >= report["coarse"]["log_mel_snr_db"], report

    job = finished(
        client,
        client.create_model(
            corpus["id"],
            architecture="gpt",
            preset="tiny",
            train={"max_steps": 300, "eval_interval": 100, "batch_size": 8, "seq_len": 100},
        ),
    )
    model = client.get(f"/v1/models/{job['model_id']}")
    assert model["train_config"]["window_grid"] == 5  # windows start on a coarse code
    assert model["capabilities"]["tags"] == ["choir"]
    assert model["capabilities"]["prior"] == "flat"

    val_file = corpus["stats"]["file_splits"]["val"][0]
    refused(lambda: client.sample(model["id"], primer_file_id=midi["id"]), 422, "primer_file_id")
    refused(lambda: client.sample(model["id"], primer_tokens=[1, 3]), 422, "primer_tokens")
    refused(lambda: client.sample(model["id"], max_seconds=1, primer_bars=2), 422, "primer_bars")
    refused(lambda: client.sample(model["id"], max_seconds=1, tags=["rock"]), 422, "tags")
    refused(lambda: client.continue_midi(model["id"], bach_paths()[0].read_bytes()), 422)

    job = finished(
        client,
        client.sample(
            model["id"],
            primer_file_id=val_file,
            primer_seconds=4.0,
            max_seconds=3.0,
            n=1,
            seed=7,
            temperature=0.9,
            top_k=32,
        ),
    )
    sample = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    meta = sample["meta"]
    assert meta["kind"] == "audio" and meta["real_time_factor"] > 0
    wave, rate = wav_of(client, sample["id"])
    assert rate == 16000
    seam = meta["seam_s"]
    assert seam == pytest.approx(4.0, abs=0.13)  # whole coarse steps (0.128 s)
    assert wave.size / rate == pytest.approx(seam + 3.0, abs=0.13)
    new = wave[int(seam * rate) :]
    assert 20 * np.log10(np.sqrt(np.mean(new**2)) + 1e-9) > -45  # not silent
    assert meta["audio"]["spectral_flatness"] < NOISE_FLATNESS / 2, meta["audio"]
    s = meta["audio"]["seam"]
    # no jump at the seam. The seam is where the recording hands over to the vocoded codes,
    # so it may change a little more than the music's usual 95th percentile (a freshly
    # trained model's output varies from run to run: measured up to +0.3 dB and x1.2 over
    # it); a level jump (a hard cut to an unmatched decoding: tests/unit/test_audio_vq.py)
    # or a switch to noise or silence (flux near its maximum, sqrt(2)) lies far beyond
    # these bounds, and a click beyond the sample-step one.
    assert s["rms_jump_db"] <= s["rms_jump_db_p95"] + 3.0, s
    assert s["flux"] <= max(1.5 * s["flux_p95"], 0.5), s
    assert s["sample_step"] <= 2 * s["sample_step_p999"] + 1e-3, s
    png = client.http.get(f"/v1/samples/{sample['id']}/pianoroll.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.http.get(f"/v1/samples/{sample['id']}/midi").status_code == 409
    mp3 = client.http.get(f"/v1/samples/{sample['id']}/audio")
    assert mp3.status_code == 200 and mp3.headers["content-type"] == "audio/mpeg"

    # co-composition: continue the sample itself, fresh-start too
    job = finished(
        client,
        client.sample(
            model["id"], primer_sample_id=sample["id"], primer_seconds=6.0, max_seconds=1.0, seed=1
        ),
    )
    child = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    assert child["parent_sample_id"] == sample["id"]
    assert wav_of(client, child["id"])[0].size / rate == pytest.approx(7.0, abs=0.13)
    job = finished(client, client.sample(model["id"], max_seconds=1.0, n=2, seed=3, tags=["choir"]))
    assert len(job["sample_ids"]) == 2
    tagged = client.get(f"/v1/samples/{job['sample_ids'][0]}")
    assert tagged["params"]["tags"] == ["choir"] and tagged["meta"]["primer_tokens"] == 2

    # the CLI writes each audio sample's WAV and spectrogram, here conditioned on a tag
    proc = cli(embedded_stack, "sample", model["id"], "--from-sample", child["id"],
               "--primer-seconds", "2", "--max-seconds", "1", "--tags", "choir",
               "-o", str(tmp_path))  # fmt: skip
    written = sorted(p.suffix for p in tmp_path.iterdir())
    assert written == [".png", ".wav"], proc.stdout
    assert sf.info(str(next(tmp_path.glob("*.wav")))).duration == pytest.approx(3.0, abs=0.13)


def test_audio_vq_pair_model_trains_and_continues_a_recording(embedded_stack: Stack) -> None:
    """`train.audio_prior` pair: a coarse prior + upsampler trained by one job, sampled from
    both its best and its latest checkpoint; tags and non-audio corpora refused with 422."""
    client = Client(embedded_stack.api_url, embedded_stack.api_key)
    ds = client.create_dataset("chorale recordings, pair")
    files = client.upload(ds["id"], chorale_recordings()[:4])
    client.patch(f"/v1/files/{files[0]['id']}", {"tags": ["choir"]})
    midi_ds = client.create_dataset("chorale MIDI, pair")
    client.upload(midi_ds["id"], bach_paths()[:2])
    midi_corpus = finished(client, client.create_corpus(midi_ds["id"], tokenizer="REMI"))
    pair = {"audio_prior": "pair", "max_steps": 150, "upsampler_steps": 150,
            "eval_interval": 50, "batch_size": 8, "seq_len": 100}  # fmt: skip
    refused(
        lambda: client.create_model(midi_corpus["corpus_id"], architecture="gpt", train=pair),
        422,
        "audio_prior",
    )
    corpus = tagged_corpus(client, ds["id"])
    refused(
        lambda: client.create_model(
            corpus["id"], architecture="gpt", train={"upsampler_steps": 10}
        ),
        422,
        "audio_prior",
    )
    job = finished(client, client.create_model(corpus["id"], architecture="gpt", train=pair))
    model = client.get(f"/v1/models/{job['model_id']}")
    assert model["capabilities"]["prior"] == "pair" and model["capabilities"]["tags"] == []
    assert model["train_config"]["window_grid"] is None  # one id per step: no grid
    up = model["summary"]["upsampler"]
    assert up["steps"] == 150 and up["kept_step"] in (50, 100, 150) and up["val_nll"] > 0, up
    assert up["stopped"] is False
    refused(lambda: client.sample(model["id"], max_seconds=1, tags=["choir"]), 422, "tags")

    val_file = corpus["stats"]["file_splits"]["val"][0]
    for which in ("best", "latest"):
        job = finished(
            client,
            client.sample(
                model["id"],
                checkpoint=which,
                primer_file_id=val_file,
                primer_seconds=4.0,
                max_seconds=3.0,
                seed=7,
                temperature=0.9,
                top_k=32,
            ),
        )
        sample = client.get(f"/v1/samples/{job['sample_ids'][0]}")
        meta = sample["meta"]
        wave, rate = wav_of(client, sample["id"])
        seam = meta["seam_s"]
        assert seam == pytest.approx(4.0, abs=0.13)
        assert wave.size / rate == pytest.approx(seam + 3.0, abs=0.13)
        # BOS and the primer's steps but the last, which the pair regenerates; no tag slots
        assert meta["primer_tokens"] == 1 + (round(seam * rate / 2048) - 1) * 5
        new = wave[int(seam * rate) :]
        assert 20 * np.log10(np.sqrt(np.mean(new**2)) + 1e-9) > -45  # not silent
        assert meta["audio"]["spectral_flatness"] < NOISE_FLATNESS / 2, meta["audio"]
        s = meta["audio"]["seam"]
        assert s["sample_step"] <= 2 * s["sample_step_p999"] + 1e-3, s  # no click
