"""Server-side commands: schema, keys, and running the API and the workers.

They read the same `CADENZA_*` settings as the services and talk to the database directly,
so they run where the services run (a container, a Kubernetes Job, a developer machine).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from cadenza.cli.output import console, out
from cadenza.config import Settings, get_settings
from cadenza.launch.processes import ServiceUnavailableError
from cadenza.launch.stack import Launched, api_command, worker_command

keys_app = typer.Typer(help="Manage API keys.")


def migrate_database(settings: Settings) -> None:
    from cadenza.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


def migrate() -> None:
    """Create or upgrade the database schema (idempotent)."""
    settings = get_settings()
    migrate_database(settings)
    console.print(f"database at {_redact(settings.resolved_database_url)} is up to date")


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@keys_app.command("create")
def keys_create(owner: Annotated[str, typer.Option(help="owner name")]) -> None:
    """Print a new API key for OWNER (created if new). Shown once; only its hash is kept."""
    from cadenza.db.repo import create_api_key
    from cadenza.db.session import session_scope

    settings = get_settings()
    migrate_database(settings)
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name=owner)
    out.print(key, soft_wrap=True)


@keys_app.command("revoke")
def keys_revoke(owner: Annotated[str, typer.Option(help="owner name")]) -> None:
    """Revoke every live key of OWNER."""
    from cadenza.db.repo import revoke_keys
    from cadenza.db.session import session_scope

    with session_scope(get_settings().resolved_database_url) as s:
        n = revoke_keys(session=s, owner_name=owner)
    console.print(f"revoked {n} key(s)")


def api(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info"
) -> None:
    """Run the REST API (uvicorn)."""
    argv = api_command(host=host, port=port, log_level=log_level, workers=workers)
    os.execv(argv[0], argv)


def worker(
    queues: str = "cpu,gpu",
    concurrency: int = 1,
    loglevel: str = "info",
    pool: Annotated[str, typer.Option(help="solo (default), prefork or threads")] = "solo",
) -> None:
    """Run a Celery worker on QUEUES (comma-separated: cpu, gpu)."""
    argv = worker_command(queues, concurrency, loglevel, pool)
    os.execv(argv[0], argv)


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived: stop the children and exit."""


def _stop_on_signal(*_: Any) -> None:
    # A second Ctrl-C while the children shut down must not interrupt their clean stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stopped


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    loglevel: str = "warning",
) -> None:
    """Run the API and two workers (queues cpu and gpu); a child that dies is restarted.

    Ctrl-C or SIGTERM stops them all: the workers drain (a running job is requeued, a
    training job after a checkpoint) and exit.
    """
    settings = get_settings()
    migrate_database(settings)
    env = os.environ | {"CADENZA_DATA_DIR": str(settings.data_dir.resolve())}
    launched = Launched(env)
    failed = False
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    try:
        launched.start_stack(
            port=port,
            host=host,
            queues=("cpu", "gpu"),
            log_level=loglevel,
            worker_loglevel=loglevel,
        )
        launched.wait_ready()
        console.print(
            f"Cadenza serving on http://{host}:{port} (docs at /docs); data in {settings.data_dir}"
        )
        launched.supervise()
    except _Stopped:
        pass
    except ServiceUnavailableError as exc:
        console.print(f"[red]error[/] {exc}")
        failed = True
    finally:
        launched.stop()
    raise typer.Exit(max(launched.exit_code(), int(failed)))


def worker_alive(
    max_age: Annotated[
        float, typer.Option(help="seconds since the last heartbeat that still count as alive")
    ] = 90.0,
    file: Annotated[
        Path | None,
        typer.Option(help="heartbeat file (default: CADENZA_WORKER_HEARTBEAT_FILE)"),
    ] = None,
) -> None:
    """Exit 0 if the worker's heartbeat file is fresh, 1 if stale or missing (liveness probe).

    A worker touches the file while idle and, from its lease keeper, while a job runs, so a
    long job keeps it alive and a stopped or frozen process does not.
    """
    from cadenza.jobs.heartbeat import age

    path = file or get_settings().worker_heartbeat_file
    if path is None:
        console.print("[red]error[/] no heartbeat file: set CADENZA_WORKER_HEARTBEAT_FILE")
        raise typer.Exit(2)
    seconds = age(path)
    if seconds is None or seconds > max_age:
        when = "never" if seconds is None else f"{seconds:.0f} s ago"
        console.print(f"worker not alive: last heartbeat {when} ({path})")
        raise typer.Exit(1)
    console.print(f"worker alive: last heartbeat {seconds:.0f} s ago")


def train_job(job_id: str) -> None:
    """Run one queued job in this process (the Kubernetes GPU training Job; DDP-aware)."""
    from cadenza.jobs.train_job import run

    state = run(job_id)
    console.print(f"job {job_id}: {state or 'not claimed (already taken or finished)'}")
    raise typer.Exit(0 if state in ("succeeded", None) else 1)


def reconcile() -> None:
    """Requeue jobs whose worker died, fail those out of attempts, re-send lost messages.

    Every worker does this on a timer; the command is for when no worker is running.
    """
    from cadenza.jobs.reconciler import reconcile_and_resend

    requeued, failed, resent = reconcile_and_resend(get_settings())
    console.print(f"requeued {requeued}, failed {failed}, re-sent {resent}")


def sweep(
    grace: Annotated[
        float | None,
        typer.Option(help="seconds a shared object must be old to go (default: the setting)"),
    ] = None,
) -> None:
    """Delete the objects of deleted rows now (the workers also do this periodically)."""
    from cadenza.sweep import sweep_pending

    settings = get_settings()
    if grace is not None:
        settings = settings.model_copy(update={"sweep_grace_seconds": grace})
    report = sweep_pending(settings, limit=100_000)
    console.print(
        f"deleted {len(report.deleted)} object(s); finished {report.finished} pending "
        f"delete(s), {report.waiting} still wait"
    )
