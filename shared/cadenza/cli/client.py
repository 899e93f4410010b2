"""Client commands: drive the REST API at `CADENZA_API_URL` with `CADENZA_API_KEY`.

Every command talks to the API through `connect()`, which also turns an API error into one
line on stderr (`error STATUS CODE: message`) and exit status 1, so no command handles
`ApiFailure` itself. Bad option values exit with status 2, like typer's own usage errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cadenza.cli.output import console, out, print_json
from cadenza.client import ApiFailure, Client
from cadenza.config import get_settings

datasets_app = typer.Typer(help="Datasets and their files.")
corpora_app = typer.Typer(help="Tokenized corpora.")
models_app = typer.Typer(help="Models and training.")
jobs_app = typer.Typer(help="Jobs: status, wait, cancel, delete.")
samples_app = typer.Typer(help="Generated samples.")


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn an `ApiFailure` raised in the block into its message and exit status 1."""
    try:
        yield
    except ApiFailure as exc:
        console.print(f"[red]error[/] {exc.status} {exc.code}: {exc.message}")
        raise typer.Exit(1) from None


@contextmanager
def connect() -> Iterator[Client]:
    """A client for the configured API (exit 2 without a key), inside `api_errors`."""
    s = get_settings()
    if not s.api_key:
        console.print(
            "[red]set CADENZA_API_KEY[/] (make one with `cadenza keys create --owner NAME`)"
        )
        raise typer.Exit(2)
    with Client(s.api_url, s.api_key) as c, api_errors():
        yield c


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


def _list_option(text: str | None) -> list[str]:
    """A comma-separated option's items (`--tags baroque,mine-2019`)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@datasets_app.command("create")
def datasets_create(
    name: str,
    description: str = "",
    tags: Annotated[str | None, typer.Option(help="style tags, comma-separated")] = None,
) -> None:
    """Create a dataset."""
    with connect() as c:
        print_json(c.create_dataset(name, description, _list_option(tags)))


@datasets_app.command("tag")
def datasets_tag(
    item_id: Annotated[str, typer.Argument(help="a dataset id (or a file id with --file)")],
    tags: Annotated[str, typer.Argument(help="style tags, comma-separated ('' clears them)")],
    file: Annotated[bool, typer.Option("--file", help="ITEM_ID is a file")] = False,
) -> None:
    """Replace the style tags of a dataset or of one file (learned by `--learn-tags` corpora)."""
    with connect() as c:
        path = f"/v1/files/{item_id}" if file else f"/v1/datasets/{item_id}"
        print_json(c.patch(path, {"tags": _list_option(tags)}))


@datasets_app.command("list")
def datasets_list() -> None:
    with connect() as c:
        table = Table("id", "name", "files", "created")
        for d in c.get("/v1/datasets"):
            table.add_row(d["id"], d["name"], str(d["file_count"]), d["created_at"])
        out.print(table)


@datasets_app.command("upload")
def datasets_upload(dataset_id: str, paths: list[Path]) -> None:
    """Upload files (MIDI, audio, or zips of them) to a dataset."""
    with connect() as c:
        files = c.upload(dataset_id, paths)
        for f in files:
            out.print(f"{f['id']}  {f['kind']:5} {f['format']:4} {f['size']:>9}  {f['name']}")


@datasets_app.command("files")
def datasets_files(dataset_id: str) -> None:
    with connect() as c:
        print_json(c.get(f"/v1/datasets/{dataset_id}/files"))


@corpora_app.command("create")
def corpora_create(
    dataset_id: str,
    tokenizer: Annotated[str | None, typer.Option(help="REMI, TSD, MIDILike, …")] = None,
    preset: Annotated[str | None, typer.Option(help="e.g. remi-chords-tempos")] = None,
    config: Annotated[str, typer.Option(help="JSON tokenizer config overrides")] = "{}",
    seed: int = 0,
    shards: Annotated[
        int | None,
        typer.Option(help="tokenize in this many parts on any free worker (default: by size)"),
    ] = None,
    controls: Annotated[
        str | None,
        typer.Option(
            help="attribute controls to learn, comma-separated: tempo, time_signature, key, "
            "program, note_density, polyphony, pitch_range, duration"
        ),
    ] = None,
    learn_tags: Annotated[
        bool, typer.Option(help="learn the files' and dataset's style tags as tokens")
    ] = False,
    wait: bool = True,
) -> None:
    """Tokenize a dataset into a corpus (default: REMI with MidiTok's defaults)."""
    with connect() as c:
        extra: dict[str, Any] = {"shards": shards} if shards is not None else {}
        if controls:
            extra["controls"] = _list_option(controls)
        if learn_tags:
            extra["learn_tags"] = True
        job = c.create_corpus(
            dataset_id,
            tokenizer=tokenizer,
            preset=preset,
            tokenizer_config=_json_option("config", config),
            seed=seed,
            **extra,
        )
        if wait:
            job = follow(c, job, "tokenize")
            print_json(c.get(f"/v1/corpora/{job['corpus_id']}"))
        else:
            print_json(job)


@corpora_app.command("show")
def corpora_show(corpus_id: str) -> None:
    with connect() as c:
        print_json(c.get(f"/v1/corpora/{corpus_id}"))


@models_app.command("create")
def models_create(
    corpus_id: str,
    architecture: str = "music-transformer",
    preset: str = "tiny",
    config: Annotated[str, typer.Option(help="JSON overrides of the model config")] = "{}",
    train: Annotated[str, typer.Option(help="JSON overrides of the training config")] = "{}",
    cluster_job: Annotated[
        bool,
        typer.Option(
            help="hold the training job for a Kubernetes Job (`cadenza k8s train-job`): "
            "no worker takes it"
        ),
    ] = False,
    wait: bool = True,
) -> None:
    """Train a model on a corpus."""
    with connect() as c:
        job = c.create_model(
            corpus_id,
            architecture=architecture,
            preset=preset,
            config=_json_option("config", config),
            train=_json_option("train", train),
            **({"cluster_job": True} if cluster_job else {}),
        )
        if wait and not cluster_job:
            job = follow(c, job, "train")
        print_json(job)


@models_app.command("show")
def models_show(model_id: str) -> None:
    with connect() as c:
        print_json(c.get(f"/v1/models/{model_id}"))


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
    control: Annotated[
        list[str] | None,
        typer.Option(
            help="an attribute control NAME=VALUE (repeatable): note_density=6, key=Dm, "
            "pitch_range=[55,79], note_density=[4,8,12] per bar (see the model's capabilities)"
        ),
    ] = None,
    tags: Annotated[str | None, typer.Option(help="style tags, comma-separated")] = None,
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
    with connect() as c:
        if primer is not None:
            if not dataset_id:
                model = c.get(f"/v1/models/{model_id}")
                corpus = c.get(f"/v1/corpora/{model['corpus_id']}")
                dataset_id = corpus["dataset_id"]
            if not dataset_id:
                console.print("[red]error[/] the model's dataset was deleted: pass --dataset-id")
                raise typer.Exit(2)
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
        if control:
            opts["controls"] = _controls_option(control)
        if tags:
            opts["tags"] = _list_option(tags)
        job = follow(c, c.sample(model_id, **opts), "sample")
        for sid in job["sample_ids"]:
            path = c.download(f"/v1/samples/{sid}/midi", output / f"{sid}.mid")
            out.print(str(path))


def _controls_option(items: list[str]) -> dict[str, Any]:
    """`--control NAME=VALUE` options as a controls object: a value is JSON when it parses
    (numbers, lists), else a string (`key=Dm`, `time_signature=3/4`); exits 2 naming a bad one."""
    controls: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            console.print(f"[red]error[/] --control {item!r} must look like NAME=VALUE")
            raise typer.Exit(2)
        try:
            controls[name.strip()] = json.loads(text)
        except json.JSONDecodeError:
            controls[name.strip()] = text.strip()
    return controls


def _save_render(item_id: str, is_file: bool, view: str, dest: Path) -> None:
    """Download a rendering of a sample (or a dataset MIDI file), waiting while it is made."""
    base = f"/v1/files/{item_id}" if is_file else f"/v1/samples/{item_id}"
    with connect() as c:
        c.download(f"{base}/{view}", dest)
    out.print(str(dest))


def play(
    item_id: Annotated[str, typer.Argument(help="a sample id (or a MIDI file id with --file)")],
    file: Annotated[bool, typer.Option("--file", help="ITEM_ID is a dataset file")] = False,
    format: Annotated[str, typer.Option(help="mp3 or wav")] = "mp3",
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Save a sample (or MIDI file) rendered to audio with the General MIDI soundfont."""
    _save_render(item_id, file, f"audio?format={format}", output or Path(f"{item_id}.{format}"))


def show(
    item_id: Annotated[str, typer.Argument(help="a sample id (or a MIDI file id with --file)")],
    file: Annotated[bool, typer.Option("--file", help="ITEM_ID is a dataset file")] = False,
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
) -> None:
    """Save the piano-roll picture of a sample (or MIDI file) as PNG."""
    _save_render(item_id, file, "pianoroll.png", output or Path(f"{item_id}.png"))


@jobs_app.command("show")
def jobs_show(job_id: str) -> None:
    with connect() as c:
        print_json(c.job(job_id))


@jobs_app.command("wait")
def jobs_wait(job_id: str) -> None:
    with connect() as c:
        print_json(follow(c, c.job(job_id), "job"))


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    with connect() as c:
        print_json(c.cancel(job_id))


@jobs_app.command("list")
def jobs_list(state: str | None = None) -> None:
    with connect() as c:
        table = Table("id", "type", "state", "progress", "message")
        for j in c.get("/v1/jobs", **({"state": state} if state else {}))["jobs"]:
            table.add_row(j["id"], j["type"], j["state"], f"{j['progress']:.0%}", j["message"][:60])
        out.print(table)


def _delete(path: str) -> None:
    """DELETE `path` (no confirmation: scripts call it) and print what went."""
    with connect() as c:
        gone = c.delete(path)
    rows = ", ".join(f"{n} {table}" for table, n in gone["rows"].items() if n)
    pending = f", {gone['objects_pending']} left to the sweep" if gone["objects_pending"] else ""
    out.print(
        f"deleted {gone['kind']} {gone['id']}: {rows or 'no rows'}; "
        f"{gone['objects_deleted']} object(s) removed{pending}"
    )


@datasets_app.command("delete")
def datasets_delete(dataset_id: str) -> None:
    """Delete a dataset and its files (refused while it has corpora or a job reads it)."""
    _delete(f"/v1/datasets/{dataset_id}")


@datasets_app.command("delete-file")
def datasets_delete_file(file_id: str) -> None:
    """Delete one file of a dataset."""
    _delete(f"/v1/files/{file_id}")


@corpora_app.command("delete")
def corpora_delete(corpus_id: str) -> None:
    """Delete a corpus (refused while models were trained on it)."""
    _delete(f"/v1/corpora/{corpus_id}")


@models_app.command("delete")
def models_delete(model_id: str) -> None:
    """Delete a model with its checkpoints, metrics and samples."""
    _delete(f"/v1/models/{model_id}")


@samples_app.command("delete")
def samples_delete(sample_id: str) -> None:
    """Delete a sample, its MIDI and renderings."""
    _delete(f"/v1/samples/{sample_id}")


@jobs_app.command("delete")
def jobs_delete(job_id: str) -> None:
    """Delete a finished job and its events (cancel a queued or running one first)."""
    _delete(f"/v1/jobs/{job_id}")
