"""The FastAPI application factory (stateless: everything lives in SQL and the store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI

from cadenza import __version__
from cadenza.config import Settings, get_settings
from cadenza.db.repo import KeyCache, KeyEpoch
from cadenza.storage import open_store
from cadenza_api import errors, openapi, studio
from cadenza_api.deps import Database
from cadenza_api.routers import (
    corpora,
    datasets,
    files,
    health,
    jobs,
    keys,
    limits,
    midi_io,
    models,
    samples,
)
from cadenza_api.streams import EventPolls

DESCRIPTION = """Turn your own audio and MIDI into music-generation models, and use them.

Authenticate with `Authorization: Bearer <key>` (make a key with
`cadenza keys create --owner NAME`; in `/docs`, press *Authorize*). A key's scopes say what it
may do: `read` (GET), `write` (every other method), `train` (`POST /v1/models`), `admin`
(`/v1/admin/*`, and everything else); a missing scope answers 403.

The story: create a dataset, upload MIDI or audio into it, tokenize it into a corpus, train a
model on the corpus, sample from the model, download the samples' MIDI (or audio, or a piano
roll). Tokenizing, training, sampling and rendering run as jobs: those routes answer 202 with
the job; poll `GET /v1/jobs/{id}` until its state is `succeeded` and read the ids it made.

Every error answers with `{"error": {"code", "message", "details"?}}`: branch on `code`, show
`message` (it says what to do).
"""

# One entry per router, in the order of the story above (`/docs` groups operations by these).
TAGS = [
    {"name": "datasets", "description": "Your collections of MIDI and audio files; uploads."},
    {"name": "files", "description": "One stored file: its metadata, bytes and renderings."},
    {"name": "corpora", "description": "A dataset tokenized into training arrays."},
    {"name": "models", "description": "Training on a corpus; checkpoints, weights, sampling."},
    {"name": "samples", "description": "Generated pieces: MIDI, audio and piano rolls."},
    {"name": "jobs", "description": "Asynchronous work: state, progress, cancellation."},
    {"name": "keys", "description": "Your API keys: list them, revoke one."},
    {"name": "limits", "description": "Your budgets, quotas and rates, and your usage."},
    {"name": "admin", "description": "Every owner's API keys and limits (`admin` scope)."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics."},
]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Size the worker-thread pool that runs sync routes (AnyIO's default is 40 threads).

    Threads beyond the database slots serve what needs no session (health, downloads).
    """
    settings: Settings = app.state.settings
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    yield


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    app = FastAPI(
        title="Cadenza",
        version=__version__,
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.store = open_store(settings)
    app.state.db = Database(settings)
    # The processes of one API server share the epoch file (in the data directory): a key
    # revoked through any of them stops working on all of them at once.
    epoch = KeyEpoch(settings.data_dir / "run" / "api-key-epoch")
    app.state.key_cache = KeyCache(settings.api_key_cache_seconds, epoch=epoch)
    app.state.event_polls = EventPolls(app.state.db)
    errors.install(app)
    openapi.install(app)
    # Starlette tries routes in order and their paths are disjoint: jobs first, since polling a
    # job is what clients do most (each router passed over costs a GET its matching).
    for module in (jobs, health, datasets, files, corpora, models, midi_io, samples):
        app.include_router(module.router)
    for router in (*keys.routers, *limits.routers):
        app.include_router(router)
    studio.install(app)
    return app
