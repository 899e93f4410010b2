"""Object store: key builders refuse client-controlled paths; the local store round-trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from cadenza.config import Settings
from cadenza.storage import ObjectNotFound, blob_key, check_key, job_key, open_store


def test_keys_never_come_from_client_names() -> None:
    digest = "ab" * 32
    assert blob_key(digest, "mid") == f"blobs/ab/{digest}.mid"
    for bad in ("../etc/passwd", "/abs", "a//b", "UPPER", "x/../y", ""):
        with pytest.raises(ValueError):
            check_key(bad)
    with pytest.raises(ValueError):
        blob_key("not-a-digest", "mid")
    with pytest.raises(ValueError):
        blob_key(digest, "../x")
    with pytest.raises(ValueError):
        job_key("abc", "..", "x")


def test_local_store_round_trip(tmp_path: Path) -> None:
    store = open_store(Settings(data_dir=tmp_path))
    store.put("jobs/j1/a.bin", b"hello")
    store.put_atomic("jobs/j1/ckpt.pt", b"x" * 3_000_000)
    assert store.get("jobs/j1/a.bin") == b"hello"
    assert store.size("jobs/j1/ckpt.pt") == 3_000_000
    assert b"".join(store.iter_chunks("jobs/j1/ckpt.pt")) == b"x" * 3_000_000
    assert [o.key for o in store.list("jobs/j1")] == ["jobs/j1/a.bin", "jobs/j1/ckpt.pt"]
    assert not any(o.key.endswith(".tmp") for o in store.list(""))
    assert store.delete_prefix("jobs/j1") == 2
    assert store.list("") == []
    with pytest.raises(ObjectNotFound):
        store.get("jobs/j1/a.bin")
    store.delete("jobs/j1/a.bin")  # deleting a missing key is fine


def test_production_settings_refuse_defaults() -> None:
    with pytest.raises(ValueError, match="CADENZA_DATABASE_URL"):
        Settings(env="production")
    with pytest.raises(ValueError, match="SECRET"):
        Settings(
            env="production",
            database_url="postgresql+psycopg://x@y/z",
            broker_url="redis://r",
            storage_url="s3://b",
            s3_secret_access_key="changeme",
        )
    Settings(data_dir=Path("/tmp/x"))  # development: embedded defaults are fine
