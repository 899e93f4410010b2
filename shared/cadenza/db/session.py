"""Engine and session factory, configured for SQLite (embedded) and PostgreSQL alike."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

# How long a SQLite write waits for the single writer lock before "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """WAL lets the API read while a worker writes; busy_timeout waits instead of failing."""
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


# Workers and the CLI hold one or two sessions at a time; SQLAlchemy's default pool fits them.
DEFAULT_POOL_SIZE = 5
DEFAULT_POOL_OVERFLOW = 10
DEFAULT_POOL_TIMEOUT = 30.0


def make_engine(
    url: str,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_POOL_OVERFLOW,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> Engine:
    """Create an engine for `url` with the pragmas/pooling that url's backend needs.

    Both backends get a bounded QueuePool of `pool_size` + `max_overflow` connections; a
    checkout waits at most `pool_timeout` seconds and then raises `sqlalchemy.exc.TimeoutError`
    (the API answers that with 503 + Retry-After instead of hanging).
    """
    pool = {"pool_size": pool_size, "max_overflow": max_overflow, "pool_timeout": pool_timeout}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": 30, "check_same_thread": False}, **pool
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, **pool)


@lru_cache(maxsize=8)
def engine_for(
    url: str,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_POOL_OVERFLOW,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> Engine:
    """One engine per URL (and pool shape) per process: engines own connection pools."""
    return make_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_timeout=pool_timeout
    )


def session_factory(
    url: str,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_overflow: int = DEFAULT_POOL_OVERFLOW,
    pool_timeout: float = DEFAULT_POOL_TIMEOUT,
) -> sessionmaker[Session]:
    return sessionmaker(
        engine_for(url, pool_size, max_overflow, pool_timeout), expire_on_commit=False
    )


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def brief_lock_wait(session: Session, ms: int) -> Iterator[None]:
    """Within the block, a write waits at most `ms` for a lock another transaction holds.

    For bookkeeping writes that may be skipped (a key's `last_used_at`): on SQLite one stalled
    writer holds the whole database's write lock, and a read request must not wait the full
    busy timeout behind it. On PostgreSQL the limit is the transaction's `lock_timeout`, which
    its commit or rollback ends; on SQLite the connection's busy timeout is restored after.
    """
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text(f"PRAGMA busy_timeout={int(ms)}"))
        try:
            yield
        finally:
            session.execute(text(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"))
    else:
        session.execute(text(f"SET LOCAL lock_timeout = {int(ms)}"))
        yield
