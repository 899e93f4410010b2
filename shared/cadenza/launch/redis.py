"""The local Redis server: make sure it answers, and hand out scratch numbered dbs.

Tests and benchmarks never mock the broker, because visibility timeouts and claims only
behave like production against a real Redis. `ensure_redis` starts a throwaway daemon when
none answers; `fresh_redis_url` gives each run its own db number, so several runs can share
one server at the same time.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from cadenza.launch.processes import (
    LOCALHOST,
    ServiceUnavailableError,
    machine_lock,
    wait_until_healthy,
)

REDIS_HOST = LOCALHOST
REDIS_PORT = 6379

_REDIS_CLAIM_PREFIX = "cadenza:test:redis-db-claim:"
_REDIS_CLAIM_TTL_S = 6 * 3600
# Release a claim only if it is still ours (a run that outlived the TTL must not free another's).
_REDIS_RELEASE_LUA = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


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
    with machine_lock("redis"):
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
        reason = wait_until_healthy(lambda: _redis_error(port), timeout)
        if reason is not None:
            raise ServiceUnavailableError(
                f"Redis did not answer on {REDIS_HOST}:{port} within {timeout}s after "
                f"`{' '.join(cmd)}` (output: {output or 'none'}; last error: {reason}). "
                "Is the redis-server package installed?"
            )
    return url


@contextmanager
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
