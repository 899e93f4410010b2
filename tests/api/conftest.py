"""Every test here runs with the event-loop guard: SQL issued on a thread that runs an event
loop fails the request (and so the test), which catches a blocking database call in an
`async def` route or dependency that a test exercises (see test_async_correct.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event


class BlockingCallOnEventLoop(RuntimeError):
    """SQL on the event loop's thread: it stalls every request of the process."""


def _refuse_on_event_loop(*_: Any) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker thread (or no loop at all): fine
    raise BlockingCallOnEventLoop("SQL executed on the event loop thread; use a worker thread")


@pytest.fixture(autouse=True)
def no_sql_on_the_event_loop() -> Iterator[None]:
    event.listen(Engine, "before_cursor_execute", _refuse_on_event_loop)
    try:
        yield
    finally:
        event.remove(Engine, "before_cursor_execute", _refuse_on_event_loop)
