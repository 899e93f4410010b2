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

from cadenza.atomic import atomic_path
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


@datasets_app.command("transcribe")
def datasets_transcribe(
    dataset_id: str,
    engine: Annotated[
        str,
        typer.Option(
            help="basic-pitch (any instrument) or transkun (solo piano, with velocities and "
            "sustain pedal)"
        ),
    ] = "basic-pitch",
    files: Annotated[
        str | None, typer.Option(help="audio file ids, comma-separated (default: all)")
    ] = None,
    options: Annotated[
        str,
        typer.Option(
            help='JSON transcription options, e.g. \'{"onset_threshold": 0.4, "midi_tempo": 100}\''
        ),
    ] = "{}",
    wait: bool = True,
) -> None:
    """Transcribe a dataset's audio files to MIDI files in the same dataset."""
    with connect() as c:
        knobs = {**_json_option("options", options), "engine": engine}
        job = c.audio_job(dataset_id, "transcribe", file_ids=_list_option(files), transcribe=knobs)
        if wait:
            job = follow(c, job, "transcribe")
            for file_id in job["file_ids"]:
                f = c.get(f"/v1/files/{file_id}")
                out.print(f"{f['id']}  {f['kind']:5} {f['format']:4} {f['size']:>9}  {f['name']}")
        else:
            print_json(job)


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
    base_model: Annotated[
        str | None,
        typer.Option(
            help="tokenize with this model's tokenizer (yours or a public one), to train an "
            "adapter of it (`models create --base-model`)"
        ),
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
        if base_model is not None:
            extra["base_model_id"] = base_model
        else:
            extra.update(
                tokenizer=tokenizer, preset=preset, tokenizer_config=_json_option("config", config)
            )
        job = c.create_corpus(dataset_id, seed=seed, **extra)
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
    base_model: Annotated[
        str | None,
        typer.Option(
            help="train a LoRA adapter of this model (yours or a public one) instead of a "
            "model of your own; the corpus must be made with `corpora create --base-model`"
        ),
    ] = None,
    lora_rank: Annotated[int, typer.Option(help="adapter rank (with --base-model)")] = 8,
    lora_alpha: Annotated[float, typer.Option(help="adapter scale alpha (update * alpha/rank)")] = (
        16.0
    ),
    lora_targets: Annotated[
        str | None,
        typer.Option(help="comma-separated layers to adapt, e.g. attn.c_attn,mlp.c_fc"),
    ] = None,
    wait: bool = True,
) -> None:
    """Train a model on a corpus, or (--base-model) a LoRA adapter of another model."""
    with connect() as c:
        options: dict[str, Any] = {"train": _json_option("train", train)}
        if base_model is not None:
            adapter: dict[str, Any] = {"type": "lora", "rank": lora_rank, "alpha": lora_alpha}
            if lora_targets:
                adapter["targets"] = [t.strip() for t in lora_targets.split(",") if t.strip()]
            options.update(base_model_id=base_model, adapter=adapter)
        else:
            options.update(
                architecture=architecture, preset=preset, config=_json_option("config", config)
            )
        if cluster_job:
            options["cluster_job"] = True
        job = c.create_model(corpus_id, **options)
        if wait and not cluster_job:
            job = follow(c, job, "train")
        print_json(job)


@models_app.command("show")
def models_show(model_id: str) -> None:
    with connect() as c:
        print_json(c.get(f"/v1/models/{model_id}"))


@models_app.command("list")
def models_list(
    public: Annotated[
        bool, typer.Option(help="every owner's public models instead of yours")
    ] = False,
) -> None:
    """Your models (or, with --public, the public ones you may sample and adapt)."""
    with connect() as c:
        rows = c.get("/v1/models", public="true") if public else c.get("/v1/models")
        table = Table("id", "architecture", "state", "visibility", "base", "created")
        for m in rows:
            table.add_row(
                m["id"],
                m["architecture"],
                m["state"],
                m["visibility"],
                m.get("base_model_id") or "",
                m["created_at"],
            )
        out.print(table)


@models_app.command("publish")
def models_publish(
    model_id: str,
    private: Annotated[bool, typer.Option(help="unpublish: make it yours only again")] = False,
) -> None:
    """Make a model public: every owner may sample and adapt it.

    They never read its corpus, dataset or checkpoints. An admin key may publish any model."""
    with connect() as c:
        model = c.set_visibility(model_id, "private" if private else "public")
        out.print(f"{model['id']} is {model['visibility']}")


def sample(
    model_id: str,
    primer: Annotated[
        Path | None,
        typer.Option(help="a MIDI file to continue (a recording for an audio-vq model)"),
    ] = None,
    primer_file_id: Annotated[
        str | None, typer.Option(help="a stored MIDI file (or recording) to continue")
    ] = None,
    from_sample: Annotated[
        str | None,
        typer.Option(
            help="continue one of your samples (of any model); the new samples record it as "
            "their parent (see `cadenza samples lineage`)"
        ),
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
    max_seconds: Annotated[
        float | None, typer.Option(help="stop once the output lasts this long (audio: its length)")
    ] = None,
    max_copied_fraction: Annotated[
        float | None,
        typer.Option(
            help="copy check: re-sample a variation whose share of 8-note n-grams found in the "
            "training data is above this (0..1); the sample's meta.novelty says how it went"
        ),
    ] = None,
    control: Annotated[
        list[str] | None,
        typer.Option(
            help="an attribute control NAME=VALUE (repeatable): note_density=6, key=Dm, "
            "pitch_range=[55,79], note_density=[4,8,12] per bar (see the model's capabilities)"
        ),
    ] = None,
    tags: Annotated[str | None, typer.Option(help="style tags, comma-separated")] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            help="int8: decode with the model's int8 copy (about 2x faster at batch 1 on CPU, "
            "probabilities change slightly); none: as trained (the default)"
        ),
    ] = None,
    options: Annotated[
        str,
        typer.Option(
            help='JSON of any other sample fields, e.g. \'{"repetition_penalty": 1.2, '
            '"include_primer": false}\' (see POST /v1/models/{id}/samples)'
        ),
    ] = "{}",
    output: Annotated[Path, typer.Option("-o", "--output")] = Path("samples"),
    source: Annotated[
        Path | None,
        typer.Option(help="a MIDI file to edit with --infill-bars or --accompany (uploaded)"),
    ] = None,
    source_file_id: Annotated[str | None, typer.Option(help="a stored MIDI file to edit")] = None,
    source_sample: Annotated[str | None, typer.Option(help="one of your samples to edit")] = None,
    infill_bars: Annotated[
        str | None,
        typer.Option(help="rewrite these bars of the source (1-based, inclusive), e.g. 3-4"),
    ] = None,
    infill_tracks: Annotated[
        str | None, typer.Option(help="with --infill-bars: only these tracks (0-based), e.g. 0,2")
    ] = None,
    accompany: Annotated[
        str | None,
        typer.Option(help="add tracks to the source: GM programs and/or drums, e.g. 33,drums"),
    ] = None,
) -> None:
    """Generate N variations and write their MIDI files to OUTPUT (an audio-vq model's: a WAV
    and a spectrogram PNG each).

    With --infill-bars or --accompany (and --source, --source-file-id or --source-sample) the
    model edits a piece instead of continuing one: it needs a model trained on a `multitrack`
    corpus (`cadenza models show` lists its capabilities.modes)."""
    edit = edit_options(infill_bars, infill_tracks, accompany)
    with connect() as c:
        if source is not None:
            source_file_id = c.upload(str(dataset_id or _model_dataset(c, model_id)), [source])[0][
                "id"
            ]
        if edit:
            edit |= {"source_file_id": source_file_id, "source_sample_id": source_sample}
        elif source_file_id or source_sample:
            console.print("[red]error[/] a source is edited with --infill-bars or --accompany")
            raise typer.Exit(2)
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
            "primer_sample_id": from_sample,
            "primer_bars": primer_bars,
            "primer_seconds": primer_seconds,
            "max_bars": max_bars,
            "max_seconds": max_seconds,
            **edit,
            **(
                {"max_copied_fraction": max_copied_fraction}
                if max_copied_fraction is not None
                else {}
            ),
            **_json_option("options", options),
        }
        if control:
            opts["controls"] = _controls_option(control)
        if tags:
            opts["tags"] = _list_option(tags)
        if quantize is not None:
            opts["quantize"] = quantize
        job = follow(c, c.sample(model_id, **opts), "sample")
        for sid in job["sample_ids"]:
            if c.get(f"/v1/samples/{sid}")["meta"].get("kind") == "audio":  # an audio-vq model's
                path = c.download(f"/v1/samples/{sid}/audio?format=wav", output / f"{sid}.wav")
                out.print(str(path))
                path = c.download(f"/v1/samples/{sid}/pianoroll.png", output / f"{sid}.png")
            else:
                path = c.download(f"/v1/samples/{sid}/midi", output / f"{sid}.mid")
            out.print(str(path))


def _model_dataset(c: Any, model_id: str) -> str:
    """The dataset of a model's corpus, where an uploaded source goes (exit 2 when gone)."""
    model = c.get(f"/v1/models/{model_id}")
    dataset_id = c.get(f"/v1/corpora/{model['corpus_id']}")["dataset_id"]
    if not dataset_id:
        console.print("[red]error[/] the model's dataset was deleted: pass --dataset-id")
        raise typer.Exit(2)
    return str(dataset_id)


def edit_options(
    infill_bars: str | None, infill_tracks: str | None, accompany: str | None
) -> dict[str, Any]:
    """The request fields of --infill-bars/--infill-tracks or --accompany ({} for neither)."""
    if infill_bars and accompany:
        console.print("[red]error[/] --infill-bars or --accompany, not both")
        raise typer.Exit(2)
    try:
        if infill_bars:
            parts = [int(x) for x in infill_bars.split("-")]
            spec: dict[str, Any] = {"bars": [parts[0], parts[-1]]}
            if infill_tracks:
                spec["tracks"] = [int(x) for x in infill_tracks.split(",")]
            return {"mode": "infill", "infill": spec}
        if accompany:
            items = [x.strip() for x in accompany.split(",") if x.strip()]
            programs = [int(x) for x in items if x != "drums"]
            return {
                "mode": "accompany",
                "accompany": {"programs": programs, "drums": "drums" in items},
            }
    except ValueError:
        console.print("[red]error[/] --infill-bars 3-4, --infill-tracks 0,2, --accompany 33,drums")
        raise typer.Exit(2) from None
    if infill_tracks:
        console.print("[red]error[/] --infill-tracks goes with --infill-bars")
        raise typer.Exit(2)
    return {}


def continue_(
    model_id: str,
    midi: Annotated[Path, typer.Argument(help="the MIDI file to continue", exists=True)],
    output: Annotated[Path | None, typer.Option("-o", "--output")] = None,
    primer_bars: int | None = None,
    primer_seconds: float | None = None,
    n: Annotated[int, typer.Option("-n", "--n", help="variations (2 or more: a zip)")] = 1,
    max_new_tokens: int = 256,
    max_bars: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = None,
    wait: Annotated[float, typer.Option(help="seconds the API waits before answering")] = 60.0,
    options: Annotated[
        str,
        typer.Option(help="JSON of any other sampling fields, e.g. '{\"include_primer\": false}'"),
    ] = "{}",
) -> None:
    """MIDI in, MIDI out: send MIDI to the model and save its continuation (one request;
    when it takes longer than --wait, the job is followed and its MIDI downloaded)."""
    opts: dict[str, Any] = {
        "primer_bars": primer_bars,
        "primer_seconds": primer_seconds,
        "n": n,
        "max_new_tokens": max_new_tokens,
        "max_bars": max_bars,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
        "seed": seed,
        **_json_option("options", options),
    }
    with connect() as c:
        r = c.continue_midi(model_id, midi.read_bytes(), wait=wait, **opts)
        if r.status_code == 202:
            job = follow(c, r.json(), "continue")
            ids = job["sample_ids"]
            if len(ids) == 1:
                dest = output or midi.with_name(f"{midi.stem}-{ids[0]}.mid")
                out.print(str(c.download(f"/v1/samples/{ids[0]}/midi", dest)))
                return
            folder = output or midi.with_name(f"{midi.stem}-continued")
            for sid in ids:
                out.print(str(c.download(f"/v1/samples/{sid}/midi", folder / f"{sid}.mid")))
            return
        ids = r.headers["x-cadenza-sample-ids"].split(",")
        suffix = ".mid" if r.headers["content-type"] == "audio/midi" else ".zip"
        dest = output or midi.with_name(
            f"{midi.stem}-{ids[0] if len(ids) == 1 else 'continued'}{suffix}"
        )
        with atomic_path(dest) as tmp:
            tmp.write_bytes(r.content)
        out.print(str(dest))


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


@samples_app.command("show")
def samples_show(sample_id: str) -> None:
    """A sample's parameters, length, metrics and parent, as JSON."""
    with connect() as c:
        print_json(c.get(f"/v1/samples/{sample_id}"))


@samples_app.command("lineage")
def samples_lineage(
    sample_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON instead")] = False,
) -> None:
    """The samples SAMPLE_ID grew from (each continued with --from-sample), oldest first."""
    with connect() as c:
        lineage = c.get(f"/v1/samples/{sample_id}/lineage")
    if as_json:
        print_json(lineage)
        return
    if lineage["truncated"]:
        console.print("[yellow]the chain goes on before the first sample shown[/]")
    # Plain lines, not a table: a table narrows columns to the terminal and cuts the ids.
    out.print(f"{'sample':32}  {'model':32}  {'created (UTC)':19}  notes  seconds", highlight=False)
    for s in lineage["samples"]:
        created = s["created_at"][:19].replace("T", " ")
        out.print(
            f"{s['id']:32}  {s['model_id']:32}  {created:19}  {s['num_notes']:>5}  "
            f"{s['duration_s']:>7.1f}",
            highlight=False,
        )


@samples_app.command("delete")
def samples_delete(sample_id: str) -> None:
    """Delete a sample, its MIDI and renderings (the samples that continued it stay)."""
    _delete(f"/v1/samples/{sample_id}")


@jobs_app.command("delete")
def jobs_delete(job_id: str) -> None:
    """Delete a finished job and its events (cancel a queued or running one first)."""
    _delete(f"/v1/jobs/{job_id}")
