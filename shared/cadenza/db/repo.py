"""Repository functions: keyword-only, owner-scoped, shared by the API, CLI and handlers."""

from __future__ import annotations

import hashlib
import mmap
import os
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import func, inspect, literal, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from cadenza.db.models import ApiKey, Base, Checkpoint, Dataset, File, Owner, Sample, utcnow
from cadenza.validation import InvalidParams

KEY_PREFIX = "cz_"
T = TypeVar("T", bound=Base)


class NotFound(LookupError):
    """No such row for this owner (another owner's row is reported the same way)."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"{kind} {id} not found")
        self.kind = kind
        self.id = id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_owner(*, session: Session, name: str) -> Owner:
    owner = session.scalar(select(Owner).where(Owner.name == name))
    if owner is None:
        owner = Owner(name=name)
        session.add(owner)
        session.flush()
    return owner


SCOPES = ("read", "write", "train", "admin")
DEFAULT_SCOPES = ("read", "write", "train")
# `last_used_at` is written at most this often per key and process: a write per request would
# double the cost of a GET (and serialize every request on SQLite's single writer).
TOUCH_INTERVAL_S = 60.0


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """`scopes` deduplicated in canonical order; InvalidParams naming an unknown one."""
    wanted = [s.strip() for s in scopes if s.strip()]
    for s in wanted:
        if s not in SCOPES:
            raise InvalidParams(f"scopes: unknown scope {s!r} (choose from {', '.join(SCOPES)})")
    if not wanted:
        raise InvalidParams(f"scopes: give at least one of {', '.join(SCOPES)}")
    return [s for s in SCOPES if s in wanted]


def issue_api_key(
    *,
    session: Session,
    owner_name: str,
    scopes: Iterable[str] = DEFAULT_SCOPES,
    name: str = "",
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make a new key for `owner_name` (created if new): the row and the secret, which is
    returned once and never stored (only its hash is)."""
    owner = get_or_create_owner(session=session, name=owner_name)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        owner_id=owner.id,
        prefix=key[:10],
        key_hash=hash_key(key),
        scopes=check_scopes(scopes),
        name=name,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, key


def create_api_key(*, session: Session, owner_name: str, **options: Any) -> tuple[Owner, str]:
    """`issue_api_key` for callers that need the owner (tests, the demo)."""
    row, key = issue_api_key(session=session, owner_name=owner_name, **options)
    return session.get_one(Owner, row.owner_id), key


def aware(t: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC."""
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's owner, the key and what it may do."""

    owner: Owner
    key_id: str
    scopes: tuple[str, ...]
    expires_at: datetime | None
    last_used_at: datetime | None

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class KeyRefused(Exception):
    """A key that does not authenticate; `reason` is `invalid`, `revoked` or `expired`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeyEpoch:
    """Eight bytes that the API processes of one host share through a memory-mapped file, and
    that any of them changes when it revokes a key: every process's `KeyCache` sees the
    change on its next lookup (a memory read, no system call) and forgets what it verified.

    Why: with several API processes on one port, a revoke answered by one process must not
    leave the key working on the others for the cache's lifetime.
    """

    SIZE = 8

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)
            self._map = mmap.mmap(fd, self.SIZE)
        finally:
            os.close(fd)

    def read(self) -> bytes:
        return self._map[: self.SIZE]

    def bump(self) -> None:
        # Random, not a counter: two processes bumping at once still leave a new value.
        self._map[: self.SIZE] = secrets.token_bytes(self.SIZE)


class KeyCache:
    """Recently verified keys, by key hash, each trusted for `ttl` seconds.

    Why: the key check was 40% of the API's CPU time on `GET /v1/datasets/{id}` (two ORM
    queries per request: key row, then owner; sha256 itself is negligible). Only successful
    checks are cached, so a new key works at once; a key revoked in another process (the CLI,
    another API replica) keeps working here for at most `ttl` seconds (a revoke through this
    process clears the cache). Expiry is checked on every hit. Entries hold detached owner
    copies that a session adopts with `merge(load=False)`, which emits no SQL. Thread-safe
    (sync routes run on many threads).
    """

    def __init__(
        self, ttl: float, max_entries: int = 10_000, epoch: KeyEpoch | None = None
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()
        self._epoch = epoch
        self._seen = epoch.read() if epoch is not None else b""

    def lookup(self, session: Session, key: str) -> Caller | None:
        """The cached caller of `key`, its owner adopted by `session`, or None; no SQL."""
        cached = self.get(hash_key(key))
        if cached is None:
            return None
        return replace(cached, owner=session.merge(cached.owner, load=False))

    def get(self, digest: str) -> Caller | None:
        with self._lock:
            if self._epoch is not None and (now := self._epoch.read()) != self._seen:
                self._entries.clear()  # a process sharing the epoch revoked a key
                self._seen = now
            entry = self._entries.get(digest)
            if entry is None or entry[0] < time.monotonic():
                self._entries.pop(digest, None)
                return None
            return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        if self.ttl <= 0:
            return
        columns = {a.key: getattr(caller.owner, a.key) for a in inspect(Owner).column_attrs}
        copy = Owner(**columns)
        make_transient_to_detached(copy)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.ttl, replace(caller, owner=copy))

    def due_for_touch(self, caller: Caller) -> bool:
        """Whether `last_used_at` of the caller's key should be written now (and note that it
        is): at most once per `TOUCH_INTERVAL_S` per key in this process, and not when the
        stored time is that recent already."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(caller.key_id, -TOUCH_INTERVAL_S) < TOUCH_INTERVAL_S:
                return False
            if len(self._touched) >= self.max_entries:
                self._touched.clear()
            self._touched[caller.key_id] = now
        last = aware(caller.last_used_at)
        return last is None or (utcnow() - last).total_seconds() >= TOUCH_INTERVAL_S

    def clear(self) -> None:
        """Forget every verified key, here and in the processes sharing the epoch."""
        with self._lock:
            self._entries.clear()
            if self._epoch is not None:
                self._epoch.bump()
                self._seen = self._epoch.read()


def caller_for_key(*, session: Session, key: str, cache: KeyCache | None = None) -> Caller:
    """The caller of a live key; KeyRefused saying why not. Compares hashes in constant time.

    With `cache`, a key verified less than `cache.ttl` seconds ago is answered without SQL.
    """
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        raise KeyRefused("invalid", "invalid API key")
    caller = cache.lookup(session, key) if cache is not None else None
    if caller is None:
        digest = hash_key(key)
        row = _key_row(session, key, digest)
        if row is None:
            raise KeyRefused("invalid", "invalid API key")
        if row.revoked_at is not None:
            raise KeyRefused("revoked", f"API key {row.id} was revoked")
        caller = Caller(
            owner=session.get_one(Owner, row.owner_id),
            key_id=row.id,
            scopes=tuple(row.scopes),
            expires_at=aware(row.expires_at),
            last_used_at=aware(row.last_used_at),
        )
        if cache is not None:
            cache.put(digest, caller)
    return ensure_unexpired(caller)


def ensure_unexpired(caller: Caller) -> Caller:
    """`caller`, or KeyRefused when its key expired (checked on every request, cached or not)."""
    if caller.expires_at is not None and caller.expires_at <= utcnow():
        raise KeyRefused(
            "expired",
            f"API key {caller.key_id} expired at {caller.expires_at.isoformat()}: "
            "make a new one (`cadenza keys create`)",
        )
    return caller


def owner_for_key(*, session: Session, key: str, cache: KeyCache | None = None) -> Owner | None:
    """The owner of a live key, or None."""
    try:
        return caller_for_key(session=session, key=key, cache=cache).owner
    except KeyRefused:
        return None


def _key_row(session: Session, key: str, digest: str) -> ApiKey | None:
    row = session.scalar(select(ApiKey).where(ApiKey.prefix == key[:10]).limit(1))
    candidates = [row] if row is not None else []
    if row is not None and not secrets.compare_digest(row.key_hash, digest):
        candidates = list(session.scalars(select(ApiKey).where(ApiKey.key_hash == digest)))
    for k in candidates:
        if secrets.compare_digest(k.key_hash, digest):
            return k
    return None


def touch_key(*, session: Session, key_id: str) -> None:
    """Record that the key was used now (callers throttle with `KeyCache.due_for_touch`)."""
    session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=utcnow()))


def list_api_keys(
    *, session: Session, owner_id: str | None = None, limit: int = 100, offset: int = 0
) -> list[tuple[ApiKey, str]]:
    """Keys (newest first) with their owner's name: all of them, or those of `owner_id`."""
    stmt = select(ApiKey, Owner.name).join(Owner, Owner.id == ApiKey.owner_id)
    if owner_id is not None:
        stmt = stmt.where(ApiKey.owner_id == owner_id)
    stmt = stmt.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit).offset(offset)
    return [(k, name) for k, name in session.execute(stmt)]


def find_owner(*, session: Session, name: str) -> Owner | None:
    return session.scalar(select(Owner).where(Owner.name == name))


def revoke_api_key(*, session: Session, key_id: str, owner_id: str | None = None) -> ApiKey:
    """Revoke one key (of `owner_id` when given; NotFound otherwise); revoking twice keeps the
    first time."""
    row = session.get(ApiKey, key_id) if len(key_id) <= 64 else None
    if row is None or (owner_id is not None and row.owner_id != owner_id):
        raise NotFound("api key", key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def revoke_keys(*, session: Session, owner_name: str) -> int:
    """Revoke every live key of `owner_name`; how many."""
    owner = find_owner(session=session, name=owner_name)
    if owner is None:
        return 0
    keys = list(
        session.scalars(
            select(ApiKey).where(ApiKey.owner_id == owner.id, ApiKey.revoked_at.is_(None))
        )
    )
    for k in keys:
        k.revoked_at = utcnow()
    return len(keys)


def get_owned(session: Session, model: type[T], id: str, owner_id: str) -> T:
    """The row `id` of `model` if it belongs to `owner_id`, else NotFound (no existence leak)."""
    row = session.get(model, id) if len(id) <= 64 else None
    if row is None or getattr(row, "owner_id", None) != owner_id:
        raise NotFound(model.__tablename__.rstrip("s").replace("corpora", "corpus"), id)
    return row


def list_owned(
    session: Session,
    model: type[T],
    owner_id: str,
    *,
    limit: int = 100,
    offset: int = 0,
    **filters: Any,
) -> list[T]:
    stmt = select(model).where(model.owner_id == owner_id)  # type: ignore[attr-defined]
    for name, value in filters.items():
        stmt = stmt.where(getattr(model, name) == value)
    # The id breaks ties of equal timestamps, so pages never repeat or skip a row.
    newest = (model.created_at.desc(), model.id.desc())  # type: ignore[attr-defined]
    stmt = stmt.order_by(*newest).limit(limit).offset(offset)
    return list(session.scalars(stmt))


# How many ancestors `sample_lineage` walks up at most: far more than anyone continues a piece,
# and a bound, so a chain that loops (which the API cannot make) still ends.
MAX_LINEAGE_DEPTH = 1000


def sample_lineage(
    session: Session, sample_id: str, owner_id: str, *, max_depth: int = MAX_LINEAGE_DEPTH
) -> tuple[list[Sample], bool]:
    """The sample's ancestors through `parent_sample_id`, root first, the sample itself last,
    and whether the walk stopped before a root (deeper than `max_depth`, or a loop).

    One recursive query, on SQLite and PostgreSQL alike: depth is counted, so it ends; only the
    owner's rows are followed. NotFound for a sample that is not the owner's.
    """
    get_owned(session, Sample, sample_id, owner_id)
    chain = (
        select(Sample.id, Sample.parent_sample_id, literal(0).label("depth"))
        .where(Sample.id == sample_id)
        .cte("lineage", recursive=True)
    )
    chain = chain.union_all(
        select(Sample.id, Sample.parent_sample_id, chain.c.depth + 1)
        .join(chain, Sample.id == chain.c.parent_sample_id)
        .where(Sample.owner_id == owner_id, chain.c.depth < max_depth)
    )
    links = list(session.execute(select(chain.c.id, chain.c.parent_sample_id, chain.c.depth)))
    ids: list[str] = []
    for link in sorted(links, key=lambda r: int(r.depth)):
        if link.id in ids:  # a loop: each sample once
            break
        ids.append(link.id)
    rows = {s.id: s for s in session.scalars(select(Sample).where(Sample.id.in_(ids)))}
    # The oldest listed still has a parent: the walk hit the bound or went round a loop.
    truncated = rows[ids[-1]].parent_sample_id is not None
    return [rows[i] for i in reversed(ids)], truncated


def pick_checkpoint(*, session: Session, model_id: str, which: str = "best") -> Checkpoint | None:
    """The checkpoint to sample from: `best` (lowest val loss), `latest`, or an id."""
    stmt = select(Checkpoint).where(Checkpoint.model_id == model_id)
    if which == "latest":
        return session.scalar(stmt.order_by(Checkpoint.step.desc()).limit(1))
    if which == "best":
        best = session.scalar(
            stmt.where(Checkpoint.is_best.is_(True)).order_by(Checkpoint.step.desc()).limit(1)
        )
        return best or session.scalar(stmt.order_by(Checkpoint.step.desc()).limit(1))
    return session.scalar(stmt.where(Checkpoint.id == which))


def datasets_with_counts(
    session: Session,
    owner_id: str,
    *,
    dataset_id: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[tuple[Dataset, int]]:
    """The owner's datasets (newest first, or the one `dataset_id`) with their file counts.

    One query with a correlated count, not one count per dataset: a dataset GET is the API's
    most frequent request (clients poll it), and its cost is mostly SQL round trips.
    """
    files = select(func.count(File.id)).where(File.dataset_id == Dataset.id).scalar_subquery()
    stmt = select(Dataset, files).where(Dataset.owner_id == owner_id)
    if dataset_id is not None:
        stmt = stmt.where(Dataset.id == dataset_id)
    stmt = stmt.order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit).offset(offset)
    return [(ds, int(n or 0)) for ds, n in session.execute(stmt)]
