"""API keys over HTTP: your own keys (`/v1/keys`) and every owner's (`/v1/admin/keys`).

Scopes are enforced in `deps.current_caller` by method and path, so the admin routes need
`admin` for being under /v1/admin, and the self-service routes need `read` (list) or `write`
(revoke) like any other route. A revoke (after its commit) clears the key cache of every API
process of this server (they share `KeyEpoch`), so the key stops working at once; other
servers (replicas) stop accepting it within `api_key_cache_seconds`.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import Request

from cadenza.db.models import ApiKey, Owner, utcnow
from cadenza.db.repo import (
    KeyCache,
    check_scopes,
    find_owner,
    issue_api_key,
    list_api_keys,
    revoke_api_key,
)
from cadenza_api.deps import CurrentCaller, Limit, Offset, SessionDep, v1_router
from cadenza_api.openapi import describe
from cadenza_api.schemas import KeyCreate, KeyCreated, KeyOut

self_router = v1_router("/v1/keys", "keys")
admin_router = v1_router("/v1/admin/keys", "admin")
routers = (self_router, admin_router)


def key_out(row: ApiKey, owner: str, **extra: Any) -> dict[str, Any]:
    fields = {name: getattr(row, name) for name in KeyOut.model_fields if name != "owner"}
    return fields | {"owner": owner} | extra


def _revoked(request: Request, row: ApiKey, owner: str) -> KeyOut:
    cache: KeyCache = request.app.state.key_cache
    cache.clear()
    return KeyOut.model_validate(key_out(row, owner))


@self_router.get("", response_model=list[KeyOut], **describe("keys_list", "List your keys"))
def list_own_keys(
    session: SessionDep, caller: CurrentCaller, limit: Limit = 100, offset: Offset = 0
) -> list[KeyOut]:
    """Every key of the caller's owner (revoked and expired ones too), newest first."""
    rows = list_api_keys(session=session, owner_id=caller.owner.id, limit=limit, offset=offset)
    return [KeyOut.model_validate(key_out(k, name)) for k, name in rows]


@self_router.delete(
    "/{key_id}", response_model=KeyOut, **describe("keys_revoke", "Revoke one of your keys", 404)
)
def revoke_own_key(
    key_id: str, request: Request, session: SessionDep, caller: CurrentCaller
) -> KeyOut:
    """Revoke a key of your own (the one you call with too, if you name it): it stops working
    on this API server at once, on other replicas within `CADENZA_API_KEY_CACHE_SECONDS`."""
    row = revoke_api_key(session=session, key_id=key_id, owner_id=caller.owner.id)
    session.commit()
    return _revoked(request, row, caller.owner.name)


@admin_router.get("", response_model=list[KeyOut], **describe("admin_list_keys", "List keys"))
def admin_list_keys(
    session: SessionDep,
    caller: CurrentCaller,
    owner: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[KeyOut]:
    """Every owner's keys, or those of `owner` (by name), newest first."""
    owner_id = None
    if owner is not None:
        found = find_owner(session=session, name=owner)
        if found is None:
            return []
        owner_id = found.id
    rows = list_api_keys(session=session, owner_id=owner_id, limit=limit, offset=offset)
    return [KeyOut.model_validate(key_out(k, name)) for k, name in rows]


@admin_router.post(
    "",
    status_code=201,
    response_model=KeyCreated,
    **describe("admin_create_key", "Create a key", 422),
)
def admin_create_key(body: KeyCreate, session: SessionDep, caller: CurrentCaller) -> KeyCreated:
    """A new key for `owner` (created if new) with `scopes`; the answer carries its `secret`,
    the only time it is shown. 422 names an unknown scope."""
    scopes = check_scopes(body.scopes)
    expires_at = (
        utcnow() + timedelta(seconds=body.expires_in_s) if body.expires_in_s is not None else None
    )
    row, secret = issue_api_key(
        session=session,
        owner_name=body.owner,
        scopes=scopes,
        name=body.name,
        expires_at=expires_at,
    )
    session.commit()
    return KeyCreated.model_validate(key_out(row, body.owner, secret=secret))


@admin_router.delete(
    "/{key_id}", response_model=KeyOut, **describe("admin_revoke_key", "Revoke a key", 404)
)
def admin_revoke_key(
    key_id: str, request: Request, session: SessionDep, caller: CurrentCaller
) -> KeyOut:
    """Revoke any owner's key: it stops working on this API server at once, on other replicas
    within `CADENZA_API_KEY_CACHE_SECONDS`. Revoking a revoked key keeps its first revocation
    time."""
    row = revoke_api_key(session=session, key_id=key_id)
    owner_name = session.get_one(Owner, row.owner_id).name
    session.commit()
    return _revoked(request, row, owner_name)
