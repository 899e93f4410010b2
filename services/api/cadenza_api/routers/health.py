"""Liveness, readiness (DB, broker, store reachable) and Prometheus metrics."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, text

from cadenza.db.models import Job
from cadenza.db.session import session_factory
from cadenza.jobs.queue import QUEUES, ping_broker
from cadenza_api.deps import Database, SessionRoute, authenticate
from cadenza_api.openapi import describe
from cadenza_api.schemas import Liveness, Readiness

router = APIRouter(route_class=SessionRoute, tags=["health"])
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
    """Whether this API can serve: each dependency is pinged (5 s each) and reported.

    Open to probes, which learn `ok` or `unavailable` per dependency and nothing more. With a
    key that has the `admin` scope, `errors` also names the exception class of each failing
    dependency (never its message, which may carry hosts or credentials: that goes to the log).
    """
    settings = request.app.state.settings
    checks: dict[str, str] = {}
    errors: dict[str, str] = {}

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
            log.warning("readiness: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            checks[name] = "unavailable"
            errors[name] = type(exc).__name__
    ok = all(v == "ok" for v in checks.values())
    body: dict[str, object] = {"status": "ok" if ok else "unavailable", "checks": checks}
    # Read by hand, not through the Bearer dependency: the probe's operation declares no
    # security (the key is optional here and changes only how much is said).
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip() and await _is_admin(request, token.strip()):
        body["errors"] = errors
    return JSONResponse(body, status_code=200 if ok else 503)


async def _is_admin(request: Request, token: str) -> bool:
    """Whether `token` is a live admin key; False for anything else, a database that does not
    answer included (a probe never gets a 401 or a 500 from readiness)."""
    db: Database = request.app.state.db
    try:
        async with db.session() as session:
            caller = await authenticate(request, token, session)
    except Exception:  # an invalid key or no database: the plain answer
        return False
    return caller.allows("admin")


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
        active = dict.fromkeys(((q, st) for q in QUEUES for st in ("queued", "running")), 0)
        counts = s.execute(
            select(Job.queue, Job.state, func.count())
            .where(Job.state.in_(("queued", "running")))
            .group_by(Job.queue, Job.state)
        )
        active.update({(q, st): n for q, st, n in counts})
    # Every queue and state, zeros included: KEDA's metrics-api scaler (k8s/components/
    # autoscaling) reads `running` to keep a busy worker's replica, and fails on a missing line.
    lines += [
        "# HELP cadenza_queue_jobs Queued and running jobs by queue.",
        "# TYPE cadenza_queue_jobs gauge",
    ]
    lines += [
        f'cadenza_queue_jobs{{queue="{q}",state="{st}"}} {n}' for (q, st), n in active.items()
    ]
    return "\n".join(lines) + "\n"
