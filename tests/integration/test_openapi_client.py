"""A client generated from the served `/openapi.json` does the whole story against a real
`cadenza serve` and worker: upload → corpus → model → sample → MIDI download, with the key sent
as the declared Bearer scheme and errors parsed into the declared `Error` model.

The generator is openapi-python-client (the `dev` extra), run the way a user runs it, with the
repository's configuration file (docs/openapi-python-client.yaml); its output must carry no
warning, since a warning means a route the client cannot call or a body it cannot read."""

from __future__ import annotations

import importlib
import io
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import httpx
import pytest

pytestmark = pytest.mark.integration

CONFIG = Path(__file__).parents[2] / "docs" / "openapi-python-client.yaml"
PACKAGE = "cadenza_generated_client"


class _Stack(Protocol):  # what this test reads of the stack fixture
    api_url: str
    api_key: str


def _generator() -> str:
    """The generator next to this interpreter (the dev extra), else on PATH."""
    beside = Path(sys.executable).with_name("openapi-python-client")
    found = str(beside) if beside.exists() else shutil.which("openapi-python-client")
    if found is None:
        pytest.skip("openapi-python-client is not installed (pip install 'cadenza[dev]')")
    return found


@pytest.fixture
def generated(
    embedded_stack: _Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModuleType]:
    """The client package generated from the running API's document, importable."""
    spec = tmp_path / "openapi.json"
    spec.write_bytes(httpx.get(f"{embedded_stack.api_url}/openapi.json").raise_for_status().content)
    generator = _generator()
    # Its post-generation hooks run ruff, installed beside it.
    path = os.pathsep.join([str(Path(generator).parent), os.environ.get("PATH", "")])
    run = subprocess.run(
        [generator, "generate", "--path", str(spec), "--meta", "none"]
        + ["--output-path", str(tmp_path / PACKAGE), "--config", str(CONFIG)],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    # Only the progress line: any warning means a route or body the client cannot use.
    assert output.split() == ["Generating", str(tmp_path / PACKAGE)], output
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(PACKAGE)
    for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
        del sys.modules[name]


def _api(package: ModuleType, tag: str, operation_id: str) -> Any:
    return importlib.import_module(f"{package.__name__}.api.{tag}.{operation_id}")


def _finished(package: ModuleType, client: Any, job: Any, timeout: float = 90) -> Any:
    """Poll `jobs_get` (the generated call) until the job ends; it must succeed."""
    jobs_get = _api(package, "jobs", "jobs_get")
    deadline = time.monotonic() + timeout
    while job.state not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job {job.id} still {job.state}"
        time.sleep(0.5)
        job = jobs_get.sync(job.id, client=client)
    assert job.state == "succeeded", (job.error, job.message)
    return job


def test_generated_client_does_the_whole_story(
    generated: ModuleType, embedded_stack: _Stack, chorales: list[Path]
) -> None:
    pkg = generated
    models = importlib.import_module(f"{pkg.__name__}.models")
    types = importlib.import_module(f"{pkg.__name__}.types")
    client = pkg.AuthenticatedClient(
        base_url=embedded_stack.api_url, token=embedded_stack.api_key, timeout=httpx.Timeout(60)
    )

    # The key is the declared Bearer scheme: without it, the declared Error body comes back.
    anonymous = pkg.Client(base_url=embedded_stack.api_url)
    denied = _api(pkg, "datasets", "datasets_list").sync(client=anonymous)
    assert isinstance(denied, models.Error) and denied.error.code == "unauthorized"

    ds = _api(pkg, "datasets", "datasets_create").sync(
        client=client, body=models.DatasetCreate(name="generated client")
    )
    assert isinstance(ds, models.DatasetOut), ds
    missing = _api(pkg, "datasets", "datasets_get").sync("0" * 32, client=client)
    assert isinstance(missing, models.Error) and missing.error.code == "not_found"

    # Three small chorales in one multipart request (the declared array of binary parts).
    parts = [
        types.File(payload=io.BytesIO(p.read_bytes()), file_name=p.name, mime_type="audio/midi")
        for p in chorales[:3]
    ]
    uploaded = _api(pkg, "datasets", "datasets_upload_files").sync(
        ds.id, client=client, body=models.DatasetsUploadFilesBody(files=parts)
    )
    assert isinstance(uploaded, models.FileList), uploaded
    assert [f.kind for f in uploaded.files] == ["midi"] * 3

    job = _api(pkg, "corpora", "corpora_create").sync(
        client=client, body=models.CorpusRequest(dataset_id=ds.id, preset="remi-colab", seed=1)
    )
    assert isinstance(job, models.JobOut) and job.state == "queued", job
    corpus_id = _finished(pkg, client, job).corpus_id

    train = models.ModelRequestTrain.from_dict(
        {"max_steps": 4, "eval_interval": 2, "batch_size": 2, "seq_len": 32}
    )
    job = _api(pkg, "models", "models_create").sync(
        client=client, body=models.ModelRequest(corpus_id=corpus_id, preset="tiny", train=train)
    )
    assert isinstance(job, models.JobOut), job
    model_id = _finished(pkg, client, job).model_id

    job = _api(pkg, "models", "models_create_samples").sync(
        model_id, client=client, body=models.SampleRequest(n=1, max_new_tokens=32, seed=7)
    )
    assert isinstance(job, models.JobOut), job
    (sample_id,) = _finished(pkg, client, job).sample_ids

    midi = _api(pkg, "samples", "samples_get_midi")
    response = midi.sync_detailed(sample_id, client=client)
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/midi"
    assert isinstance(response.parsed, types.File)
    assert response.parsed.payload.read()[:4] == b"MThd" == response.content[:4]
