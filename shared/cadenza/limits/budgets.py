"""Budgets, quotas and rates per owner: what one request may ask for and what an owner may hold.

Every limit is a `Settings` field with a default, overridable per owner in `owners.limits`
under the same name. The checks run in `cadenza.jobs.submit` (jobs) and at the start of an
upload, before anything is queued or stored, and each refusal names the limit, its value and
the value asked for:

- a request that can never fit (a model too big) → `BudgetExceeded`, HTTP 422;
- a quota the owner is at now (stored bytes, active jobs) → `QuotaExceeded`, HTTP 409;
- too many requests in a short time → `RateLimited`, HTTP 429 with Retry-After.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Checkpoint, File, Job, Model, Owner
from cadenza.validation import Conflict, InvalidParams


class Limits(BaseModel):
    """An owner's effective limits (settings, then the owner's overrides)."""

    model_config = ConfigDict(extra="forbid")

    max_model_params: int = Field(ge=1)
    max_train_memory_bytes: int = Field(ge=1)
    max_train_tokens: int = Field(ge=1)
    train_time_budget_default_s: float = Field(gt=0)
    train_time_budget_max_s: float = Field(gt=0)
    max_stored_bytes: int = Field(ge=0)
    max_active_jobs_per_queue: int = Field(ge=1)
    rate_jobs_burst: float = Field(ge=1)
    rate_jobs_per_minute: float = Field(gt=0)
    rate_uploads_burst: float = Field(ge=1)
    rate_uploads_per_minute: float = Field(gt=0)


LIMIT_NAMES = tuple(Limits.model_fields)


class BudgetExceeded(InvalidParams):
    """One request asks for more than any single request may (422)."""


class QuotaExceeded(Conflict):
    """The owner is at a quota now; deleting or waiting frees it (409)."""


class RateLimited(Exception):
    """Too many requests of one kind in a short time (429 + Retry-After)."""

    def __init__(self, message: str, *, retry_after: str, code: str = "rate_limited") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.retry_after = retry_after


def validate_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` checked by name and bound; InvalidParams naming the field otherwise."""
    unknown = sorted(set(overrides) - set(LIMIT_NAMES))
    if unknown:
        raise InvalidParams(
            f"unknown limits {unknown}; known: {', '.join(LIMIT_NAMES)}", code="unknown_limit"
        )
    try:
        Limits.model_validate({**_defaults_for_check(), **overrides})
    except ValidationError as exc:
        raise InvalidParams.from_validation("limits", exc) from exc
    return dict(overrides)


def _defaults_for_check() -> dict[str, Any]:
    return {
        name: field.default for name, field in Settings.model_fields.items() if name in LIMIT_NAMES
    }


def owner_overrides(session: Session, owner_id: str) -> dict[str, Any]:
    """The owner's `limits` as stored now: a column query, never the (possibly cached) owner
    object of the request's key, so an admin's change applies to the very next request."""
    found = session.scalar(select(Owner.limits).where(Owner.id == owner_id))
    return dict(found or {})


def effective_limits(settings: Settings, overrides: dict[str, Any] | None) -> Limits:
    """Settings overlaid with an owner's overrides (unknown keys there are ignored)."""
    values = {name: getattr(settings, name) for name in LIMIT_NAMES}
    for name, value in (overrides or {}).items():
        if name in values:
            values[name] = value
    return Limits.model_validate(values)


def _refuse(limit: str, value: float, asked: float, what: str) -> BudgetExceeded:
    return BudgetExceeded(
        f"{what} asks for {asked:,.0f} but the limit {limit} is {value:,.0f}; "
        "ask for less or ask an admin to raise it",
        code="budget_exceeded",
    )


def check_training(session: Session, limits: Limits, model: Model) -> None:
    """Refuse a training request over a budget; fill in the default time budget.

    The model row is the request (the route stored its resolved configs there), so the
    default `time_budget_s` is written onto it and the training loop honours it.
    """
    from cadenza.models.configs import parameter_count, train_memory_bytes
    from cadenza.models.registry import resolve_config

    cfg = resolve_config(model.architecture, None, model.config)
    train = dict(model.train_config)
    params = parameter_count(cfg, model.vocab_size)
    if params > limits.max_model_params:
        raise _refuse(
            "max_model_params", limits.max_model_params, params, "this model's parameter count"
        )
    batch, seq, steps = int(train["batch_size"]), int(train["seq_len"]), int(train["max_steps"])
    memory = train_memory_bytes(cfg, model.vocab_size, batch, seq)
    if memory > limits.max_train_memory_bytes:
        raise _refuse(
            "max_train_memory_bytes",
            limits.max_train_memory_bytes,
            memory,
            f"training at batch_size {batch} × seq_len {seq} (memory estimate, bytes)",
        )
    tokens = batch * seq * steps
    if tokens > limits.max_train_tokens:
        raise _refuse(
            "max_train_tokens", limits.max_train_tokens, tokens, "batch_size × seq_len × max_steps"
        )
    budget = train.get("time_budget_s")
    if budget is None:
        train["time_budget_s"] = limits.train_time_budget_default_s
        model.train_config = train
    elif float(budget) > limits.train_time_budget_max_s:
        raise _refuse(
            "train_time_budget_max_s",
            limits.train_time_budget_max_s,
            float(budget),
            "train.time_budget_s",
        )


def stored_bytes(session: Session, owner_id: str) -> int:
    """Bytes the owner holds: uploaded files plus checkpoints (samples are small MIDI files)."""
    files = session.scalar(
        select(func.coalesce(func.sum(File.size), 0)).where(File.owner_id == owner_id)
    )
    ckpts = session.scalar(
        select(func.coalesce(func.sum(Checkpoint.size), 0))
        .join(Model, Model.id == Checkpoint.model_id)
        .where(Model.owner_id == owner_id)
    )
    return int(files or 0) + int(ckpts or 0)


def check_storage(session: Session, limits: Limits, owner_id: str, adding: int = 0) -> None:
    """Refuse when the owner's stored bytes (plus `adding`) pass `max_stored_bytes`."""
    used = stored_bytes(session, owner_id)
    if used + adding > limits.max_stored_bytes:
        raise QuotaExceeded(
            f"storage quota: you store {used:,} bytes and this needs {used + adding:,}, but the "
            f"limit max_stored_bytes is {limits.max_stored_bytes:,}; delete datasets or models "
            "first",
            code="quota_exceeded",
        )


def active_jobs(session: Session, owner_id: str, queue: str) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(
                Job.owner_id == owner_id, Job.queue == queue, Job.state.in_(["queued", "running"])
            )
        )
        or 0
    )


def check_active(session: Session, limits: Limits, owner_id: str, queue: str) -> None:
    """Refuse a job when the owner already has `max_active_jobs_per_queue` on its queue."""
    count = active_jobs(session, owner_id, queue)
    if count + 1 > limits.max_active_jobs_per_queue:
        raise QuotaExceeded(
            f"too many active jobs: you have {count} queued or running on the {queue!r} queue "
            f"and this would be {count + 1}, but the limit max_active_jobs_per_queue is "
            f"{limits.max_active_jobs_per_queue}; wait for one to finish or cancel one",
            code="too_many_active_jobs",
        )
