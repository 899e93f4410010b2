"""The embedded broker's transport: a consumer never sees a message before it is whole, and an
undecodable message is skipped instead of stopping the worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

import pytest
from kombu import Connection

from cadenza.jobs import fs_broker


@pytest.fixture
def channel(tmp_path: Path) -> Iterator[Any]:
    folder = tmp_path / "queue"
    folder.mkdir()
    options = {
        "data_folder_in": str(folder),
        "data_folder_out": str(folder),
        "processed_folder": str(tmp_path / "processed"),
        "store_processed": False,
        # kombu's default is "control" in the working directory: the exchange tables of a
        # test would land in the checkout
        "control_folder": str(tmp_path / "control"),
    }
    (tmp_path / "processed").mkdir()
    with Connection("filesystem://", transport=fs_broker.TRANSPORT, transport_options=options) as c:
        ch = c.channel()
        assert isinstance(ch, fs_broker.Channel)
        yield ch
        ch.close()


def test_a_message_is_invisible_until_written_whole(
    channel: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_while_writing: list[str] = []
    real_replace = os.replace

    def replace_after_a_look(src: str, dst: str) -> None:
        # The payload is on disk but not yet under its final name: a consumer finds nothing.
        assert Path(src).read_bytes()
        with contextlib.suppress(Empty):
            seen_while_writing.append(channel._get("cpu"))
        real_replace(src, dst)

    monkeypatch.setattr(fs_broker.os, "replace", replace_after_a_look)
    channel._put("cpu", {"body": "x" * 100_000})
    monkeypatch.setattr(fs_broker.os, "replace", real_replace)
    assert seen_while_writing == []
    assert channel._get("cpu") == {"body": "x" * 100_000}
    with pytest.raises(Empty):
        channel._get("cpu")


def test_an_undecodable_message_is_skipped(channel: Any, caplog: pytest.LogCaptureFixture) -> None:
    folder = Path(channel.data_folder_in)
    (folder / "0.cpu.msg").write_bytes(b"")  # what a torn write left behind
    channel._put("cpu", {"job": 1})
    assert channel._get("cpu") == {"job": 1}
    assert "undecodable message" in caplog.text
    assert not list(folder.iterdir())


def test_messages_keep_their_queue_and_order(channel: Any) -> None:
    for i in range(3):
        channel._put("cpu", {"i": i})
    channel._put("gpu", {"i": 9})
    assert [channel._get("cpu")["i"] for _ in range(3)] == [0, 1, 2]
    assert channel._get("gpu") == {"i": 9}


def test_workers_declaring_queues_at_once_all_get_their_bindings(channel: Any) -> None:
    """Two workers starting together both bind queues to the default exchange: the table is
    changed under a lock file and replaced whole, so neither reads a half-written one (an
    empty table, as a crashed writer leaves it, reads as no bindings)."""
    import threading

    table = channel._exchange_file("celery")
    channel.control_folder.mkdir(exist_ok=True)
    table.write_bytes(b"")  # what kombu's own writer shows between creating and writing
    assert channel.get_table("celery") == []
    queues = [f"q{i}" for i in range(24)]
    threads = [
        threading.Thread(target=channel._queue_bind, args=("celery", q, None, q)) for q in queues
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b.queue for b in channel.get_table("celery")) == sorted(queues)
    channel._queue_bind("celery", "q0", None, "q0")  # binding again changes nothing
    assert len(channel.get_table("celery")) == len(queues)
    assert not list(table.parent.glob("*.tmp"))
