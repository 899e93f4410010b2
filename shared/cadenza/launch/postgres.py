"""The local PostgreSQL server: make sure it runs, and hand out scratch databases.

Tests and benchmarks never mock the database, because the bugs that matter (transactions,
claims by compare-and-set) only show up against the real thing. On a developer machine the
server usually runs already; on CI (a fresh clone) the Debian package is installed but may be
stopped, so `ensure_postgres` starts it with a bounded wait and an error that says what to do.
`fresh_postgres_database` gives each run its own database, so several runs can share one
server at the same time.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from cadenza.launch.processes import (
    LOCALHOST,
    ServiceUnavailableError,
    machine_lock,
    privileged,
    wait_until_healthy,
)

POSTGRES_HOST = LOCALHOST
POSTGRES_PORT = 5432
POSTGRES_USER = "postgres"

_PG_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,39}$")


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
    with machine_lock("postgres"):
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
        cmd = privileged([ctl, "--skip-systemctl-redirect", version, cluster, "start"])
        hopeless = False
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            started_output = (proc.stdout + proc.stderr).strip()
            # Exit 2 with "already running" means another process won the race: wait for it.
            # Any other failure (no such cluster, no permission) will not fix itself.
            hopeless = proc.returncode != 0 and "already running" not in started_output
        except (OSError, subprocess.TimeoutExpired) as exc:
            started_output = f"{type(exc).__name__}: {exc}"
        wait_s = 0 if hopeless else timeout
        reason = wait_until_healthy(lambda: _pg_error(port), wait_s, interval=0.2)
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
