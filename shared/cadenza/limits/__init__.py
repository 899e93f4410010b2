"""Per-owner budgets, quotas and rate limits, checked before anything is queued or stored.

`check_job` is what `cadenza.jobs.submit` runs for every job; `check_upload` is what an
upload runs before it reads the body. Both raise the errors of `budgets` (422, 409, 429).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Model
from cadenza.limits.bucket import Decision, bucket_store, retry_after_header
from cadenza.limits.budgets import (
    LIMIT_NAMES,
    BudgetExceeded,
    Limits,
    QuotaExceeded,
    RateLimited,
    active_jobs,
    check_active,
    check_storage,
    check_training,
    effective_limits,
    owner_overrides,
    stored_bytes,
    validate_overrides,
)

# Jobs the server starts on a reader's behalf (a rendering of a stored MIDI) are not the
# owner's requests and are de-duplicated by content already; they spend no rate or quota.
UNMETERED_TYPES = frozenset({"render"})


def _take(
    session: Session, settings: Settings, kind: str, owner_id: str, limits: Limits, what: str
) -> None:
    """One token from the owner's `kind` bucket ("jobs" or "uploads"), else RateLimited."""
    burst: float = getattr(limits, f"rate_{kind}_burst")
    per_minute: float = getattr(limits, f"rate_{kind}_per_minute")
    store = bucket_store(session, settings.resolved_broker_url)
    decision: Decision = store.take(f"{kind}:{owner_id}", rate=per_minute / 60.0, burst=burst)
    if not decision.allowed:
        retry = retry_after_header(decision)
        raise RateLimited(
            f"rate limit: {what} are limited to rate_{kind}_burst={burst:g} at once and "
            f"rate_{kind}_per_minute={per_minute:g} after; this one needs 1 and "
            f"{decision.tokens:.2f} is left; retry in {retry} s",
            retry_after=retry,
        )


def check_job(
    session: Session,
    settings: Settings,
    *,
    owner_id: str,
    type: str,
    queue: str,
    model_id: str | None,
) -> None:
    """Every budget, quota and rate a new job of `type` must pass; raises the first it fails."""
    if type in UNMETERED_TYPES:
        return
    limits = effective_limits(settings, owner_overrides(session, owner_id))
    if model_id is not None:
        model = session.get(Model, model_id)
        if model is not None:
            check_training(session, limits, model)
    check_active(session, limits, owner_id, queue)
    _take(session, settings, "jobs", owner_id, limits, "job submissions")


def check_upload(session: Session, settings: Settings, owner_id: str, adding: int = 0) -> None:
    """The upload rate and the storage quota (with `adding` bytes announced, if known).

    The owner's limits are read in this session, never from a cached owner: an admin's new
    override applies to the next request.
    """
    limits = effective_limits(settings, owner_overrides(session, owner_id))
    check_storage(session, limits, owner_id, adding)
    _take(session, settings, "uploads", owner_id, limits, "uploads")


__all__ = [
    "LIMIT_NAMES",
    "UNMETERED_TYPES",
    "BudgetExceeded",
    "Limits",
    "QuotaExceeded",
    "RateLimited",
    "active_jobs",
    "check_job",
    "check_storage",
    "check_upload",
    "effective_limits",
    "owner_overrides",
    "stored_bytes",
    "validate_overrides",
]
