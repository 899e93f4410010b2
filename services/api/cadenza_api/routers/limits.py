"""`/v1/limits` (your effective limits and usage) and `/v1/admin/owners/{name}/limits` (an
owner's overrides of the budget, quota and rate settings; `admin` scope, by the path)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from cadenza.db.repo import find_owner
from cadenza.limits import (
    Limits,
    active_jobs,
    effective_limits,
    owner_overrides,
    stored_bytes,
    validate_overrides,
)
from cadenza_api.deps import (
    CurrentCaller,
    CurrentOwner,
    SessionDep,
    SettingsDep,
    v1_router,
)
from cadenza_api.errors import ApiError
from cadenza_api.openapi import describe
from cadenza_api.schemas import OwnerLimits

self_router = v1_router("/v1/limits", "limits")
admin_router = v1_router("/v1/admin/owners", "admin")
routers = (self_router, admin_router)


class Usage(BaseModel):
    stored_bytes: int
    active_jobs: dict[str, int] = Field(description="queued + running jobs per queue")


class LimitsOut(BaseModel):
    limits: Limits
    overrides: dict[str, Any] = Field(description="this owner's own values (the rest: defaults)")
    usage: Usage


def _out(session: SessionDep, settings: SettingsDep, owner: Any) -> LimitsOut:
    usage = Usage(
        stored_bytes=stored_bytes(session, owner.id),
        active_jobs={q: active_jobs(session, owner.id, q) for q in ("cpu", "gpu")},
    )
    overrides = owner_overrides(session, owner.id)
    return LimitsOut(limits=effective_limits(settings, overrides), overrides=overrides, usage=usage)


@self_router.get("", response_model=LimitsOut, **describe("limits_get", "Your limits and usage"))
def get_limits(session: SessionDep, settings: SettingsDep, owner: CurrentOwner) -> LimitsOut:
    """The budgets, quotas and rates that apply to you (server defaults overlaid with your
    owner's overrides) and what you use now."""
    return _out(session, settings, owner)


def _owner(session: SessionDep, name: str) -> Any:
    owner = find_owner(session=session, name=name)
    if owner is None:
        raise ApiError(404, "not_found", f"owner {name!r} not found")
    return owner


@admin_router.get(
    "/{name}/limits",
    response_model=LimitsOut,
    **describe("admin_get_owner_limits", "An owner's limits", 404),
)
def admin_get_limits(
    name: str, session: SessionDep, settings: SettingsDep, caller: CurrentCaller
) -> LimitsOut:
    """The effective limits, overrides and usage of owner `name`."""
    return _out(session, settings, _owner(session, name))


@admin_router.put(
    "/{name}/limits",
    response_model=LimitsOut,
    **describe("admin_set_owner_limits", "Set an owner's limit overrides", 404),
)
def admin_set_limits(
    name: str, body: OwnerLimits, session: SessionDep, settings: SettingsDep, caller: CurrentCaller
) -> LimitsOut:
    """Replace owner `name`'s overrides; 422 names an unknown limit or a value out of bounds."""
    owner = _owner(session, name)
    owner.limits = validate_overrides(body.overrides)
    session.commit()
    return _out(session, settings, owner)
