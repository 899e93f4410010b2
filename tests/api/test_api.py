"""The HTTP contract in-process (real SQLite + local store, no worker): auth, validation,
limits and error shapes. The worker side is covered by tests/integration."""

from __future__ import annotations

import io
import wave
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza_api.app import create_app
from tests.support.music import midi_bytes


def tiny_midi(notes: int = 16) -> bytes:
    return midi_bytes([(i * 240, 240, 60 + i % 12, 80) for i in range(notes)])


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path, max_upload_bytes=64 * 1024, max_files_per_upload=5)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="alice")
    c = TestClient(create_app(settings))
    c.headers["Authorization"] = f"Bearer {key}"
    yield c


def objects(settings: Settings) -> list[Path]:
    root = settings.data_dir / "objects"
    return sorted(p for p in root.rglob("*") if p.is_file())


def dataset(client: TestClient) -> str:
    r = client.post("/v1/datasets", json={"name": "d"})
    assert r.status_code == 201
    return str(r.json()["id"])


def test_openapi_and_health(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in ("/v1/datasets", "/v1/corpora", "/v1/models", "/v1/jobs/{job_id}/cancel"):
        assert path in spec["paths"]
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_auth_required(client: TestClient) -> None:
    r = client.get("/v1/datasets", headers={"Authorization": ""})
    assert r.status_code == 401
    assert "cadenza keys create" in r.json()["error"]["message"]
    r = client.get("/v1/datasets", headers={"Authorization": "Bearer cz_nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_validation_errors_name_the_field(client: TestClient) -> None:
    r = client.post("/v1/datasets", json={"name": ""})
    assert r.status_code == 422 and "name" in r.json()["error"]["message"]
    r = client.post("/v1/datasets", json={"name": "x", "colour": "red"})
    assert r.status_code == 422 and "colour" in r.json()["error"]["message"]


def test_max_copied_fraction_is_a_fraction(client: TestClient) -> None:
    for bad in (1.5, -0.1, "most"):
        r = client.post("/v1/models/m1/samples", json={"max_copied_fraction": bad})
        assert r.status_code == 422 and "max_copied_fraction" in r.json()["error"]["message"]


def test_quantize_names_the_modes_it_takes(client: TestClient) -> None:
    for bad in ("int4", "fp8", 8):
        r = client.post("/v1/models/m1/samples", json={"quantize": bad})
        message = r.json()["error"]["message"]
        assert r.status_code == 422 and "quantize" in message and "int8" in message, message
    assert client.get("/v1/jobs").json()["jobs"] == []  # nothing queued


def test_paging_is_validated_on_every_list_route(client: TestClient) -> None:
    ds = dataset(client)
    routes = ["/v1/datasets", f"/v1/datasets/{ds}/files", "/v1/corpora", "/v1/models", "/v1/jobs"]
    for route in routes:
        queries = ("limit=-1", "limit=0", "limit=100000", f"limit={10**20}", "offset=-1")
        for query in (*queries, f"offset={10**20}"):
            r = client.get(f"{route}?{query}")
            field = query.split("=")[0]
            assert r.status_code == 422 and field in r.json()["error"]["message"], (route, query)
        assert client.get(f"{route}?limit=1&offset=0").status_code == 200
    names = [client.post("/v1/datasets", json={"name": f"d{i}"}).json()["name"] for i in range(3)]
    page = [d["name"] for d in client.get("/v1/datasets?limit=2&offset=1").json()]
    assert page == [names[1], names[0]]  # newest first: d2, d1, d0, then the fixture's dataset


def test_upload_many_and_zip(client: TestClient, settings: Settings) -> None:
    ds = dataset(client)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("a/b/../../evil.mid", tiny_midi(20))
        zf.writestr("__MACOSX/._junk", b"junk")
    files = [
        ("files", ("one.mid", tiny_midi(10))),
        ("files", ("two.bin", tiny_midi(12))),  # the name does not matter, the content does
        ("files", ("songs.zip", buf.getvalue())),
    ]
    r = client.post(f"/v1/datasets/{ds}/files", files=files)
    assert r.status_code == 201, r.text
    got = r.json()["files"]
    assert [f["meta"]["notes"] for f in got] == [10, 12, 20]
    assert {f["kind"] for f in got} == {"midi"}
    keys = [str(p.relative_to(settings.data_dir / "objects")) for p in objects(settings)]
    assert all(k.startswith("blobs/") and ".." not in k and "evil" not in k for k in keys)
    content = client.get(f"/v1/files/{got[0]['id']}/content")
    assert content.status_code == 200 and content.headers["content-type"] == "audio/midi"
    assert content.content == tiny_midi(10)


def test_one_bad_file_stores_nothing(client: TestClient, settings: Settings) -> None:
    ds = dataset(client)
    files = [("files", ("good.mid", tiny_midi())), ("files", ("bad.mid", b"MThd garbage"))]
    r = client.post(f"/v1/datasets/{ds}/files", files=files)
    assert 400 <= r.status_code < 500
    assert "bad.mid" in r.json()["error"]["message"]
    assert objects(settings) == []
    assert client.get(f"/v1/datasets/{ds}/files").json()["files"] == []


def test_upload_limits(client: TestClient, settings: Settings) -> None:
    ds = dataset(client)
    r = client.post(f"/v1/datasets/{ds}/files", files=[("files", ("big.mid", b"x" * 70_000))])
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
    many = [("files", (f"{i}.mid", tiny_midi())) for i in range(6)]
    r = client.post(f"/v1/datasets/{ds}/files", files=many)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_many_files"
    r = client.post(f"/v1/datasets/{ds}/files", data={"x": "1"})
    assert r.status_code in (400, 415)
    r = client.post(
        f"/v1/datasets/{ds}/files", content=b"raw", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 415
    assert objects(settings) == []


def test_corpus_and_model_requests_are_validated(client: TestClient) -> None:
    ds = dataset(client)
    r = client.post("/v1/corpora", json={"dataset_id": ds})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_midi_files"
    client.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.mid", tiny_midi()))])
    r = client.post(
        "/v1/corpora",
        json={"dataset_id": ds, "tokenizer": "Octuple", "bpe": {"vocab_size": 2000}},
    )
    assert r.status_code == 422 and "bpe" in r.json()["error"]["message"]
    r = client.post(
        "/v1/corpora", json={"dataset_id": ds, "tokenizer_config": {"num_velocities": "many"}}
    )
    assert r.status_code == 422 and "num_velocities" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={"dataset_id": ds, "preset": "nope"})
    assert r.status_code == 422 and "remi-colab" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={"dataset_id": ds, "split": [0.5, 0.2, 0.2]})
    assert r.status_code == 422 and "split" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={"dataset_id": ds, "tokenizer": "REMI"})
    assert r.status_code == 202 and r.json()["state"] == "queued"
    r = client.post("/v1/models", json={"corpus_id": "0" * 32})
    assert r.status_code == 404


def test_quarter_vq_corpus_requests(client: TestClient) -> None:
    """The learned quarter-vq tokenizer: options validated at request time, naming the field."""
    ds = dataset(client)
    client.post(f"/v1/datasets/{ds}/files", files=[("files", ("a.mid", tiny_midi()))])
    body = {"dataset_id": ds, "tokenizer": "quarter-vq"}
    r = client.post("/v1/corpora", json={**body, "tokenizer_config": {"codebook_size": 1}})
    assert r.status_code == 422 and "config.codebook_size" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={**body, "tokenizer_config": {"channels": [8, 16]}})
    assert r.status_code == 422 and "config.channels" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={**body, "bpe": {"vocab_size": 100}})
    assert r.status_code == 422 and "bpe" in r.json()["error"]["message"]
    r = client.post("/v1/corpora", json={**body, "tokenizer_config": {"steps": 10}})
    assert r.status_code == 202, r.json()
    spec = r.json()["params"]["tokenizer_spec"]
    assert spec["name"] == "quarter-vq" and spec["config"]["steps"] == 10
    r = client.post("/v1/corpora", json={"dataset_id": ds, "preset": "bachsformer-vq"})
    assert r.status_code == 202, r.json()


def test_a_database_that_does_not_answer_gives_json_503_and_leaks_nothing(tmp_path: Path) -> None:
    # Nothing listens on port 9 of loopback: every connection is refused at once.
    url = "postgresql+psycopg://cadenza:secret@127.0.0.1:9/cadenza"
    down = TestClient(create_app(Settings(data_dir=tmp_path, database_url=url)))
    down.headers["Authorization"] = "Bearer cz_" + "x" * 40
    r = down.get("/v1/datasets")
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert r.json()["error"]["code"] == "unavailable"
    assert "127.0.0.1" not in r.text and "secret" not in r.text and "SELECT" not in r.text
    ready = down.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unavailable"
    assert "127.0.0.1" not in ready.text and "9" not in ready.json()["checks"]["database"]


def test_audio_job_requests_are_checked_after_their_files_and_queue_nothing(
    client: TestClient,
) -> None:
    ds = dataset(client)
    body = {"operation": "crop", "crop": {"positions_text": "1,abc"}}
    r = client.post(f"/v1/datasets/{ds}/audio-jobs", json=body)
    assert r.status_code == 409  # no audio yet: said before the cut list is read
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"\x00\x01" * 32000)
    files = [("files", ("a.wav", buf.getvalue()))]
    assert client.post(f"/v1/datasets/{ds}/files", files=files).status_code == 201
    r = client.post(f"/v1/datasets/{ds}/audio-jobs", json=body)
    assert r.status_code == 422 and "positions_text" in r.json()["error"]["message"]
    bad_tail = {"operation": "crop", "crop": {"interval_s": 1, "min_tail_s": 2}}
    r = client.post(f"/v1/datasets/{ds}/audio-jobs", json=bad_tail)
    assert r.status_code == 422 and "min_tail_s" in r.json()["error"]["message"]
    for transcribe, named in [
        ({"engine": "onsets-and-frames"}, "transcribe.engine"),
        ({"engine": "transkun", "onset_threshold": 0.4}, "onset_threshold"),
    ]:
        r = client.post(
            f"/v1/datasets/{ds}/audio-jobs",
            json={"operation": "transcribe", "transcribe": transcribe},
        )
        assert r.status_code == 422 and named in r.json()["error"]["message"], r.text
    assert client.get("/v1/jobs").json()["jobs"] == []


def test_the_api_processes_share_the_database_slots(tmp_path: Path) -> None:
    """`db_pool_size` bounds the whole server's sessions, whatever the process count."""
    from cadenza_api.deps import DEFAULT_SLOTS, MIN_SLOTS, Database

    def slots(processes: int) -> int:
        return Database(Settings(data_dir=tmp_path, db_pool_size=20, api_processes=processes)).slots

    assert [slots(1), slots(2), slots(3), slots(4)] == [20, 10, 7, 5]
    assert slots(30) == MIN_SLOTS
    # Unset: a few per process (threads holding sessions queue for the process's one GIL).
    for processes in (1, 2, 4):
        assert Database(Settings(data_dir=tmp_path, api_processes=processes)).slots == DEFAULT_SLOTS
