"""What a job handler sees (`JobContext`) and hands back (`Outcome`), and nothing of Celery.

A handler reads its parameters with its type's params model, reports progress, checks for
cancellation, writes bytes under keys derived from its job id, and returns an `Outcome` whose
`finalize` adds the SQL rows that make its outputs visible. The runner calls `finalize` in the
same transaction that marks the job finished, so outputs appear together with the final state
or not at all.

Every write goes through the attempt's claim token (`cadenza.jobs.state.fence`): rows through
`ctx.fenced()`, progress and events through the helpers here, objects through `ctx.store`, which
checks the claim before each write. An attempt that lost its job (paused past its lease while a
second attempt took over) gets `JobLost` at its next write or `check_cancel()`, and
`cancelled()` turns true as soon as the lease keeper notices, so handlers that poll it stop
within one renewal interval.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.session import session_factory
from cadenza.jobs.heartbeat import DRAIN
from cadenza.jobs.state import JobLost, JobState, add_event, fence, holds, set_progress
from cadenza.jobs.transient import JobInterrupted
from cadenza.storage import ObjectStore

__all__ = ["FencedStore", "JobCancelled", "JobContext", "JobLost", "Outcome", "UserError"]


class JobCancelled(Exception):
    """Raised inside a handler when the user asked to cancel."""


class UserError(Exception):
    """A failure the user can fix (bad data, bad parameters); its message is shown as is."""


Finalize = Callable[[Session], dict[str, Any]]


@dataclass
class Outcome:
    """What a handler hands back: a function that writes its SQL rows, and the end state."""

    finalize: Finalize
    state: JobState = JobState.SUCCEEDED
    message: str = ""


class FencedStore(ObjectStore):
    """The object store as a job attempt sees it: every write first checks the claim.

    The check is a read of the job row just before the write, so an attempt that woke up
    after losing its job raises `JobLost` instead of overwriting the new attempt's objects.
    `unfenced` is for cleaning up this attempt's own objects after it lost the job.
    """

    def __init__(self, inner: ObjectStore, check: Callable[[], None]) -> None:
        super().__init__(inner._store, inner.url)
        self.unfenced = inner
        self._check = check

    def put(self, key: str, data: bytes | IO[bytes] | Path) -> None:
        self._check()
        super().put(key, data)

    def put_atomic(self, key: str, data: bytes) -> None:
        self._check()
        super().put_atomic(key, data)

    def delete(self, key: str) -> None:
        self._check()
        super().delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._check()
        return super().delete_prefix(prefix)


@dataclass
class JobContext:
    """Everything a handler needs, and nothing about Celery."""

    job_id: str
    owner_id: str
    type: str
    params: dict[str, Any]
    result: dict[str, Any]
    attempt: int
    settings: Settings
    store: ObjectStore
    # The queue the job row names (its type's, or `queue.HELD_QUEUE`): where a requeue re-sends it.
    queue: str = ""
    # The token of the claim this attempt runs under (rank 0's, for DDP followers).
    claim_token: str | None = None
    # A DDP rank > 0: takes part in the work, but rank 0 writes the outputs and commits.
    follower: bool = False
    _cancel: threading.Event = field(default_factory=threading.Event)
    _lost: threading.Event = field(default_factory=threading.Event)
    _last_progress: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.store, FencedStore):
            self.store = FencedStore(self.store, self.check_claim)

    @contextmanager
    def session(self) -> Iterator[Session]:
        s = session_factory(self.settings.resolved_database_url)()
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise
        finally:
            s.close()

    @contextmanager
    def fenced(self) -> Iterator[Session]:
        """A session whose commit happens only while this attempt still holds the job.

        The job row is touched first (conditional on this claim token and `running`), so the
        rows the caller adds commit together with the proof that the claim was still ours;
        otherwise nothing commits and `JobLost` is raised.
        """
        with self.session() as s:
            try:
                fence(s, self.job_id, self.claim_token)
            except JobLost:
                self._lost.set()
                raise
            yield s

    def check_claim(self) -> None:
        """Raise `JobLost` unless this attempt still holds the job (reads the row)."""
        if not self._lost.is_set():
            with self.session() as s:
                if holds(s, self.job_id, self.claim_token):
                    return
            self._lost.set()
        raise JobLost(self.job_id)

    def mark_lost(self) -> None:
        """Called by the lease keeper when a renewal finds the job taken from this attempt."""
        self._lost.set()

    def lost(self) -> bool:
        return self._lost.is_set()

    def _stop_if_lost(self) -> None:
        """Raise `JobLost` once the lease keeper or a fenced write has found the job taken."""
        if self._lost.is_set():
            raise JobLost(self.job_id)

    def progress(self, fraction: float, message: str, *, force: bool = False, **data: Any) -> None:
        """Report progress; throttled to a few writes a second unless forced."""
        self._stop_if_lost()
        now = time.monotonic()
        if not force and now - self._last_progress < 0.5 and fraction < 1.0:
            return
        self._last_progress = now
        with self.session() as s:
            try:
                set_progress(s, self.job_id, fraction, message, token=self.claim_token, **data)
            except JobLost:
                self._lost.set()
                raise

    def event(self, kind: str, data: dict[str, Any]) -> None:
        with self.fenced() as s:
            add_event(s, self.job_id, kind, data)

    def cancelled(self) -> bool:
        """True when the user asked to cancel or this attempt lost the job: stop either way."""
        return self._cancel.is_set() or self._lost.is_set()

    def draining(self) -> bool:
        """The worker is shutting down: stop soon, leaving the work resumable."""
        return DRAIN.is_set()

    def check_cancel(self) -> None:
        self._stop_if_lost()
        if self._cancel.is_set():
            raise JobCancelled()
        if DRAIN.is_set():  # requeued by the runner, without using up an attempt
            raise JobInterrupted("the worker shut down")
