"""What a job handler sees (`JobContext`) and hands back (`Outcome`), and nothing of Celery.

A handler reads its parameters with its type's params model, reports progress, checks for
cancellation, writes bytes under keys derived from its job id, and returns an `Outcome` whose
`finalize` adds the SQL rows that make its outputs visible. The runner calls `finalize` in the
same transaction that marks the job finished, so outputs appear together with the final state
or not at all.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.session import session_factory
from cadenza.jobs.heartbeat import DRAIN
from cadenza.jobs.state import JobState, add_event, set_progress
from cadenza.jobs.transient import JobInterrupted
from cadenza.storage import ObjectStore


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
    _cancel: threading.Event = field(default_factory=threading.Event)
    _last_progress: float = 0.0

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

    def progress(self, fraction: float, message: str, *, force: bool = False, **data: Any) -> None:
        """Report progress; throttled to a few writes a second unless forced."""
        now = time.monotonic()
        if not force and now - self._last_progress < 0.5 and fraction < 1.0:
            return
        self._last_progress = now
        with self.session() as s:
            set_progress(s, self.job_id, fraction, message, **data)

    def event(self, kind: str, data: dict[str, Any]) -> None:
        with self.session() as s:
            add_event(s, self.job_id, kind, data)

    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def draining(self) -> bool:
        """The worker is shutting down: stop soon, leaving the work resumable."""
        return DRAIN.is_set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()
        if DRAIN.is_set():  # requeued by the runner, without using up an attempt
            raise JobInterrupted("the worker shut down")
