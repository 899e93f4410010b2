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


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds in `30d`, `12h`, `90m`, `45s`, `2w` (a bare number is seconds)."""
    text = text.strip().lower()
    unit = DURATION_UNITS.get(text[-1:])
    number = text[:-1] if unit is not None else text
    try:
        value = float(number) * (unit or 1)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise typer.BadParameter(f"{text!r}: give a positive duration such as 30d, 12h or 90m")
    return value


@keys_app.command("create")
def keys_create(
    owner: Annotated[str, typer.Option(help="owner name (created if new)")],
    scopes: Annotated[
        str, typer.Option(help="comma-separated: read, write, train, admin")
    ] = "read,write,train",
    name: Annotated[str, typer.Option(help="a label, e.g. the machine it lives on")] = "",
    expires_in: Annotated[
        str | None, typer.Option(help="e.g. 30d, 12h, 90m (default: never)")
    ] = None,
) -> None:
    """Print a new API key for OWNER on stdout (its id on stderr). Shown once; only its hash
    is kept."""
    from datetime import timedelta

    from cadenza.db.models import utcnow
    from cadenza.db.repo import check_scopes, issue_api_key
    from cadenza.db.session import session_scope
    from cadenza.validation import InvalidParams

    try:
        wanted = check_scopes(scopes.split(","))
    except InvalidParams as exc:
        raise typer.BadParameter(exc.message, param_hint="--scopes") from None
    expires_at = utcnow() + timedelta(seconds=parse_duration(expires_in)) if expires_in else None
    settings = get_settings()
    migrate_database(settings)
    with session_scope(settings.resolved_database_url) as s:
        row, key = issue_api_key(
            session=s, owner_name=owner, scopes=wanted, name=name, expires_at=expires_at
        )
        key_id = row.id
    until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    console.print(f"key {key_id} for {owner} ({','.join(wanted)}{until})")
    out.print(key, soft_wrap=True)


def _when(t: Any) -> str | None:
    from cadenza.db.repo import aware

    return aware(t).isoformat(timespec="seconds") if t is not None else None  # type: ignore[union-attr]


@keys_app.command("list")
def keys_list(
    owner: Annotated[str | None, typer.Option(help="only this owner's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table")] = False,
) -> None:
    """Every key (or OWNER's): id, owner, name, prefix, scopes and times; never the secret."""
    from rich.console import Console
    from rich.table import Table

    from cadenza.cli.output import print_json
    from cadenza.db.repo import find_owner, list_api_keys
    from cadenza.db.session import session_scope

    with session_scope(get_settings().resolved_database_url) as s:
        found = find_owner(session=s, name=owner) if owner is not None else None
        if owner is not None and found is None:
            rows = []
        else:
            owner_id = found.id if found is not None else None
            rows = list_api_keys(session=s, owner_id=owner_id, limit=100_000)
    fields = ("created_at", "expires_at", "revoked_at", "last_used_at")
    records: list[dict[str, Any]] = [
        {"id": k.id, "owner": name, "name": k.name, "prefix": k.prefix, "scopes": k.scopes}
        | {f: _when(getattr(k, f)) for f in fields}
        for k, name in rows
    ]
    if as_json:
        print_json(records)
        return
    table = Table("id", "owner", "name", "prefix", "scopes", "created", "expires", "revoked")
    table.add_column("last used")
    for r in records:
        times = [(r[f] or "-")[:16].replace("T", " ") for f in fields]
        table.add_row(r["id"], r["owner"], r["name"], r["prefix"], ",".join(r["scopes"]), *times)
    # Wide enough that ids are never cut, in a terminal or a pipe.
    Console(soft_wrap=True, width=max(out.width, 180)).print(table)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str | None, typer.Argument(help="the key's id (`cadenza keys list`)")] = None,
    owner: Annotated[str | None, typer.Option(help="revoke every live key of OWNER")] = None,
) -> None:
    """Revoke the key KEY_ID, or every live key of OWNER. API processes stop accepting it
    within CADENZA_API_KEY_CACHE_SECONDS (5 s by default)."""
    from cadenza.db.repo import NotFound, revoke_api_key, revoke_keys
    from cadenza.db.session import session_scope

    if (key_id is None) == (owner is None):
        raise typer.BadParameter("give a KEY_ID or --owner NAME (one of them)")
    with session_scope(get_settings().resolved_database_url) as s:
        if owner is not None:
            n = revoke_keys(session=s, owner_name=owner)
        else:
            try:
                revoke_api_key(session=s, key_id=str(key_id))
            except NotFound:
                console.print(f"[red]error[/] no key {key_id} (see `cadenza keys list`)")
                raise typer.Exit(1) from None
            n = 1
    console.print(f"revoked {n} key(s)")


def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[
        int | None, typer.Option(help="API processes on the port (default: CADENZA_API_PROCESSES)")
    ] = None,
    log_level: str = "info",
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
    cpu_workers: Annotated[
        int,
        typer.Option(
            min=1, help="worker processes on the cpu queue (corpus parts run on any of them)"
        ),
    ] = 1,
) -> None:
    """Run the API and workers (`cpu_workers` on queue cpu, one on gpu); a child that dies is
    restarted.

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
            queues=("cpu",) * cpu_workers + ("gpu",),
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
