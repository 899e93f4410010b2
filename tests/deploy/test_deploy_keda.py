"""Cluster scaling: KEDA objects against KEDA's CRD schema and wired to what the app does,
the API's HPA, the Ingress's upload and SSE settings, and `cadenza k8s train-job`'s output."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from fastapi.testclient import TestClient

from cadenza.cli.k8s import RDZV_PORT, TrainJobSpec, train_job_manifest
from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza.jobs.queue import QUEUES, make_celery
from cadenza.jobs.registry import JOB_TYPES
from cadenza.jobs.state import create_job

from .helpers import KEDA_OVERLAYS, KUSTOMIZATIONS, ROOT, render_train_job, train_jobs

FIXTURES = ROOT / "tests" / "fixtures" / "keda"
Doc = dict[str, Any]
# Worker concurrency of each queue (`--concurrency` of its Deployment).
CONCURRENCY = {"cpu": 2, "gpu": 1}


def _crd_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((FIXTURES / name).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served")]
    return dict(version["schema"]["openAPIV3Schema"])


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as the API server prunes/rejects them."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out:
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validator(crd_file: str) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = _strict(_crd_schema(crd_file))
    return jsonschema.Draft7Validator(schema)


VALIDATORS = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _keda_docs(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["apiVersion"].startswith("keda.sh/")]


# ---------------------------------------------------------------------------------------------
# KEDA


@pytest.mark.parametrize("path", KEDA_OVERLAYS)
def test_keda_objects_match_the_crd_schema(rendered: dict[str, list[Doc]], path: str) -> None:
    docs = _keda_docs(rendered[path])
    assert {d["kind"] for d in docs} == set(VALIDATORS)
    for doc in docs:
        assert doc["apiVersion"] == "keda.sh/v1alpha1"
        errors = sorted(_validator(VALIDATORS[doc["kind"]]).iter_errors(doc), key=str)
        assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_crd_schema_catches_mistakes() -> None:
    """The validator in use rejects a typo'd field, a wrong type and a bad enum (so it can fail)."""
    so = yaml.safe_load(
        (ROOT / "k8s/components/autoscaling/worker-gpu-scaledobject.yaml").read_text()
    )
    v = _validator(VALIDATORS["ScaledObject"])
    assert not list(v.iter_errors(so))
    for path, value in (
        (("spec", "cooldownPeriodSeconds"), 5),
        (("spec", "minReplicaCount"), "zero"),
        (("spec", "fallback", "behavior"), "sometimes"),
    ):
        bad = yaml.safe_load(yaml.safe_dump(so))
        bad[path[0]].setdefault(path[1], {})
        if len(path) == 2:
            bad[path[0]][path[1]] = value
        else:
            bad[path[0]][path[1]][path[2]] = value
        assert list(v.iter_errors(bad)), path


def test_keda_is_optional(rendered: dict[str, list[Doc]]) -> None:
    """Only the autoscaling overlays need KEDA: a cluster without it applies the others."""
    for path in KUSTOMIZATIONS:
        if path not in KEDA_OVERLAYS:
            assert not _keda_docs(rendered[path]), path


@pytest.mark.parametrize("path", KEDA_OVERLAYS)
def test_scaled_objects_follow_queue_demand(rendered: dict[str, list[Doc]], path: str) -> None:
    """Per queue: the Celery list of that name (Redis DB of the broker URL) plus the jobs
    running on it (the API's /metrics through its Service in this namespace), one worker per
    `--concurrency` jobs; GPU workers scale to zero, CPU workers keep one (the reconciler)."""
    docs = rendered[path]
    namespace = _find(docs, "Deployment", "cadenza-api")["metadata"]["namespace"]
    app = make_celery(Settings(broker_url="redis://localhost:6379/0"))
    celery_lists = {q.name for q in app.conf.task_queues}
    assert celery_lists == set(QUEUES)
    for queue in QUEUES:
        name = f"cadenza-worker-{queue}"
        so = _find(docs, "ScaledObject", name)
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == name
        worker = _find(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        assert worker["args"][worker["args"].index("--queues") + 1] == queue
        per_pod = int(worker["args"][worker["args"].index("--concurrency") + 1])
        assert per_pod == CONCURRENCY[queue]
        triggers = {t["name"]: t for t in spec["triggers"]}
        redis, running = triggers["queued"], triggers["running"]
        assert redis["type"] == "redis" and redis["metadata"]["listName"] == queue
        assert redis["metadata"]["databaseIndex"] == "0"  # redis://…/0 in CADENZA_BROKER_URL
        assert redis["authenticationRef"]["name"] == "cadenza-redis"
        _find(docs, "TriggerAuthentication", "cadenza-redis")
        assert running["type"] == "metrics-api" and running["metadata"]["format"] == "prometheus"
        url = urlsplit(running["metadata"]["url"])
        service, ns = url.hostname.split(".")[:2]  # type: ignore[union-attr]
        assert (service, ns) == ("cadenza-api", namespace) and url.path == "/metrics"
        _find(docs, "Service", service)
        assert running["metadata"]["valueLocation"] == (
            f'cadenza_queue_jobs{{queue="{queue}",state="running"}}'
        )
        modifiers = spec["advanced"]["scalingModifiers"]
        assert modifiers["formula"] == "queued + running"
        assert int(modifiers["target"]) == per_pod
        assert int(redis["metadata"]["listLength"]) == per_pod
        assert spec["minReplicaCount"] == (0 if queue == "gpu" else 1)
        assert spec["maxReplicaCount"] >= 1
        assert spec["fallback"]["behavior"].startswith("currentReplicas")


@pytest.mark.parametrize("path", KEDA_OVERLAYS)
def test_scaling_down_never_cuts_a_job_short(rendered: dict[str, list[Doc]], path: str) -> None:
    """A pod KEDA removes gets SIGTERM and drains: the grace period must outlast a training
    step plus its checkpoint (GPU) and a tokenize job (CPU); scale-down is slow and gradual."""
    docs = rendered[path]
    for queue, grace in (("cpu", 600), ("gpu", 600)):
        name = f"cadenza-worker-{queue}"
        pod = _find(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] >= grace, name
        spec = _find(docs, "ScaledObject", name)["spec"]
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] >= 300
        assert all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"])
        assert spec["cooldownPeriod"] >= 300


@pytest.mark.parametrize("path", KEDA_OVERLAYS)
def test_trigger_authentication_matches_the_broker_url(
    rendered: dict[str, list[Doc]], path: str
) -> None:
    """REDIS_ADDRESS / REDIS_PASSWORD are the host:port and password of CADENZA_BROKER_URL
    (where this repository holds the secret; prod's comes from outside git)."""
    docs = rendered[path]
    auth = _find(docs, "TriggerAuthentication", "cadenza-redis")["spec"]
    (address,) = auth["configMapTargetRef"]
    (password,) = auth["secretTargetRef"]
    assert (address["parameter"], password["parameter"]) == ("address", "password")
    config = _find(docs, "ConfigMap", address["name"])["data"]
    assert address["key"] in config
    secrets = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == password["name"]
    ]
    if path.startswith("overlays/prod"):
        assert not secrets
        return
    data = {**secrets[0].get("data", {}), **secrets[0].get("stringData", {})}
    broker = urlsplit(data["CADENZA_BROKER_URL"])
    assert config[address["key"]] == f"{broker.hostname}:{broker.port}"
    assert data[password["key"]] == broker.password


def test_metrics_report_every_queue_for_keda(tmp_path: Path) -> None:
    """The line each `running` trigger reads exists with zeros (KEDA fails on a missing
    one), and counts running jobs of the queue's types."""
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as s:
        owner, _ = create_api_key(session=s, owner_name="ops")
    client = TestClient(_app(settings))

    def value(queue: str, state: str) -> float:
        text = client.get("/metrics").text
        m = re.search(rf'^cadenza_queue_jobs{{queue="{queue}",state="{state}"}} (\S+)$', text, re.M)
        assert m, text
        return float(m.group(1))

    for queue in QUEUES:
        assert value(queue, "running") == 0 and value(queue, "queued") == 0
    with session_scope(settings.resolved_database_url) as s:
        for name in JOB_TYPES:
            create_job(s, owner_id=owner.id, type=name, params={}).state = "running"
    per_queue = {q: sum(t.queue == q for t in JOB_TYPES.values()) for q in QUEUES}
    for queue in QUEUES:
        assert value(queue, "running") == per_queue[queue]


def _app(settings: Settings) -> Any:
    from cadenza_api.app import create_app

    return create_app(settings)


# ---------------------------------------------------------------------------------------------
# The API: HPA and Ingress


def test_api_hpa_scales_on_cpu_with_behavior(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        spec = _find(rendered[path], "HorizontalPodAutoscaler", "cadenza-api")["spec"]
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"]["type"] == "Utilization"
        api = _find(rendered[path], "Deployment", "cadenza-api")
        assert api["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert spec["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == 0


def _bytes(nginx_size: str) -> int:
    m = re.fullmatch(r"(\d+)([kmg]?)", nginx_size.lower())
    assert m, nginx_size
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


def test_ingress_allows_the_upload_cap_and_sse(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        docs = rendered[path]
        ingress = _find(docs, "Ingress", "cadenza-api")
        notes = ingress["metadata"]["annotations"]
        config = _find(docs, "ConfigMap", "cadenza-config")["data"]
        cap = int(
            config.get(
                "CADENZA_MAX_UPLOAD_BYTES", Settings.model_fields["max_upload_bytes"].default
            )
        )
        assert _bytes(notes["nginx.ingress.kubernetes.io/proxy-body-size"]) == cap, path
        assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
        assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(notes[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
        (rule,) = ingress["spec"]["rules"]
        for route in rule["http"]["paths"]:
            backend = route["backend"]["service"]
            service = _find(docs, "Service", backend["name"])
            assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def _routed(paths: list[Doc], url: str) -> bool:
    return any(
        url == p["path"] or (p["pathType"] == "Prefix" and url.startswith(p["path"] + "/"))
        for p in paths
    )


def test_ingress_routes_every_api_path_but_metrics(
    rendered: dict[str, list[Doc]], tmp_path: Path
) -> None:
    """Every documented route (and the docs pages) is reachable from outside; /metrics (job
    counts, read by Prometheus and KEDA in the cluster) is not."""
    spec = TestClient(_app(Settings(data_dir=tmp_path))).get("/openapi.json").json()
    (rule,) = _find(rendered["base"], "Ingress", "cadenza-api")["spec"]["rules"]
    paths = rule["http"]["paths"]
    for url in [*spec["paths"], "/openapi.json", "/docs", "/redoc"]:
        if url != "/metrics":
            assert _routed(paths, url), url
    assert not _routed(paths, "/metrics")


# ---------------------------------------------------------------------------------------------
# `cadenza k8s train-job`


@pytest.mark.parametrize("shape", list(train_jobs()))
def test_train_job_manifest(shape: str) -> None:
    gpus, nodes = map(int, shape.split("x"))
    docs = train_jobs()[shape]
    kinds = [d["kind"] for d in docs]
    job = _find(docs, "Job", "cadenza-train-j42")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["cadenza.dev/job-id"] == "j42"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == gpus
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["JOB_ID"] == "j42"
    if gpus > 1 or nodes > 1:  # torchrun lets its workers drain within the pod's grace
        shutdown = int(env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"])
        assert 300 <= shutdown < pod["terminationGracePeriodSeconds"]
    if nodes == 1:
        assert kinds == ["Job"] and "completionMode" not in spec
        if gpus == 1:
            assert c["args"] == ["train-job", "$(JOB_ID)"] and "command" not in c
        else:
            assert c["command"] == ["torchrun"] and env["GPUS"] == str(gpus)
            assert "--nproc_per_node=$(GPUS)" in c["args"] and "--standalone" in c["args"]
            assert c["args"][-3:] == ["-m", "cadenza.jobs.train_job", "$(JOB_ID)"]
        return
    assert sorted(kinds) == ["Job", "NetworkPolicy", "PodDisruptionBudget", "Service"]
    budget = _find(docs, "PodDisruptionBudget", "cadenza-train-j42")["spec"]
    assert budget["maxUnavailable"] == 0
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == nodes
    service = _find(docs, "Service", "cadenza-train-j42")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pod["subdomain"] == service["metadata"]["name"]
    (port,) = service["spec"]["ports"]
    assert port["port"] == RDZV_PORT and port["targetPort"] in {p["name"] for p in c["ports"]}
    policy = _find(docs, "NetworkPolicy", "cadenza-train-j42")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["ingress"][0]["from"][0]["podSelector"] == policy["podSelector"]
    # torchrun: M nodes of N processes, node rank = pod index, c10d at pod 0's DNS name.
    assert env["NNODES"] == str(nodes) and env["GPUS"] == str(gpus)
    assert env["RDZV_HOST"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert env["RDZV_PORT"] == str(RDZV_PORT)
    assert c["command"] == ["sh", "-c"]
    (script,) = c["args"]
    for part in (
        "exec torchrun --nnodes=$NNODES --nproc_per_node=$GPUS",
        "--node_rank=$JOB_COMPLETION_INDEX",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=$RDZV_HOST:$RDZV_PORT",
        "--rdzv_id=$JOB_ID",
        '-m cadenza.jobs.train_job "$JOB_ID"',
    ):
        assert part in script
    assert re.findall(r"\$\{?([A-Z_]+)", script) and set(
        re.findall(r"\$\{?([A-Z_]+)", script)
    ) <= set(env) | {"JOB_COMPLETION_INDEX"}
    # The Indexed Job names pods <job>-<index>: a DNS label for every index.
    assert len(f"{job['metadata']['name']}-{nodes - 1}") <= 63


def test_train_job_options() -> None:
    docs = render_train_job(
        "J_42",
        "--gpus", "2",
        "--nodes", "2",
        "--namespace", "ml",
        "--image", "registry.example.com/cadenza/worker-gpu:1.2.3",
        "--config-map", "cfg",
        "--secret", "sec",
        "--service-account", "trainer",
        "--gpu-resource", "amd.com/gpu",
        "--node-selector", "pool=a100",
        "--toleration", "dedicated=ml:NoExecute",
        "--cpu", "12",
        "--memory", "96Gi",
    )  # fmt: skip
    job = _find(docs, "Job", "cadenza-train-j-42")
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    assert c["image"] == "registry.example.com/cadenza/worker-gpu:1.2.3"
    assert c["envFrom"] == [{"configMapRef": {"name": "cfg"}}, {"secretRef": {"name": "sec"}}]
    assert pod["serviceAccountName"] == "trainer"
    assert c["resources"]["limits"]["amd.com/gpu"] == 2 and "nvidia.com/gpu" not in str(c)
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"}
    ]
    assert c["resources"]["requests"]["cpu"] == "12" and c["resources"]["limits"]["cpu"] == "24"
    assert c["resources"]["limits"]["memory"] == "192Gi"
    assert {"name": "JOB_ID", "value": "J_42"} in c["env"]


@pytest.mark.parametrize(
    "args",
    [["a b"], ["x", "--gpus", "0"], ["x", "--nodes", "two"], ["x" * 64], [], ["x", "--cpu", "lots"],
     ["x", "--toleration", "k:Sometimes"], ["x", "--namespace", "Not_A_Label"], ["_x"],
     ["x", "--name", "1abc"]],
)  # fmt: skip
def test_train_job_refuses_bad_input(args: list[str]) -> None:
    from typer.testing import CliRunner

    from cadenza.cli import app

    result = CliRunner().invoke(app, ["k8s", "train-job", "--no-lookup", *args])
    assert result.exit_code == 2, result.output


def test_train_job_spec_is_the_one_renderer() -> None:
    """The CLI prints exactly what the library builds (one place for the manifest)."""
    cli = render_train_job("abc", "--gpus", "2", "--nodes", "3")
    assert cli == train_job_manifest(TrainJobSpec(job_id="abc", gpus=2, nodes=3))


def test_train_job_without_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `cadenza` command does not depend on PyYAML: without it the documents are JSON
    (YAML too), which kubectl reads the same."""
    from cadenza.cli.k8s import dump

    docs = train_job_manifest(TrainJobSpec(job_id="abc", gpus=2, nodes=2))
    monkeypatch.setitem(sys.modules, "yaml", None)  # `import yaml` raises ImportError
    text = dump(docs)
    monkeypatch.undo()
    assert text.startswith("---\n{")
    assert [d for d in yaml.safe_load_all(text) if d] == docs
