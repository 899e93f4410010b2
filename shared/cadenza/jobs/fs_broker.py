"""The embedded broker: kombu's filesystem transport, with messages that appear whole.

kombu's filesystem transport creates a message file under its final name and then writes it,
while a consumer takes any file with that name by renaming it away and reading it. A consumer
that comes between the two reads an empty or cut payload; kombu then fails to decode it and
the worker stops ("Unrecoverable error"), and the message, already removed, is lost (the job
waits for the reconciler's re-send). Here a message is written under a name no consumer
matches and renamed into place once complete (a rename is atomic within a folder), and a
payload that still cannot be decoded is logged and skipped instead of stopping the worker.

The exchange table (which queues an exchange routes to, written when a worker declares its
queues) had the same race: kombu creates the file empty, then locks and writes it, so a second
worker starting at the same moment could lock it first and read nothing; that worker stopped
with "Unrecoverable error" and its queue had no consumer (a job on it waited forever). Here
the table is changed under a separate lock file and replaced whole, and an empty table (left
by an older writer) reads as no bindings.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from time import monotonic_ns
from typing import Any

from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger("cadenza.jobs")

# Import path Celery's `broker_transport` takes for this transport.
TRANSPORT = "cadenza.jobs.fs_broker:Transport"


class Channel(filesystem.Channel):
    """The filesystem channel with atomic puts and undecodable messages skipped."""

    def _put(self, queue: Any, message: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        # The consumer takes names ending in ".<queue>.msg" in sorted order; the temporary
        # name ends in ".tmp", so no consumer matches it. The zero-padded nanoseconds of the
        # system-wide monotonic clock keep the sending order (kombu's milliseconds tie).
        name = f"{monotonic_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        tmp = final + ".tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(str_to_bytes(dumps(message)))
            os.replace(tmp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        while True:  # Empty, raised by the base class, ends the loop when no message is left
            try:
                return super()._get(queue)
            except ValueError as exc:  # a payload that is not JSON (json's decode error)
                log.error("skipped an undecodable message on queue %s: %s", queue, exc)

    def get_table(self, exchange: Any) -> list[Any]:
        return _read_table(self._exchange_file(exchange))

    def _queue_bind(self, exchange: Any, routing_key: Any, pattern: Any, queue: Any) -> None:
        file = self._exchange_file(exchange)
        self.control_folder.mkdir(exist_ok=True)
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with open(f"{file}.lock", "a+b") as guard:
                filesystem.lock(guard, filesystem.LOCK_EX)
                try:
                    table = _read_table(file)
                    if binding not in table:
                        table.insert(0, binding)
                        tmp = f"{file}.{uuid.uuid4()}.tmp"
                        with open(tmp, "wb") as fh:
                            fh.write(str_to_bytes(dumps(table)))
                        os.replace(tmp, file)
                finally:
                    filesystem.unlock(guard)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot open {file}") from exc


def _read_table(file: Any) -> list[Any]:
    """An exchange's bindings; none for a missing or empty table file."""
    try:
        with open(file, "rb") as fh:
            raw = bytes_to_str(fh.read())
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise filesystem.ChannelError(f"Cannot open {file}") from exc
    return [filesystem.exchange_queue_t(*q) for q in loads(raw)] if raw.strip() else []


class Transport(filesystem.Transport):
    Channel = Channel
