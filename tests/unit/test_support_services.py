"""The service helpers the whole suite stands on, exercised against the real services.

If these fail, every integration test would fail in confusing ways, so they get their own
direct checks: each helper starts or finds its service, isolates a namespace, and cleans up.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import psycopg
import pytest
import redis
from obstore.store import S3Store

from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database, libpq_url
from cadenza.launch.processes import (
    ServiceUnavailableError,
    free_port,
    wait_for_http,
    wait_for_port,
    wait_until_healthy,
)
from cadenza.launch.redis import ensure_redis, fresh_redis_url
from cadenza.launch.stack import Launched, api_command
from tests.support.seaweedfs import S3Endpoint, seaweedfs_s3

# --------------------------------------------------------------------------------------------
# ports and waiting
# --------------------------------------------------------------------------------------------


def test_free_port_is_bindable_and_wait_for_port_sees_a_listener() -> None:
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        wait_for_port("127.0.0.1", port, timeout=2)


def test_wait_for_port_times_out_on_a_closed_port() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=str(port)):
        wait_for_port("127.0.0.1", port, timeout=0.3)
    assert time.monotonic() - started < 3


@pytest.fixture
def http_server() -> Iterator[str]:
    """A real HTTP server answering 204 on /ok and 503 elsewhere."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_for_http_returns_the_status(http_server: str) -> None:
    assert wait_for_http(f"{http_server}/ok", timeout=5) == 204
    # Any answer means "up" unless a status set is asked for.
    assert wait_for_http(f"{http_server}/down", timeout=5) == 503
    with pytest.raises(TimeoutError, match="last status 503"):
        wait_for_http(f"{http_server}/down", timeout=0.3, accept={200})


def test_wait_for_http_times_out_without_a_server() -> None:
    with pytest.raises(TimeoutError, match="no HTTP answer"):
        wait_for_http(f"http://127.0.0.1:{free_port()}/", timeout=0.3)


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def _database_exists(admin_url: str, name: str) -> bool:
    with psycopg.connect(libpq_url(admin_url)) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def test_ensure_postgres_answers_queries() -> None:
    url = ensure_postgres()
    assert url == "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    with psycopg.connect(libpq_url(url)) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_fresh_postgres_database_is_private_and_dropped_even_with_open_connections() -> None:
    admin = ensure_postgres()
    with (
        fresh_postgres_database() as first,
        fresh_postgres_database(prefix="cadenza_other") as second,
    ):
        assert first.startswith("postgresql+psycopg://postgres@127.0.0.1:5432/cadenza_test_")
        name = first.rsplit("/", 1)[1]
        assert first != second
        assert _database_exists(admin, name)
        conn = psycopg.connect(libpq_url(first))  # left open on purpose: teardown must FORCE
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
        conn.commit()
        assert conn.execute("SELECT current_database(), sum(x) FROM t").fetchone() == (name, 42)
        with psycopg.connect(libpq_url(second)) as other:
            assert other.execute("SELECT to_regclass('public.t')").fetchone() == (None,)
    assert not _database_exists(admin, name)
    assert conn.closed or conn.broken or not _connection_alive(conn)
    conn.close()


def _connection_alive(conn: psycopg.Connection[object]) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.Error:
        return False
    return True


def test_fresh_postgres_database_refuses_unsafe_prefixes() -> None:
    with pytest.raises(ValueError), fresh_postgres_database(prefix='x"; DROP DATABASE postgres'):
        pass


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def _shutdown_redis(url: str) -> None:
    """Stop a private Redis this test started (never the shared one on 6379)."""
    assert not url.endswith(":6379")
    client = redis.Redis.from_url(url)
    with contextlib.suppress(redis.ConnectionError):  # it hangs up as it exits
        client.shutdown(nosave=True)
    client.close()


def test_ensure_redis_starts_a_server_that_is_down() -> None:
    """The CI path: nothing listens on the port, so ensure_redis must start a daemon."""
    port = free_port()
    url = ensure_redis(port)
    client = redis.Redis.from_url(f"{url}/0")
    try:
        assert url == f"redis://127.0.0.1:{port}"
        assert client.ping()
        # Started without persistence, as documented.
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
        assert ensure_redis(port) == url  # idempotent when up
    finally:
        client.close()
        _shutdown_redis(url)


def test_fresh_redis_url_hands_out_distinct_empty_dbs_and_flushes_them() -> None:
    ensure_redis()
    with fresh_redis_url() as first, fresh_redis_url() as second:
        assert first.startswith("redis://127.0.0.1:6379/")
        assert first != second
        db = int(first.rsplit("/", 1)[1])
        assert 1 <= db <= 15
        a = redis.Redis.from_url(first)
        b = redis.Redis.from_url(second)
        assert a.dbsize() == 0
        a.set("k", "v1")
        b.set("k", "v2")
        assert a.get("k") == b"v1"
        assert b.get("k") == b"v2"
    assert a.dbsize() == 0
    assert b.dbsize() == 0
    claims = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    assert claims.get(f"cadenza:test:redis-db-claim:{db}") in (None, b"")
    for c in (a, b, claims):
        c.close()


def test_fresh_redis_url_skips_dbs_holding_foreign_data() -> None:
    """Data someone else left in a db must be neither used nor flushed."""
    port = free_port()
    base = ensure_redis(port)
    try:
        for db in range(1, 15):  # every db but 15 holds someone else's key
            redis.Redis.from_url(f"{base}/{db}").set("foreign", "keep")
        with fresh_redis_url(port) as url:
            assert url == f"{base}/15"
        assert redis.Redis.from_url(f"{base}/3").get("foreign") == b"keep"
    finally:
        _shutdown_redis(base)


# --------------------------------------------------------------------------------------------
# the API and worker processes
# --------------------------------------------------------------------------------------------


def test_api_command_is_the_api_server_module() -> None:
    argv = api_command(port=1234, log_level="warning")
    assert argv[1:3] == ["-m", "cadenza_api"]
    assert argv[argv.index("--port") + 1] == "1234" and "--processes" not in argv
    assert api_command(port=1, workers=3)[-2:] == ["--processes", "3"]


def test_launched_reports_an_api_that_dies_while_starting(tmp_path: Path) -> None:
    """No minute-long wait for an API that already exited: its code and log come at once."""
    launched = Launched(dict(os.environ), logs=tmp_path)
    launched.start("api", [sys.executable, "-c", "print('no database'); raise SystemExit(3)"])
    launched.api_url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match=r"code 3(.|\n)*no database"):
        launched.wait_ready(timeout=30)
    assert time.monotonic() - started < 10
    launched.stop()
    assert launched.exited() and launched.exit_code() == 3


def test_launched_stop_ends_every_child(tmp_path: Path) -> None:
    launched = Launched(dict(os.environ), log_file=tmp_path / "all.log")
    for name in ("a", "b"):
        launched.start(name, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert not launched.exited()
    started = time.monotonic()
    launched.stop(timeout=5)
    assert time.monotonic() - started < 5  # SIGTERM to both at once, not one after the other
    assert all(p.poll() is not None for p in launched.procs.values())


# --------------------------------------------------------------------------------------------
# SeaweedFS S3
# --------------------------------------------------------------------------------------------


def test_seaweedfs_s3_serves_the_object_operations_storage_needs(tmp_path: Path) -> None:
    with seaweedfs_s3(tmp_path) as endpoint:
        assert isinstance(endpoint, S3Endpoint)
        assert endpoint.endpoint_url.startswith("http://127.0.0.1:")
        store = endpoint.store()

        obstore.put(store, "blobs/ab/one.mid", b"0123456789")
        assert bytes(obstore.get(store, "blobs/ab/one.mid").bytes()) == b"0123456789"
        assert bytes(obstore.get_range(store, "blobs/ab/one.mid", start=2, end=5)) == b"234"
        assert obstore.head(store, "blobs/ab/one.mid")["size"] == 10

        obstore.copy(store, "blobs/ab/one.mid", "jobs/j1/copy.mid")
        obstore.rename(store, "jobs/j1/copy.mid", "jobs/j1/final.mid")
        keys = sorted(str(m["path"]) for batch in obstore.list(store) for m in batch)
        assert keys == ["blobs/ab/one.mid", "jobs/j1/final.mid"]
        jobs = [m["path"] for batch in obstore.list(store, prefix="jobs/") for m in batch]
        assert jobs == ["jobs/j1/final.mid"]

        # Create-once writes (content-addressed blobs) work with obstore's default settings.
        with pytest.raises(obstore.exceptions.AlreadyExistsError):
            obstore.put(store, "blobs/ab/one.mid", b"other", mode="create")

        # Multipart upload (5 MiB parts) and a range read across a part boundary.
        big = bytes(range(256)) * (4096 * 11)
        obstore.put(store, "big.bin", big, chunk_size=5 * 1024 * 1024)
        boundary = 5 * 1024 * 1024 - 2
        got = obstore.get_range(store, "big.bin", start=boundary, length=4)
        assert bytes(got) == big[boundary : boundary + 4]

        obstore.delete(store, ["blobs/ab/one.mid", "jobs/j1/final.mid", "big.bin"])
        with pytest.raises(FileNotFoundError):
            obstore.get(store, "blobs/ab/one.mid")
        assert obstore.list(store).collect() == []

        # The server enforces its credentials, like a production endpoint.
        options = {**endpoint.store_options(), "secret_access_key": "wrong"}
        with pytest.raises(obstore.exceptions.GenericError, match="403"):
            obstore.list(S3Store(endpoint.bucket, **options)).collect()

        port = int(endpoint.endpoint_url.rsplit(":", 1)[1])
    # Stopped and cleaned up: the port is closed and nothing is left in the work folder.
    with pytest.raises(TimeoutError):
        wait_for_port("127.0.0.1", port, timeout=0.2)
    assert list(tmp_path.iterdir()) == []
    for p in (port, port + 10000):
        assert list(Path("/tmp").glob(f"seaweedfs-*-{p}.sock")) == []


def test_wait_until_healthy_returns_none_once_healthy_else_the_last_reason() -> None:
    answers = iter(["starting", "still starting", None])
    assert wait_until_healthy(lambda: next(answers), timeout=5, interval=0.01) is None
    calls: list[int] = []

    def never() -> str:
        calls.append(1)
        return f"refused ({len(calls)})"

    reason = wait_until_healthy(never, timeout=0.05, interval=0.01)
    assert reason == f"refused ({len(calls)})" and len(calls) >= 2
    assert wait_until_healthy(never, timeout=0) == f"refused ({len(calls)})"  # one check only
