"""Per-owner budgets, quotas and rate limits, checked before anything is queued or stored.

`check_job` is what `cadenza.jobs.submit` runs for every job; `check_upload` is what an
upload runs before it reads the body. Both raise the errors of `budgets` (422, 409, 429).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Model, Owner
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
    stored_bytes,
    validate_overrides,
)

# Jobs the server starts on a reader's behalf (a rendering of a stored MIDI) are not the
# owner's requests and are de-duplicated by content already; they spend no rate or quota.
UNMETERED_TYPES = frozenset({"render"})


def _take(
    session: Session, settings: Settings, key: str, *, per_minute: float, burst: float, what: str
) -> None:
    store = bucket_store(session, settings.resolved_broker_url)
    decision: Decision = store.take(key, rate=per_minute / 60.0, burst=burst)
    if not decision.allowed:
        retry = retry_after_header(decision)
        raise RateLimited(
            f"rate limit: {what} are limited to a burst of {burst:g} and {per_minute:g} per "
            f"minute (limits rate_{key.split(':')[0]}_burst / _per_minute); this one would be "
            f"over it, retry in {retry} s",
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
    owner = session.get(Owner, owner_id)
    limits = effective_limits(settings, owner)
    if model_id is not None:
        model = session.get(Model, model_id)
        if model is not None:
            check_training(session, limits, model)
    check_active(session, limits, owner_id, queue)
    _take(
        session,
        settings,
        f"jobs:{owner_id}",
        per_minute=limits.rate_jobs_per_minute,
        burst=limits.rate_jobs_burst,
        what="job submissions",
    )


def check_upload(session: Session, settings: Settings, owner: Owner, adding: int = 0) -> None:
    """The upload rate and the storage quota (with `adding` bytes announced, if known)."""
    limits = effective_limits(settings, owner)
    check_storage(session, limits, owner.id, adding)
    _take(
        session,
        settings,
        f"uploads:{owner.id}",
        per_minute=limits.rate_uploads_per_minute,
        burst=limits.rate_uploads_burst,
        what="uploads",
    )


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
    "stored_bytes",
    "validate_overrides",
]
