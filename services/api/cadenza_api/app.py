"""The FastAPI application factory (stateless: everything lives in SQL and the store)."""

from __future__ import annotations

from fastapi import FastAPI

from cadenza import __version__
from cadenza.config import Settings, get_settings
from cadenza.storage import open_store
from cadenza_api import errors
from cadenza_api.routers import corpora, datasets, files, health, jobs, models, samples


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Cadenza",
        version=__version__,
        description="Turn your own audio and MIDI into music-generation models, and use them. "
        "Authenticate with `Authorization: Bearer <key>` (`cadenza keys create --owner NAME`).",
    )
    app.state.settings = settings
    app.state.store = open_store(settings)
    errors.install(app)
    for module in (health, datasets, files, corpora, models, samples, jobs):
        app.include_router(module.router)
    return app
