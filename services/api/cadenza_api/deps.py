"""Request dependencies: settings, DB session, object store, and the caller (key, owner and
scopes, checked here for every route).

The API's concurrency model (why it looks like this): routes are sync and run on AnyIO's
worker threads, while the database allows a bounded number of connections. With the session
opened and closed in a sync `yield` dependency, a request that held a pooled connection needed
a *thread* to run its dependency's exit and give the connection back, while every thread was
busy waiting for a connection: at 64 concurrent `GET /v1/datasets/{id}` the API fell from
367 to 7.8 requests/s and then answered nothing at all, even after the load stopped (py-spy:
40 of 40 worker threads in `QueuePool._do_get`, 30 s checkout timeout each, forever refilled).

Now a request takes a *slot* before its session exists (an async wait in the event loop, which
holds no thread), and gives it back after the session is closed. The route's own worker
thread closes it as the route returns (`SessionRoute`), so closing needs no other thread; a
session that still holds a connection after that (the route never ran) is closed on a thread
lane of its own (closing never needs a connection, so it always finishes). With slots == pool
size, a thread that runs DB code always finds a free connection: sessions never wait on each
other, and threads never wait on the pool. Saturation shows as a queue of requests waiting for
a slot, each for at most `db_pool_timeout` seconds before a 503 with Retry-After.

Async-correct: no `async def` here or in a route touches a session, the store or the
database; they only wait (for a slot, a thread) and hand sync work to worker threads
(tests/api/test_async_correct.py enforces it).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.exceptions import ResponseValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Owner
from cadenza.db.repo import (
    KEY_PREFIX,
    Caller,
    KeyCache,
    KeyRefused,
    caller_for_key,
    ensure_unexpired,
    hash_key,
    touch_key,
)
from cadenza.db.session import brief_lock_wait, session_factory
from cadenza.storage import ObjectStore
from cadenza_api.errors import ApiError, busy

log = logging.getLogger("cadenza.api")

T = TypeVar("T")

# Connections beyond the slots: room for a session that is still closing after its slot's
# successor has started, so that a late close never makes a slot holder wait.
POOL_HEADROOM = 4
# Threads that only close sessions (a rollback and a return to the pool: microseconds on
# SQLite, one round trip on PostgreSQL).
CLOSE_THREADS = 4
# A process's fewest slots, however many processes share `db_pool_size`.
MIN_SLOTS = 2
# A process's slots when `db_pool_size` is unset. Why so few: a process runs Python on one
# core at a time, and every thread that holds a session gives up the GIL at each database
# round trip and then queues to take it back behind the others, so more slot holders mean
# longer waits, not more work done. Measured with bench/api_load.py (64 pollers + submits,
# PostgreSQL, 2 processes on 2 cores, one session): 10 slots per process (the old default of
# 20 for the server) p99 103-986 ms with up to 17 requests over 2 s in 20 s; 4 per process
# 158 ms; 3 per process 76 ms; 2 per process 67 ms, no timeouts (BENCHMARKS.md). 3 leaves room
# for a slow request (a large listing, an upload's store) without stalling the process. With
# the database across a network (more waiting per round trip), raise CADENZA_DB_POOL_SIZE.
DEFAULT_SLOTS = 3


class Database:
    """The API process's only way to a session: its share of the `db_pool_size` slots (the
    API's processes together hold at most about that many), one connection each."""

    def __init__(self, settings: Settings) -> None:
        total = settings.db_pool_size
        per_process = DEFAULT_SLOTS if total is None else -(-total // settings.api_processes)
        self.slots = max(MIN_SLOTS, per_process)
        self.wait_s = settings.db_pool_timeout
        self.factory = session_factory(
            settings.resolved_database_url,
            pool_size=self.slots,
            max_overflow=POOL_HEADROOM,
            pool_timeout=self.wait_s,
        )
        self._gate = anyio.Semaphore(self.slots)
        self._closers = anyio.CapacityLimiter(CLOSE_THREADS)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """A session for one request (or one SSE poll); 503 when no slot frees in time."""
        acquired = False
        with anyio.move_on_after(self.wait_s):
            await self._gate.acquire()
            acquired = True
        if not acquired:
            raise busy("every database slot is taken")
        try:
            session = self.factory()  # no connection yet: that comes with its first query
            try:
                yield session
            finally:
                # Normally closed already, by the route's thread (`SessionRoute`); one that
                # still holds a connection (the route never ran) is closed here, shielded by
                # AnyIO (a cancelled request still returns its connection).
                if session.in_transaction():
                    await anyio.to_thread.run_sync(session.close, limiter=self._closers)
        finally:
            self._gate.release()

    async def run(self, fn: Callable[[Session], T]) -> T:
        """`fn(session)` on a worker thread with a short-lived session (no idle holding)."""
        async with self.session() as session:
            return await anyio.to_thread.run_sync(fn, session)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_session(request: Request) -> AsyncIterator[Session]:
    """The request's session; async so that opening and closing it costs no worker thread.

    Function scope: the session is closed once the route (and its response model) is done,
    before the response is sent, so a streaming response (SSE, downloads) holds no connection.
    """
    db: Database = request.app.state.db
    async with db.session() as session:
        yield session


def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


class SessionRoute(APIRoute):
    """A route whose sync endpoint runs, renders its answer and closes the request's session
    all on one worker thread.

    Why: FastAPI runs a sync endpoint on a worker thread, then validates its return value
    against the response model on *another* worker thread, then closes the session in the
    event loop (a `yield` dependency's exit) which needs a third (a rollback and a return to
    the pool: a round trip on PostgreSQL). Each hop costs the event loop a queue put, a wake-up
    and a GIL hand-over; under load the hops, not the route, were most of a GET's time. Here
    the endpoint's thread validates and serializes the answer into JSON bytes (the same
    response model, the same bytes FastAPI would send) and closes the session while it still
    holds the loaded rows, and FastAPI passes the finished `Response` through.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        self._answer: TypeAdapter[Any] | None = None
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _on_one_thread(self, endpoint)
        super().__init__(path, endpoint, **kwargs)
        plain = (
            isinstance(self.response_class, DefaultPlaceholder)
            and self.response_model_by_alias
            and self.response_model_include is None
            and self.response_model_exclude is None
            and not self.response_model_exclude_unset
            and not self.response_model_exclude_defaults
            and not self.response_model_exclude_none
        )
        if self.response_model is not None and plain:
            self._answer = TypeAdapter(self.response_model)

    def answer(self, result: Any) -> Any:
        """`result` as the JSON response FastAPI would make of it (a Response passes as is)."""
        if self._answer is None or isinstance(result, Response):
            return result
        try:
            value = self._answer.validate_python(result, from_attributes=True)
        except ValidationError as exc:  # the server's bug: a 500, as FastAPI answers it
            raise ResponseValidationError(exc.errors(), body=result) from None
        body = self._answer.dump_json(value, by_alias=True)
        return Response(body, status_code=self.status_code or 200, media_type="application/json")


def _on_one_thread(route: SessionRoute, endpoint: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(endpoint)  # FastAPI reads the signature through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return route.answer(endpoint(*args, **kwargs))
        finally:
            for value in kwargs.values():
                if isinstance(value, Session):
                    value.close()

    return run


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
StoreDep = Annotated[ObjectStore, Depends(get_store)]


# Declares the Bearer scheme in the OpenAPI document (so `/docs` can authorize and generated
# clients send the key) and parses the header; it never answers itself (auto_error=False),
# so a missing or wrong key gets the 401s below, with their hints.
bearer = HTTPBearer(
    scheme_name="ApiKey",
    description="An API key, made with `cadenza keys create --owner NAME`.",
    auto_error=False,
)
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


# Routes that need a scope beyond what their method implies, by (method, route path).
# Training spends the most compute of anything a key can start, so it has a scope of its own.
SCOPED_ROUTES: dict[tuple[str, str], str] = {("POST", "/v1/models"): "train"}
ADMIN_PREFIX = "/v1/admin/"


def required_scope(method: str, route_path: str) -> str:
    """The scope a request needs: `admin` under /v1/admin, a route's own (SCOPED_ROUTES),
    else `read` to look (GET, HEAD) and `write` to change anything."""
    if route_path.startswith(ADMIN_PREFIX):
        return "admin"
    if (own := SCOPED_ROUTES.get((method, route_path))) is not None:
        return own
    return "read" if method in ("GET", "HEAD") else "write"


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


async def authenticate(request: Request, token: str, session: Session) -> Caller:
    """The caller of `token`; 401 naming why not (invalid, revoked, expired).

    Async: a key verified in the last few seconds is answered from the key cache without SQL
    and without the session (no worker thread, which saves a thread hop per request); its
    owner is the cache's detached copy, which routes only read (owners have no
    relationships to lazy-load). Only a miss runs the query on a worker thread, and so does
    the once-a-minute write of the key's `last_used_at`.
    """
    cache: KeyCache = request.app.state.key_cache
    try:
        caller = cache.get(hash_key(token)) if token.startswith(KEY_PREFIX) else None
        if caller is None:
            caller = await anyio.to_thread.run_sync(
                functools.partial(caller_for_key, session=session, key=token, cache=cache)
            )
        else:  # a cached key may have expired since it was verified
            caller = ensure_unexpired(caller)
    except KeyRefused as refused:
        raise _unauthorized(refused.message) from None
    if cache.due_for_touch(caller):
        await anyio.to_thread.run_sync(functools.partial(_touch, session, caller.key_id))
    return caller


# A key's `last_used_at` write waits at most this long for a lock; past it, the write is
# skipped (it is retried a minute later) rather than holding up the request.
TOUCH_LOCK_WAIT_MS = 200


def _touch(session: Session, key_id: str) -> None:
    # Its own commit, before the route runs: a GET never commits, and a route's rollback
    # must not undo it. Best effort: a stalled writer elsewhere (on SQLite, any process
    # stopped inside a write) must not turn a read into a 30 s wait and a 503.
    try:
        with brief_lock_wait(session, TOUCH_LOCK_WAIT_MS):
            touch_key(session=session, key_id=key_id)
            session.commit()
    except OperationalError as exc:
        session.rollback()
        log.info("skipped last_used_at of key %s: %s", key_id, exc.orig)


async def current_caller(request: Request, credentials: BearerDep, session: SessionDep) -> Caller:
    """The key behind the request, checked for the scope the route needs (`required_scope`).

    The only place scopes are enforced: every route that needs a caller depends on this, so a
    route added later is covered by its method and path without saying anything.
    """
    # None unless the header is `Bearer <token>` (scheme in any case, token stripped, non-empty).
    if credentials is None:
        raise _unauthorized(
            "missing API key: send 'Authorization: Bearer <key>' "
            "(make one with `cadenza keys create --owner NAME`)"
        )
    caller = await authenticate(request, credentials.credentials, session)
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    needed = required_scope(request.method, path)
    if not caller.allows(needed):
        raise ApiError(
            403,
            "forbidden",
            f"this API key lacks the '{needed}' scope that {request.method} {path} needs; "
            f"it has: {', '.join(caller.scopes) or 'none'}; use a key with that scope",
        )
    return caller


CurrentCaller = Annotated[Caller, Depends(current_caller, scope="function")]


async def current_owner(caller: CurrentCaller) -> Owner:
    """The owner of the request's key (scopes checked by `current_caller`)."""
    return caller.owner


CurrentOwner = Annotated[Owner, Depends(current_owner, scope="function")]


# Paging of list routes, validated (422 naming the parameter): a negative limit would mean "no
# limit" to SQLite and an offset past 64 bits would overflow the driver.
Limit = Annotated[int, Query(ge=1, le=1000, description="rows per page (1..1000)")]
FileLimit = Annotated[int, Query(ge=1, le=10_000, description="rows per page (1..10000)")]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000, description="rows to skip")]


async def upload_allowed(
    request: Request, session: SessionDep, settings: SettingsDep, owner: CurrentOwner
) -> None:
    """The owner's upload rate and storage quota, before the body is read (429 / 409).

    The announced Content-Length counts toward the quota, so an upload that would pass it is
    refused without storing a byte. The bucket write commits here, on its own, before the
    route runs (like a key's `last_used_at`): a failed upload still spent its token.
    """
    from cadenza.limits import check_upload

    announced = request.headers.get("content-length", "")
    adding = int(announced) if announced.isdigit() else 0

    def _check(s: Session) -> None:
        check_upload(s, settings, owner.id, adding)
        s.commit()

    await anyio.to_thread.run_sync(_check, session)


UploadAllowed = Depends(upload_allowed, scope="function")


def v1_router(prefix: str, tag: str) -> APIRouter:
    """A resource's router under `/v1`: its routes run as `SessionRoute`s (one thread per
    request, which also closes the session) and document the errors every v1 route can answer.
    Every resource router is made here, so none can miss either."""
    from cadenza_api.openapi import V1_ERRORS

    return APIRouter(route_class=SessionRoute, prefix=prefix, tags=[tag], responses=V1_ERRORS)
