"""Request dependencies: settings, DB session, object store and the caller's owner."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from cadenza.config import Settings
from cadenza.db.models import Owner
from cadenza.db.repo import owner_for_key
from cadenza.db.session import session_factory
from cadenza.storage import ObjectStore
from cadenza_api.errors import ApiError


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    session = session_factory(request.app.state.settings.resolved_database_url)()
    try:
        yield session
    finally:
        session.close()


def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]


def current_owner(request: Request, session: SessionDep) -> Owner:
    """The owner of the Bearer API key; 401 with a hint when it is missing or wrong."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            401,
            "unauthorized",
            "missing API key: send 'Authorization: Bearer <key>' "
            "(make one with `cadenza keys create --owner NAME`)",
        )
    owner = owner_for_key(session=session, key=token.strip())
    if owner is None:
        raise ApiError(401, "unauthorized", "invalid or revoked API key")
    return owner


CurrentOwner = Annotated[Owner, Depends(current_owner)]
