"""The `cadenza` command: run the services, manage keys, and drive the REST API.

Server-side commands (`server`: serve, api, worker, migrate, keys, train-job, reconcile,
sweep) read the same `CADENZA_*` settings as the services; client commands (`client`:
datasets, corpora, models, samples, sample, play, show, jobs) talk HTTP to `CADENZA_API_URL`
with `CADENZA_API_KEY`; `demo` runs the whole path on the embedded default; `k8s` prints
Kubernetes manifests (`k8s train-job`: one training run on N GPUs x M nodes).
"""

from __future__ import annotations

import typer

from cadenza.cli import client, demo, k8s, server

app = typer.Typer(help="Cadenza: music-generation models from your own audio and MIDI.")
app.add_typer(server.keys_app, name="keys")
app.add_typer(client.datasets_app, name="datasets")
app.add_typer(client.corpora_app, name="corpora")
app.add_typer(client.models_app, name="models")
app.add_typer(client.jobs_app, name="jobs")
app.add_typer(client.samples_app, name="samples")
app.add_typer(k8s.k8s_app, name="k8s")
app.command()(server.migrate)
app.command()(server.api)
app.command()(server.worker)
app.command()(server.serve)
app.command("worker-alive")(server.worker_alive)
app.command("train-job")(server.train_job)
app.command()(server.reconcile)
app.command()(server.sweep)
app.command()(client.sample)
app.command("continue")(client.continue_)
app.command()(client.play)
app.command()(client.show)
app.command()(demo.demo)


def main() -> None:
    app()
