"""Uploads are bounded per request, and a MIDI parser crash on a worker costs one file.

A stack of its own, because the request cap is set low here (1 MiB, so a refused request is
cheap to build) and its worker is restarted with the sandbox's crash hook armed.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator

import httpx
import pytest

from cadenza.client import Client
from cadenza.midi._sandbox import FAULT_ENV
from tests.integration.test_e2e import store_keys
from tests.support.music import midi_bytes
from tests.support.stack import Stack, run_stack
from tests.unit.test_parser_faults import GOOD, POISON

pytestmark = pytest.mark.integration

CAP = 1024 * 1024


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"CADENZA_MAX_REQUEST_UNPACKED_BYTES": str(CAP)}
    with run_stack(tmp_path_factory.mktemp("capped"), env) as stack:
        yield stack


def _zip_of(size: int) -> bytes:
    """A zip whose one MIDI member unpacks to `size` bytes (MIDI + padding chunk)."""
    song = midi_bytes([(i * 240, 240, 60 + i % 12, 80) for i in range(16)])
    pad = size - len(song) - 8
    member = (
        song + b"XPad" + pad.to_bytes(4, "big") + os.urandom(pad // 150) + bytes(pad - pad // 150)
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("song.mid", member)
    return buf.getvalue()


def test_request_over_the_unpacked_cap_is_refused_and_stores_nothing(capped: Stack) -> None:
    client = Client(capped.api_url, capped.api_key)
    ds = client.post("/v1/datasets", {"name": "capped"})["id"]
    before = store_keys(capped)
    http = httpx.Client(base_url=capped.api_url, headers=client.http.headers, timeout=60)
    half = _zip_of(CAP * 6 // 10)
    # Each zip alone is within every per-zip limit; together they pass the request's cap.
    cases = {
        "two zips": [("files", ("a.zip", half)), ("files", ("b.zip", half))],
        "zip and parts": [("files", ("a.zip", half)), ("files", ("p.mid", GOOD + bytes(CAP // 2)))],
    }
    for name, files in cases.items():
        r = http.post(f"/v1/datasets/{ds}/files", files=files)
        assert r.status_code == 413, (name, r.text)
        err = r.json()["error"]
        assert err["code"] == "request_too_large"
        assert "max_request_unpacked_bytes" in err["message"] and str(CAP) in err["message"]
    assert client.get(f"/v1/datasets/{ds}/files")["files"] == []
    assert store_keys(capped) == before  # no object written, not even briefly kept
    ok = http.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.zip", half))])
    assert ok.status_code == 201, ok.text


def test_parser_crash_on_a_worker_fails_that_render_only(capped: Stack) -> None:
    client = Client(capped.api_url, capped.api_key)
    ds = client.post("/v1/datasets", {"name": "poison"})["id"]
    http = httpx.Client(base_url=capped.api_url, headers=client.http.headers, timeout=60)
    r = http.post(
        f"/v1/datasets/{ds}/files",
        files=[("files", ("poison.mid", POISON)), ("files", ("good.mid", GOOD))],
    )
    assert r.status_code == 201, r.text  # the API's sandbox has no crash hook armed
    poison, good = (f["id"] for f in r.json()["files"])
    capped.kill_workers()
    capped.launched.start_worker(extra_env={FAULT_ENV: "crash"})
    worker = capped.launched.procs["worker1"]

    job = http.get(f"/v1/files/{poison}/pianoroll.png").json()
    final = client.wait(job["id"], timeout=120)
    assert final["state"] == "failed" and "crashed" in str(final), final
    job = http.get(f"/v1/files/{good}/pianoroll.png").json()
    assert client.wait(job["id"], timeout=120)["state"] == "succeeded"
    assert worker.poll() is None  # the same worker process did both
    assert http.get(f"/v1/files/{good}/pianoroll.png").status_code == 200
