"""The `cadenza` command line against the real API and workers, on both deployments: the whole
path a user types (dataset, upload, corpus, model, sample, play, show) and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import symusic

from tests.support.stack import Stack

pytestmark = pytest.mark.integration

CADENZA = str(Path(sys.executable).with_name("cadenza"))


def cli(stack: Stack, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `cadenza ARGS` as a user would, with the stack's URL and key in the environment."""
    env = {**os.environ, "CADENZA_API_URL": stack.api_url, "CADENZA_API_KEY": stack.api_key}
    proc = subprocess.run(
        [CADENZA, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if ok:
        assert proc.returncode == 0, f"cadenza {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def cli_json(stack: Stack, *args: str) -> Any:
    return json.loads(cli(stack, *args).stdout)


def test_cli_dataset_to_sample_audio_and_picture(
    stack: Stack, chorales: list[Path], tmp_path: Path
) -> None:
    ds = cli_json(stack, "datasets", "create", "cli chorales")
    uploaded = cli(stack, "datasets", "upload", ds["id"], *map(str, chorales[:3])).stdout
    assert uploaded.count("midi") == 3, uploaded

    # In 2 parts (tokenize_shard jobs, merged): the same corpus as one process builds.
    corpus = cli_json(
        stack, "corpora", "create", ds["id"], "--preset", "remi-colab", "--shards", "2"
    )
    assert corpus["dataset_id"] == ds["id"] and corpus["vocab_size"] > 100
    assert corpus["stats"]["shards"] == 2

    # Held for a Kubernetes Job: queued on `cluster`, which no worker takes from.
    held = cli_json(stack, "models", "create", corpus["id"], "--preset", "tiny", "--cluster-job")
    assert held["queue"] == "cluster" and held["state"] == "queued", held
    time.sleep(2)  # a worker on the gpu queue would have claimed it by now
    assert cli_json(stack, "jobs", "show", held["id"])["state"] == "queued"
    assert cli_json(stack, "jobs", "cancel", held["id"])["state"] == "cancelled"

    job = cli_json(
        stack,
        "models",
        "create",
        corpus["id"],
        "--architecture",
        "music-transformer",
        "--preset",
        "tiny",
        "--train",
        '{"max_steps": 10, "eval_interval": 5, "batch_size": 4, "seq_len": 64}',
    )
    assert job["state"] == "succeeded"
    model_id = job["model_id"]

    out = tmp_path / "samples"
    printed = cli(
        stack,
        "sample",
        model_id,
        "--primer",
        str(chorales[3]),
        "--primer-bars",
        "1",
        "-n",
        "2",
        "--max-new-tokens",
        "48",
        "--seed",
        "7",
        "--top-k",
        "20",
        "--options",
        '{"repetition_penalty": 1.1}',
        "--quantize",
        "int8",
        "-o",
        str(out),
    ).stdout.split()
    mids = sorted(out.glob("*.mid"))
    assert len(mids) == 2 and sorted(map(str, mids)) == sorted(printed)
    for mid in mids:
        assert symusic.Score(str(mid)).note_num() > 0
    # Decoded by the model's int8 copy, and the sample records that it was.
    assert cli_json(stack, "samples", "show", mids[0].stem)["params"]["quantize"] == "int8"

    # MIDI in, MIDI out: one command, the continuation written beside the input (or -o).
    cont = tmp_path / "cont.mid"
    printed = cli(
        stack,
        "continue",
        model_id,
        str(chorales[3]),
        "--primer-bars",
        "1",
        "--max-new-tokens",
        "24",
        "--seed",
        "3",
        "-o",
        str(cont),
    ).stdout.split()
    assert printed == [str(cont)] and symusic.Score(str(cont)).note_num() > 0
    # Past --wait the job is followed; with -n 2 both MIDI files land in a folder.
    folder = tmp_path / "continued"
    printed = cli(
        stack,
        "continue",
        model_id,
        str(chorales[3]),
        "-n",
        "2",
        "--max-new-tokens",
        "24",
        "--wait",
        "0",
        "-o",
        str(folder),
    ).stdout.split()
    assert sorted(printed) == sorted(map(str, folder.glob("*.mid"))) and len(printed) == 2

    sample_id = mids[0].stem
    wav = tmp_path / "s.wav"
    cli(stack, "play", sample_id, "--format", "wav", "-o", str(wav))
    assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 10_000
    png = tmp_path / "s.png"
    cli(stack, "show", sample_id, "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_say_what_to_fix(stack: Stack, tmp_path: Path) -> None:
    ds = cli_json(stack, "datasets", "create", "cli errors")
    text = tmp_path / "notes.mid"
    text.write_text("not a MIDI file")
    bad = cli(stack, "datasets", "upload", ds["id"], str(text), ok=False)
    assert bad.returncode == 1 and "415" in bad.stderr
    assert cli_json(stack, "datasets", "files", ds["id"])["files"] == []  # nothing stored

    bad = cli(stack, "corpora", "create", ds["id"], ok=False)
    assert bad.returncode == 1 and "409" in bad.stderr and "upload" in bad.stderr

    bad = cli(stack, "sample", "nope", "--options", '{"temperature": -1}', ok=False)
    assert bad.returncode == 1 and "422" in bad.stderr and "temperature" in bad.stderr
    bad = cli(stack, "sample", "nope", "--max-copied-fraction", "2", ok=False)
    assert bad.returncode == 1 and "422" in bad.stderr and "max_copied_fraction" in bad.stderr

    bad = cli(stack, "models", "create", "nope", "--train", "{max_steps: 3}", ok=False)
    assert bad.returncode == 2 and "--train is not valid JSON" in bad.stderr
