"""Liveness, readiness (DB, broker, store reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, text

from cadenza.db.models import Job
from cadenza.db.session import session_factory
from cadenza.jobs.queue import ping_broker
from cadenza_api.openapi import describe
from cadenza_api.schemas import Liveness, Readiness

router = APIRouter(tags=["health"])
log = logging.getLogger("cadenza.api")


@router.get("/healthz", response_model=Liveness, **describe("health_live", "Liveness"))
def healthz() -> dict[str, str]:
    """`{"status": "ok"}` while the process serves requests; it checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    operation_id="health_ready",
    summary="Readiness",
    responses={
        200: {"model": Readiness, "description": "The database, broker and store all answer."},
        503: {"model": Readiness, "description": "A dependency does not answer (see `checks`)."},
    },
)
async def readyz(request: Request) -> JSONResponse:
    """Whether this API can serve: each dependency is pinged (5 s each) and reported."""
    settings = request.app.state.settings
    checks: dict[str, str] = {}

    def db() -> None:
        with session_factory(settings.resolved_database_url)() as s:
            s.execute(text("SELECT 1"))

    for name, fn in (
        ("database", db),
        ("broker", lambda: ping_broker(settings)),
        ("store", request.app.state.store.ping),
    ):
        try:
            await asyncio.wait_for(asyncio.to_thread(fn), timeout=5)
            checks[name] = "ok"
        except Exception as exc:  # readiness reports, it never raises
            # Only the component's name goes out (a probe is unauthenticated); the driver's
            # message, with hosts and ports, goes to the log.
            log.warning("readiness: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )


@router.get("/metrics", response_class=PlainTextResponse, **describe("health_metrics", "Metrics"))
def metrics(request: Request) -> str:
    """Job counts by type and state, in Prometheus text format."""
    settings = request.app.state.settings
    with session_factory(settings.resolved_database_url)() as s:
        rows = s.execute(select(Job.type, Job.state, func.count()).group_by(Job.type, Job.state))
        lines = [
            "# HELP cadenza_jobs Jobs by type and state.",
            "# TYPE cadenza_jobs gauge",
        ]
        lines += [f'cadenza_jobs{{type="{t}",state="{st}"}} {n}' for t, st, n in rows]
    return "\n".join(lines) + "\n"
