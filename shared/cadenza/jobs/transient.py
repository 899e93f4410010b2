"""Which worker failures are the world's fault, and what a worker does about them.

A database restart, a broker failover or an object store that drops a connection says
nothing about the job: retrying a moment later succeeds. So the runner's own writes (claim,
progress, finish) are retried with backoff, and a handler that dies of such an error is
requeued as an *interruption* (`jobs.interruptions` + 1, its attempt given back), bounded by
`job_max_interruptions`, instead of being failed. A SIGTERM drain ends the same way.

Error text a user sees never carries SQL, a traceback or a server path: `public_error` makes
the one line that goes into a job's `error`; the full exception goes to the worker log.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from cadenza.jobs.state import JobState

log = logging.getLogger("cadenza.transient")

T = TypeVar("T")


class JobInterrupted(Exception):
    """The job must stop now for a reason that is not its fault (the worker drains)."""


def _transient_types() -> tuple[type[BaseException], ...]:
    """Connection-level error types of the database, the broker and the object store."""
    types: list[type[BaseException]] = [
        sa_exc.OperationalError,
        sa_exc.DisconnectionError,
        sa_exc.InterfaceError,
        sa_exc.TimeoutError,  # connection pool exhausted while the database is slow
        ConnectionError,
        TimeoutError,
    ]
    try:
        from kombu.exceptions import OperationalError as KombuOperationalError

        types.append(KombuOperationalError)
    except ImportError:  # pragma: no cover - kombu ships with every worker
        pass
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        types += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import ConnectTimeoutError, ReadTimeoutError

        types += [BotoConnectionError, ConnectTimeoutError, ReadTimeoutError]
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


_TRANSIENT: tuple[type[BaseException], ...] | None = None
_LOCKED = re.compile(r"database is locked|database table is locked", re.I)


def is_transient(exc: BaseException) -> bool:
    """True for an outage of the database, broker or store, anywhere in the cause chain."""
    global _TRANSIENT
    if _TRANSIENT is None:
        _TRANSIENT = _transient_types()
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, _TRANSIENT) or _LOCKED.search(str(cur)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def retry_transient(
    fn: Callable[[], T],
    *,
    what: str,
    budget_s: float,
    first_delay_s: float = 0.25,
    max_delay_s: float = 5.0,
) -> T:
    """Call `fn` until it returns, retrying transient errors with backoff for `budget_s`.

    Anything else, and a transient error past the budget, is raised to the caller.
    """
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    while True:
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: %s; retrying in %.1f s", what, type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay_s)


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[\w.@+-]+){2,}/?")


def public_error(exc: BaseException) -> str:
    """One line about `exc` that is safe to show the job's owner.

    Transient errors become a fixed sentence (their text holds SQL, parameters, host names);
    other errors keep their type and first line with file-system paths removed.
    """
    if is_transient(exc):
        return "a backing service (database, broker or object store) was unavailable"
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return f"internal database error ({type(exc).__name__}); see the worker log"
    first = (str(exc).strip().splitlines() or [""])[0]
    first = _PATH.sub("<path>", first)[:300]
    name = type(exc).__name__
    return f"{name}: {first}" if first else name


def requeue_interrupted(
    session: Session, job_id: str, token: str | None, *, reason: str, max_interruptions: int
) -> JobState | None:
    """Put a running job back in the queue without counting the attempt it was on.

    Past `max_interruptions` the job fails instead, with a message that says why; a job its
    owner asked to cancel ends cancelled. Returns the
    new state, or None when the job was no longer running (its lease expired and another
    worker took it, or it was cancelled). The caller commits, then re-sends the job id.
    """
    from cadenza.db.models import Job
    from cadenza.jobs.state import JobState, release

    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.state != JobState.RUNNING.value or job.claim_token != token:
        return None  # not ours any more: a stale attempt must not requeue another's job
    done = (job.interruptions or 0) + 1
    counters: dict[str, Any] = {"interruptions": Job.interruptions + 1}
    if job.cancel_requested:  # a queued job asked to cancel would never be claimed again
        target, msg = JobState.CANCELLED, f"cancelled; {reason}"
    elif done > max_interruptions:
        target, msg = JobState.FAILED, f"interrupted {done} times ({reason}); giving up"
    else:
        target, msg = JobState.QUEUED, f"{reason}; requeued (interruption {done})"
        counters["attempts"] = Job.attempts - 1
    if not release(session, job_id, target, msg, where=(Job.claim_token == token,), **counters):
        session.rollback()
        return None
    return target
