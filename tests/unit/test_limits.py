"""Budgets, quotas and the token bucket (both stores), driven by a fake clock: no sleeping."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.models import Job, Owner
from cadenza.db.session import session_factory
from cadenza.jobs import submit
from cadenza.launch.postgres import ensure_postgres, fresh_postgres_database
from cadenza.launch.redis import ensure_redis, fresh_redis_url
from cadenza.limits import (
    BudgetExceeded,
    QuotaExceeded,
    RateLimited,
    effective_limits,
    validate_overrides,
)
from cadenza.limits.bucket import RedisBucketStore, SqlBucketStore, refill_and_take
from cadenza.models.configs import GPTConfig, parameter_count, train_memory_bytes
from cadenza.models.registry import REGISTRY, model_class
from cadenza.tokenize.params import CorpusRequest, TokenizeParams
from cadenza.validation import InvalidParams


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


CONFIGS: list[tuple[str, dict[str, object]]] = [
    ("gpt", {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 32}),
    ("gpt", {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "bias": False}),
    ("music-transformer", {"n_layer": 2, "n_embd": 64, "n_head": 4, "block_size": 32}),
    (
        "music-transformer",
        {"n_layer": 1, "n_embd": 32, "n_head": 4, "block_size": 16, "rel_shared_heads": False},
    ),
    ("gru", {"embed_dim": 16, "hidden_size": 32, "num_layers": 2}),
    ("lstm", {"embed_dim": 16, "hidden_size": 32, "num_layers": 1}),
    ("lstm", {"embed_dim": 8, "hidden_size": 24, "num_layers": 3}),
]


@pytest.mark.parametrize(("architecture", "config"), CONFIGS)
def test_torch_free_parameter_count_equals_the_built_model(
    architecture: str, config: dict[str, object]
) -> None:
    cfg = REGISTRY[architecture].config.model_validate(config)
    model = model_class(architecture)(cfg, 123)  # type: ignore[call-arg]
    assert parameter_count(cfg, 123) == sum(p.numel() for p in model.parameters())
    assert {a for a, _ in CONFIGS} == set(REGISTRY)


def test_issue_model_is_51_billion_parameters_and_over_the_memory_of_any_device() -> None:
    cfg = GPTConfig(n_layer=64, n_embd=8192, n_head=64, block_size=1024)
    params = parameter_count(cfg, 300)
    assert 51_000_000_000 < params < 52_000_000_000
    assert train_memory_bytes(cfg, 300, 4096, 1024) > 16 * params


def test_bucket_arithmetic_refills_to_burst_and_says_when_to_retry() -> None:
    d = refill_and_take(0.0, 0.0, 0.5, rate=1.0, burst=3.0)
    assert not d.allowed and d.retry_after_s == pytest.approx(0.5)
    d = refill_and_take(0.0, 0.0, 100.0, rate=1.0, burst=3.0)
    assert d.allowed and d.tokens == pytest.approx(2.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def session(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Session]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'limits.db'}"
        upgrade(url)
        with session_factory(url)() as s:
            yield s
    else:
        ensure_postgres()
        with fresh_postgres_database() as url:
            upgrade(url)
            with session_factory(url)() as s:
                yield s


def _drive(take: object, clock: FakeClock) -> None:
    """The same scenario for every store: burst 3 at 1 token per 2 s."""

    def go() -> tuple[bool, float]:
        d = take("jobs:o", rate=0.5, burst=3.0)  # type: ignore[operator]
        return d.allowed, d.retry_after_s

    assert [go()[0] for _ in range(3)] == [True, True, True]
    allowed, retry = go()
    assert not allowed and retry == pytest.approx(2.0)
    clock.now += 1.0
    allowed, retry = go()
    assert not allowed and retry == pytest.approx(1.0)
    clock.now += 1.0
    assert go()[0] and not go()[0]
    clock.now += 3600.0  # refills to the burst, never above it
    assert [go()[0] for _ in range(4)] == [True, True, True, False]


def test_sql_bucket_store(session: Session) -> None:
    clock = FakeClock()
    store = SqlBucketStore(session, clock)
    _drive(store.take, clock)
    session.commit()
    assert store.take("jobs:other", rate=0.5, burst=1.0).allowed  # keys are independent


def test_redis_bucket_store() -> None:
    ensure_redis()
    with fresh_redis_url() as url:
        clock = FakeClock()
        _drive(RedisBucketStore(url, clock).take, clock)


def test_overrides_are_named_and_bounded() -> None:
    assert validate_overrides({"rate_jobs_burst": 5}) == {"rate_jobs_burst": 5}
    with pytest.raises(InvalidParams, match="unknown limits"):
        validate_overrides({"max_everything": 1})
    with pytest.raises(InvalidParams, match="rate_jobs_burst"):
        validate_overrides({"rate_jobs_burst": 0})
    assert effective_limits(Settings(), {"max_model_params": 7}).max_model_params == 7


def _tokenize(session: Session, owner: Owner, settings: Settings) -> Job:
    params = TokenizeParams.from_request(CorpusRequest(dataset_id="d", tokenizer="REMI"))
    return submit(session, settings, owner_id=owner.id, type="tokenize", params=params)


def test_submit_refuses_over_quota_and_rate_before_any_job_row(
    session: Session, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, broker_url="memory://")
    owner = Owner(name="q", limits={"max_active_jobs_per_queue": 2, "rate_jobs_burst": 3})
    session.add(owner)
    session.commit()
    _tokenize(session, owner, settings)
    _tokenize(session, owner, settings)
    with pytest.raises(QuotaExceeded, match="max_active_jobs_per_queue is 2"):
        _tokenize(session, owner, settings)
    session.rollback()
    owner.limits = {"max_active_jobs_per_queue": 100, "rate_jobs_burst": 3}
    session.commit()
    _tokenize(session, owner, settings)
    with pytest.raises(RateLimited) as refused:
        _tokenize(session, owner, settings)
    session.rollback()
    assert int(refused.value.retry_after) >= 1 and "rate_jobs_burst" in refused.value.message
    assert session.query(Job).count() == 3
    assert BudgetExceeded.__mro__[1] is InvalidParams


class _Vocab:
    """A plain MidiTok-like vocabulary: what `_BarCounter` reads of a tokenizer."""

    subword = None

    def __init__(self, names: list[str]) -> None:
        self.miditok = type("M", (), {"vocab": {n: i for i, n in enumerate(names)}})()


def test_max_bars_is_counted_from_bar_tokens_without_decoding() -> None:
    from cadenza.jobs.handlers.sample import _BarCounter

    bar, pos, pitch = 0, 1, 2
    counter = _BarCounter(_Vocab(["Bar_None", "Position_0", "Pitch_60"]), [bar, pos], 2)  # type: ignore[arg-type]
    assert counter.exact
    row = [pitch, bar, pos, pitch]  # the primer's bar 1, then bar 2 opens
    assert not counter.reached(0, row)
    row += [pitch, bar]  # bar 3 opens: bars 1-2 are complete
    assert counter.reached(0, row)
    assert not _BarCounter(_Vocab(["Pitch_60"]), [], 2).exact  # no bar tokens: decode instead


def test_a_resample_of_short_rows_is_watched_afresh() -> None:
    """The first generation's finished rows must not end a re-sample (it restarts at step 1)."""
    from cadenza.jobs.handlers.sample import _BarCounter, _LengthWatch

    bar, pos, pitch = 0, 1, 2
    counter = _BarCounter(_Vocab(["Bar_None", "Position_0", "Pitch_60"]), [], 1)  # type: ignore[arg-type]
    watch = _LengthWatch(counter, lambda new: False)
    first = [[bar, pos, pitch], [bar, pos, pitch]]
    assert not watch.all_done(3, first)  # bar 1 still open in both rows
    first = [r + [bar] for r in first]
    assert watch.all_done(4, first)  # bar 2 opened: both rows have their bar
    # One short row sampled again: a new generation from step 1, nothing counted yet.
    assert not watch.all_done(1, [[pitch]])
    assert not watch.all_done(2, [[pitch, bar]])
    assert watch.all_done(3, [[pitch, bar, bar]])
