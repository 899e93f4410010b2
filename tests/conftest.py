"""Shared fixtures: real music (exported from music21's bundled corpus) and real stacks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.launch.redis import ensure_redis, fresh_redis_url
from tests.support.seaweedfs import seaweedfs_s3
from tests.support.stack import Stack, print_logs, run_stack

CACHE = Path(os.environ.get("CADENZA_TEST_CACHE", Path(__file__).parent.parent / ".cache"))
# The soundfont copy symusic renders with (cadenza.render.soundfont) stays in the checkout's
# cache too, not in the user's home; worker processes started by the tests inherit it.
os.environ.setdefault("CADENZA_CACHE_DIR", str(CACHE))


@pytest.fixture(scope="session")
def chorales() -> list[Path]:
    """Eight Bach chorales as MIDI files, exported once and cached between runs."""
    from cadenza.datasets import export_bach_chorales

    return export_bach_chorales(CACHE / "bach-midi", 8)


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker on the embedded default: SQLite, local objects, filesystem broker."""
    with run_stack(tmp_path_factory.mktemp("embedded")) as stack:
        yield stack
        _dump_logs_on_failure(stack)


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """API + worker on PostgreSQL, Redis and a SeaweedFS S3 server, all real."""
    ensure_postgres()
    ensure_redis()
    work = tmp_path_factory.mktemp("production")
    with (
        fresh_postgres_database() as db_url,
        fresh_redis_url() as redis_url,
        seaweedfs_s3(work / "seaweedfs") as s3,
    ):
        env = {"CADENZA_DATABASE_URL": db_url, "CADENZA_BROKER_URL": redis_url}
        env |= s3.settings_env()
        with run_stack(work / "data", env) as stack:
            yield stack
            _dump_logs_on_failure(stack)


_failed: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        _failed.append(item.nodeid)


def _dump_logs_on_failure(stack: Stack) -> None:
    if _failed:
        print_logs(stack)


@pytest.fixture(params=["embedded", "production"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each end-to-end test runs on both deployments."""
    return request.getfixturevalue(f"{request.param}_stack")  # type: ignore[no-any-return]
