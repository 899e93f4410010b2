"""A token bucket per (owner, action): `burst` requests at once, refilled at `rate` per second.

One algorithm (`refill_and_take`), two stores: Redis in production (a Lua script doing the same
arithmetic, so a check is one atomic round trip shared by every API process), and the SQL table
`rate_buckets` on the embedded default (a compare-and-swap UPDATE, retried on a lost race, so
two processes never both spend the last token). Time comes from an injectable clock so tests
drive it without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cadenza.db.models import RateBucket

Clock = Callable[[], float]


@dataclass(frozen=True)
class Decision:
    """The bucket's answer: allowed or not, and seconds until one token is back."""

    allowed: bool
    tokens: float
    retry_after_s: float


def refill_and_take(
    tokens: float, updated: float, now: float, *, rate: float, burst: float, cost: float = 1.0
) -> Decision:
    """The bucket's state after refilling from `updated` to `now` and taking `cost` if it can."""
    level = min(burst, tokens + max(0.0, now - updated) * rate)
    if level >= cost:
        return Decision(True, level - cost, 0.0)
    return Decision(False, level, (cost - level) / rate)


class BucketStore(Protocol):
    def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> Decision: ...


class SqlBucketStore:
    """Buckets in `rate_buckets`, written in the caller's transaction (commit is the caller's).

    The UPDATE only applies if the row still holds what was read, so concurrent takers retry
    on the fresh value instead of both spending the same token (SQLite and PostgreSQL alike).
    """

    def __init__(self, session: Session, clock: Clock = time.time) -> None:
        self.session = session
        self.clock = clock

    def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> Decision:
        for _ in range(50):
            now = self.clock()
            row = self.session.execute(
                select(RateBucket.tokens, RateBucket.updated).where(RateBucket.key == key)
            ).first()
            if row is None:
                decision = refill_and_take(burst, now, now, rate=rate, burst=burst, cost=cost)
                try:
                    with self.session.begin_nested():
                        self.session.execute(
                            insert(RateBucket).values(key=key, tokens=decision.tokens, updated=now)
                        )
                except IntegrityError:
                    continue  # another process made the row first: take from it
                return decision
            decision = refill_and_take(
                row.tokens, row.updated, now, rate=rate, burst=burst, cost=cost
            )
            if not decision.allowed:
                return decision
            done = self.session.execute(
                update(RateBucket)
                .where(
                    RateBucket.key == key,
                    RateBucket.tokens == row.tokens,
                    RateBucket.updated == row.updated,
                )
                .values(tokens=decision.tokens, updated=max(now, row.updated))
                .execution_options(synchronize_session=False)
            )
            if getattr(done, "rowcount", 0) == 1:
                return decision
        raise RuntimeError(f"rate bucket {key!r}: too much contention")


# KEYS[1]: the bucket; ARGV: now, rate, burst, cost. The arithmetic of `refill_and_take`.
_LUA = """
local b = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local now, rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local tokens, updated = tonumber(b[1]), tonumber(b[2])
if tokens == nil then tokens = burst; updated = now end
local level = math.min(burst, tokens + math.max(0, now - updated) * rate)
local allowed = 0
local retry = (cost - level) / rate
if level >= cost then
  level = level - cost; allowed = 1; retry = 0
  redis.call('HSET', KEYS[1], 'tokens', tostring(level),
    'updated', tostring(math.max(now, updated)))
  redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
end
return {allowed, tostring(level), tostring(retry)}
"""


class RedisBucketStore:
    """Buckets as Redis hashes under `cadenza:rate:<key>`, updated by one Lua script."""

    def __init__(self, url: str, clock: Clock = time.time, client: Any = None) -> None:
        import redis

        self.client = client or redis.Redis.from_url(url)
        self.script = self.client.register_script(_LUA)
        self.clock = clock

    def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> Decision:
        allowed, level, retry = self.script(
            keys=[f"cadenza:rate:{key}"], args=[repr(self.clock()), rate, burst, cost]
        )
        return Decision(bool(int(allowed)), float(level), float(retry))


_redis_stores: dict[str, RedisBucketStore] = {}


def bucket_store(session: Session, broker_url: str) -> BucketStore:
    """Redis when the broker is Redis (one client per URL per process), else the SQL table."""
    if broker_url.startswith(("redis://", "rediss://")):
        if broker_url not in _redis_stores:
            _redis_stores[broker_url] = RedisBucketStore(broker_url)
        return _redis_stores[broker_url]
    return SqlBucketStore(session)


def retry_after_header(decision: Decision) -> str:
    """Whole seconds for `Retry-After` (at least 1)."""
    return str(max(1, math.ceil(decision.retry_after_s)))
