"""The `cadenza` command: run the services, manage keys, and drive the REST API.

Server-side commands (serve, api, worker, migrate, keys, train-job) read the same
`CADENZA_*` settings as the services; client commands talk HTTP to `CADENZA_API_URL`
with `CADENZA_API_KEY`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cadenza.client import ApiFailure, Client
from cadenza.config import Settings, get_settings

app = typer.Typer(help="Cadenza: music-generation models from your own audio and MIDI.")
keys_app = typer.Typer(help="Manage API keys.")
datasets_app = typer.Typer(help="Datasets and their files.")
corpora_app = typer.Typer(help="Tokenized corpora.")
models_app = typer.Typer(help="Models and training.")
jobs_app = typer.Typer(help="Jobs: status, wait, cancel.")
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
app.add_typer(corpora_app, name="corpora")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
console = Console(stderr=True)
# Paths, ids and JSON on stdout are for copying and piping: never wrapped at the terminal width.
out = Console(soft_wrap=True)


def main() -> None:
    app()


# ---------------------------------------------------------------------------- server side
def _migrate(settings: Settings) -> None:
    from cadenza.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url)


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (idempotent)."""
    settings = get_settings()
    _migrate(settings)
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
    _migrate(settings)
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


@app.command()
def api(
    host: str = "127.0.0.1", port: int = 8000, workers: int = 1, log_level: str = "info"
) -> None:
    """Run the REST API (uvicorn)."""
    import uvicorn

    uvicorn.run(
        "cadenza_api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


def _worker_argv(queues: str, concurrency: int, loglevel: str, pool: str = "solo") -> list[str]:
    """Celery worker command line.

    The default `solo` pool runs each job in the worker's main process, which may start child
    processes (the sandboxed MIDI parser, parallel tokenization, DDP); prefork's children are
    daemonic and may not. Run several workers for concurrency.
    """
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "cadenza_worker.app",
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-l",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        "--without-heartbeat",
        "-n",
        f"cadenza-{queues.replace(',', '-')}@%h",
    ]


@app.command()
def worker(
    queues: str = "cpu,gpu",
    concurrency: int = 1,
    loglevel: str = "info",
    pool: Annotated[str, typer.Option(help="solo (default), prefork or threads")] = "solo",
) -> None:
    """Run a Celery worker on QUEUES (comma-separated: cpu, gpu)."""
    argv = _worker_argv(queues, concurrency, loglevel, pool)
    os.execv(argv[0], argv)


@app.command()
def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    loglevel: str = "warning",
) -> None:
    """Run the API and two workers (queues cpu and gpu) on the embedded default."""
    settings = get_settings()
    _migrate(settings)
    env = os.environ | {"CADENZA_DATA_DIR": str(settings.data_dir.resolve())}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "cadenza_api.app:create_app",
                "--factory",
                "--host",
                host,
                "--port",
                str(port),
                "--log-level",
                loglevel,
            ],
            env=env,
        ),
        subprocess.Popen(_worker_argv("cpu", 1, loglevel), env=env),
        subprocess.Popen(_worker_argv("gpu", 1, loglevel), env=env),
    ]
    console.print(
        f"Cadenza serving on http://{host}:{port} (docs at /docs); data in {settings.data_dir}"
    )

    def _stop(*_: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        _stop()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    raise typer.Exit(
        max((p.returncode or 0) for p in procs) if any(p.returncode for p in procs) else 0
    )


@app.command("train-job")
def train_job(job_id: str) -> None:
    """Run one queued job in this process (the Kubernetes GPU training Job; DDP-aware)."""
    from cadenza.train.job import run

    state = run(job_id)
    console.print(f"job {job_id}: {state or 'not claimed (already taken or finished)'}")
    raise typer.Exit(0 if state in ("succeeded", None) else 1)


@app.command()
def reconcile() -> None:
    """Requeue jobs whose worker died, fail those out of attempts, re-send lost messages.

    Every worker does this on a timer; the command is for when no worker is running.
    """
    from cadenza.jobs.reconciler import reconcile_and_resend

    requeued, failed, resent = reconcile_and_resend(get_settings())
    console.print(f"requeued {requeued}, failed {failed}, re-sent {resent}")


# ---------------------------------------------------------------------------- client side
def _client() -> Client:
    s = get_settings()
    if not s.api_key:
        console.print(
            "[red]set CADENZA_API_KEY[/] (make one with `cadenza keys create --owner NAME`)"
        )
        raise typer.Exit(2)
    return Client(s.api_url, s.api_key)


def _print(obj: Any) -> None:
    out.print_json(json.dumps(obj))


def _fail(exc: ApiFailure) -> None:
    console.print(f"[red]error[/] {exc.status} {exc.code}: {exc.message}")
    raise typer.Exit(1)


def _json_option(option: str, text: str) -> dict[str, Any]:
    """A JSON-object option's value, or exit 2 naming the option (not a traceback)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        console.print(f"[red]error[/] --{option} is not valid JSON: {exc}")
        raise typer.Exit(2) from None
    if not isinstance(value, dict):
        console.print(f"[red]error[/] --{option} must be a JSON object, like '{{\"key\": 1}}'")
        raise typer.Exit(2)
    return value


def follow(client: Client, job: dict[str, Any], label: str) -> dict[str, Any]:
    """Show a progress bar for a job until it ends; exit non-zero if it did not succeed."""
    with Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[msg]}"),
        console=console,
    ) as bar:
        task = bar.add_task(label, total=1.0, msg="queued")

        def update(j: dict[str, Any]) -> None:
            bar.update(task, completed=j["progress"], msg=(j["message"] or j["state"])[:60])

        final = client.wait(job["id"], on_update=update)
    if final["state"] != "succeeded":
        console.print(f"[red]{label} {final['state']}[/]: {final.get('error') or final['message']}")
        raise typer.Exit(1)
    return final


@datasets_app.command("create")
def datasets_create(name: str, description: str = "") -> None:
    """Create a dataset."""
    with _client() as c:
        try:
            _print(c.create_dataset(name, description))
        except ApiFailure as e:
            _fail(e)


@datasets_app.command("list")
def datasets_list() -> None:
    with _client() as c:
        table = Table("id", "name", "files", "created")
        for d in c.get("/v1/datasets"):
            table.add_row(d["id"], d["name"], str(d["file_count"]), d["created_at"])
        out.print(table)


@datasets_app.command("upload")
def datasets_upload(dataset_id: str, paths: list[Path]) -> None:
    """Upload files (MIDI, audio, or zips of them) to a dataset."""
    with _client() as c:
        try:
            files = c.upload(dataset_id, paths)
        except ApiFailure as e:
            _fail(e)
        for f in files:
            out.print(f"{f['id']}  {f['kind']:5} {f['format']:4} {f['size']:>9}  {f['name']}")


@datasets_app.command("files")
def datasets_files(dataset_id: str) -> None:
    with _client() as c:
        _print(c.get(f"/v1/datasets/{dataset_id}/files"))


@corpora_app.command("create")
def corpora_create(
    dataset_id: str,
    tokenizer: Annotated[str | None, typer.Option(help="REMI, TSD, MIDILike, …")] = None,
    preset: Annotated[str | None, typer.Option(help="e.g. remi-colab")] = None,
    config: Annotated[str, typer.Option(help="JSON tokenizer config overrides")] = "{}",
    seed: int = 0,
    wait: bool = True,
) -> None:
    """Tokenize a dataset into a corpus (default: REMI with MidiTok's defaults)."""
    with _client() as c:
        try:
            job = c.create_corpus(
                dataset_id,
                tokenizer=tokenizer,
                preset=preset,
                tokenizer_config=_json_option("config", config),
                seed=seed,
            )
            if wait:
                job = follow(c, job, "tokenize")
                _print(c.get(f"/v1/corpora/{job['corpus_id']}"))
            else:
                _print(job)
        except ApiFailure as e:
            _fail(e)


@corpora_app.command("show")
def corpora_show(corpus_id: str) -> None:
    with _client() as c:
        _print(c.get(f"/v1/corpora/{corpus_id}"))


@models_app.command("create")
def models_create(
    corpus_id: str,
    architecture: str = "music-transformer",
    preset: str = "tiny",
    config: Annotated[str, typer.Option(help="JSON overrides of the model config")] = "{}",
    train: Annotated[str, typer.Option(help="JSON overrides of the training config")] = "{}",
    wait: bool = True,
) -> None:
    """Train a model on a corpus."""
    with _client() as c:
        try:
            job = c.create_model(
                corpus_id,
                architecture=architecture,
                preset=preset,
                config=_json_option("config", config),
                train=_json_option("train", train),
            )
            if wait:
                job = follow(c, job, "train")
            _print(job)
        except ApiFailure as e:
            _fail(e)


@models_app.command("show")
def models_show(model_id: str) -> None:
    with _client() as c:
        _print(c.get(f"/v1/models/{model_id}"))


@app.command()
def sample(
    model_id: str,
    primer: Annotated[Path | None, typer.Option(help="a MIDI file to continue")] = None,
    primer_file_id: Annotated[
        str | None, typer.Option(help="a stored MIDI file to continue")
    ] = None,
    primer_bars: int | None = None,
    dataset_id: Annotated[str | None, typer.Option(help="dataset to upload --primer to")] = None,
    n: Annotated[int, typer.Option("-n", "--n", help="variations, sampled as one batch")] = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = None,
    primer_seconds: float | None = None,
    max_bars: int | None = None,
    options: Annotated[
        str,
        typer.Option(
            help='JSON of any other sample fields, e.g. \'{"repetition_penalty": 1.2, '
            '"include_primer": false}\' (see POST /v1/models/{id}/samples)'
        ),
    ] = "{}",
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("samples"),
) -> None:
    """Generate N variations and write their MIDI files to OUTPUT."""
    with _client() as c:
        try:
            if primer is not None:
                if not dataset_id:
                    model = c.get(f"/v1/models/{model_id}")
                    corpus = c.get(f"/v1/corpora/{model['corpus_id']}")
                    dataset_id = corpus["dataset_id"]
                primer_file_id = c.upload(str(dataset_id), [primer])[0]["id"]
            opts: dict[str, Any] = {
                "n": n,
                "max_new_tokens": max_new_tokens,
                "temperature": temperature,
                "top_k": top_k,
                "top_p": top_p,
                "min_p": min_p,
                "seed": seed,
                "primer_file_id": primer_file_id,
                "primer_bars": primer_bars,
                "primer_seconds": primer_seconds,
                "max_bars": max_bars,
                **_json_option("options", options),
            }
            job = follow(c, c.sample(model_id, **opts), "sample")
            for sid in job["sample_ids"]:
                path = c.download(f"/v1/samples/{sid}/midi", output / f"{sid}.mid")
                out.print(str(path))
        except ApiFailure as e:
            _fail(e)


def _save_render(item_id: str, is_file: bool, view: str, dest: Path) -> None:
    """Download a rendering of a sample (or a dataset MIDI file), waiting while it is made."""
    base = f"/v1/files/{item_id}" if is_file else f"/v1/samples/{item_id}"
    with _client() as c:
        try:
            c.download(f"{base}/{view}", dest)
        except ApiFailure as e:
            _fail(e)
    out.print(str(dest))


@app.command()
def play(
    item_id: Annotated[str, typer.Argument(help="a sample id (or a MIDI file id with --file)")],
    file: Annotated[bool, typer.Option("--file", help="ITEM_ID is a dataset file")] = False,
    format: Annotated[str, typer.Option(help="mp3 or wav")] = "mp3",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Save a sample (or MIDI file) rendered to audio with the General MIDI soundfont."""
    _save_render(item_id, file, f"audio?format={format}", output or Path(f"{item_id}.{format}"))


@app.command()
def show(
    item_id: Annotated[str, typer.Argument(help="a sample id (or a MIDI file id with --file)")],
    file: Annotated[bool, typer.Option("--file", help="ITEM_ID is a dataset file")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Save the piano-roll picture of a sample (or MIDI file) as PNG."""
    _save_render(item_id, file, "pianoroll.png", output or Path(f"{item_id}.png"))


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    with _client() as c:
        _print(c.job(job_id))


@jobs_app.command("wait")
def jobs_wait(job_id: str) -> None:
    with _client() as c:
        _print(follow(c, c.job(job_id), "job"))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    with _client() as c:
        _print(c.cancel(job_id))


@jobs_app.command("list")
def jobs_list(state: str | None = None) -> None:
    with _client() as c:
        table = Table("id", "type", "state", "progress", "message")
        for j in c.get("/v1/jobs", **({"state": state} if state else {}))["jobs"]:
            table.add_row(j["id"], j["type"], j["state"], f"{j['progress']:.0%}", j["message"][:60])
        out.print(table)


# ---------------------------------------------------------------------------- demo
def _api_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@app.command()
def demo(
    files: Annotated[int, typer.Option(help="Bach chorales to use")] = 24,
    steps: Annotated[int, typer.Option(help="training steps")] = 300,
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("demo-output"),
    port: int = 8765,
) -> None:
    """The whole path on the embedded default: Bach chorales → REMI → GPT → continuation."""
    from cadenza.datasets import export_bach_chorales
    from cadenza.db.repo import create_api_key
    from cadenza.db.session import session_scope

    t0 = time.monotonic()
    settings = get_settings()
    _migrate(settings)
    url = f"http://127.0.0.1:{port}"
    server = None
    if not _api_up(url):
        env = os.environ | {"CADENZA_DATA_DIR": str(settings.data_dir.resolve())}
        log_path = settings.data_dir / "logs" / "demo-server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        console.print(f"starting the embedded server (log: {log_path})")
        server = subprocess.Popen(
            [sys.executable, "-m", "cadenza.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        for _ in range(120):
            if _api_up(url):
                break
            if server.poll() is not None:
                raise typer.Exit(1)
            time.sleep(0.5)
    try:
        with session_scope(settings.resolved_database_url) as s:
            _, key = create_api_key(session=s, owner_name="demo")
        console.print(f"[bold]1/5[/] exporting {files} Bach chorales from music21's corpus")
        midi_dir = settings.data_dir / "bach-midi"
        paths = export_bach_chorales(midi_dir, files)
        with Client(url, key) as c:
            ds = c.create_dataset("bach-chorales", "Bach chorales from music21's corpus")
            uploaded = c.upload(ds["id"], paths)
            console.print(f"[bold]2/5[/] uploaded {len(uploaded)} MIDI files to dataset {ds['id']}")
            job = follow(c, c.create_corpus(ds["id"], preset="remi-colab"), "tokenize")
            corpus = c.get(f"/v1/corpora/{job['corpus_id']}")
            tokens = corpus["stats"].get("tokens_per_split", {})
            console.print(
                f"[bold]3/5[/] corpus {corpus['id']}: vocabulary {corpus['vocab_size']}, "
                + ", ".join(f"{n} {split} tokens" for split, n in tokens.items())
            )
            job = follow(
                c,
                c.create_model(
                    corpus["id"],
                    architecture="music-transformer",
                    preset="tiny",
                    train={"max_steps": steps, "eval_interval": max(steps // 4, 1)},
                ),
                "train",
            )
            model = c.get(f"/v1/models/{job['model_id']}")
            summ = model["summary"]
            console.print(
                f"[bold]4/5[/] model {model['id']}: {summ.get('steps')} steps, "
                f"val loss {summ.get('final_val_loss') or float('nan'):.3f}, "
                f"{summ.get('tokens_per_s') or 0:.0f} tokens/s"
            )
            job = follow(
                c,
                c.sample(
                    model["id"],
                    primer_file_id=uploaded[0]["id"],
                    primer_bars=4,
                    n=2,
                    max_new_tokens=512,
                    temperature=0.9,
                    top_k=20,
                    seed=42,
                ),
                "sample",
            )
            output.mkdir(parents=True, exist_ok=True)
            written = [
                c.download(f"/v1/samples/{sid}/midi", output / f"continuation-{i + 1}.mid")
                for i, sid in enumerate(job["sample_ids"])
            ]
        console.print(
            f"[bold]5/5[/] wrote {len(written)} continuations in {time.monotonic() - t0:.0f} s:"
        )
        for p in written:
            out.print(str(p.resolve()))
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    main()
