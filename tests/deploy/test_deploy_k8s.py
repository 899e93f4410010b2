"""k8s/: kustomize renders, the Kubernetes schemas accept it, and the wiring is right."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .helpers import (
    DEPLOY,
    K8S,
    KUSTOMIZATIONS,
    ROOT,
    containers,
    find_tool,
    pod_specs,
    run,
    settings_env_names,
    train_jobs,
)

# Oldest and newest Kubernetes minor versions the manifests must be valid for.
K8S_VERSIONS = ("1.30.0", "1.37.0")
CADENZA_IMAGES = {"cadenza/api", "cadenza/worker-cpu", "cadenza/worker-gpu"}
GPU = "nvidia.com/gpu"
Doc = dict[str, Any]


def _find(docs: list[Doc], kind: str, name: str) -> Doc:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"].get("name") == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def _workloads(docs: list[Doc]) -> list[tuple[Doc, dict[str, Any]]]:
    return [(doc, pod) for doc in docs for pod in pod_specs(doc)]


def _image_repo(image: str) -> str:
    """cadenza/api from registry.example.com/cadenza/api:0.1.0."""
    name = image.split("@")[0]
    if ":" in name.split("/")[-1]:
        name = name.rsplit(":", 1)[0]
    return "/".join(name.split("/")[-2:])


def _is_cadenza(container: dict[str, Any]) -> bool:
    return _image_repo(container["image"]) in CADENZA_IMAGES


def _all_docs(rendered: dict[str, list[Doc]]) -> list[tuple[str, Doc]]:
    out = [(path, doc) for path, docs in rendered.items() for doc in docs]
    out += [(f"k8s train-job {shape}", doc) for shape, docs in train_jobs().items() for doc in docs]
    return out


# ---------------------------------------------------------------------------------------------
# Tools: kustomize (inside kubectl), Kubernetes JSON schemas, yamllint.


def test_every_kustomization_renders(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        assert rendered[path], f"{path} rendered nothing"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_kubernetes_schemas(rendered: dict[str, list[Doc]], version: str) -> None:
    """Strict validation: unknown fields and wrong types fail, as `kubectl --validate` would."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    errors = []
    for source, doc in _all_docs(rendered):
        if doc["apiVersion"].startswith("keda.sh/"):
            continue  # custom resources: checked against KEDA's CRD schema (test_deploy_keda.py)
        name = f"{source}: {doc['kind']}/{doc['metadata'].get('name') or doc['metadata']}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as e:
            errors.append(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            errors.append(f"{name}: {e.message}")
    assert not errors, "\n".join(errors)


def test_schema_validation_catches_mistakes() -> None:
    """The validator in use rejects a typo'd field and a wrong type (so it can fail)."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    doc = yaml.safe_load((K8S / "base" / "api-service.yaml").read_text())
    kv.validate(doc, K8S_VERSIONS[-1], strict=True)
    typo = json.loads(json.dumps(doc))
    typo["spec"]["selectr"] = typo["spec"].pop("selector")
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, K8S_VERSIONS[-1], strict=True)
    wrong = json.loads(json.dumps(doc))
    wrong["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong, K8S_VERSIONS[-1], strict=True)


def test_yamllint() -> None:
    yamllint = find_tool("yamllint", "yamllint==1.38.0")
    targets = ["docker-compose.yml", "k8s", "deploy"]
    result = run(
        [yamllint, "--strict", "-f", "parsable", "-c", str(DEPLOY / "yamllint.yaml"), *targets]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_config_rejects_bad_yaml(tmp_path: Path) -> None:
    yamllint = find_tool("yamllint", "yamllint==1.38.0")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: yes\nb:  [1,2]\nc: 1\nc: 2\n")
    result = run([yamllint, "--strict", "-c", str(DEPLOY / "yamllint.yaml"), str(bad)])
    assert result.returncode != 0
    assert "truthy" in result.stdout and "key-duplicates" in result.stdout


# ---------------------------------------------------------------------------------------------
# Semantics shared by every kustomization.


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_namespace(rendered: dict[str, list[Doc]], path: str) -> None:
    docs = rendered[path]
    namespaces = [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"]
    assert len(namespaces) == 1
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespaces[0], doc["metadata"]["name"]


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_pods_are_locked_down(rendered: dict[str, list[Doc]], path: str) -> None:
    """runAsNonRoot, no privilege escalation, no capabilities, requests and limits for all."""
    for doc, pod in _workloads(rendered[path]):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert pod.get("automountServiceAccountToken") is False, name
        pod_sc = pod.get("securityContext") or {}
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        for c in containers(pod):
            sc = c.get("securityContext") or {}
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, name
            assert sc.get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}/{c['name']}"
            for part in ("requests", "limits"):
                res = c.get("resources", {}).get(part, {})
                assert {"cpu", "memory"} <= set(res), f"{name}/{c['name']}: {part} {res}"
            if _is_cadenza(c):
                assert sc.get("readOnlyRootFilesystem") is True, f"{name}/{c['name']}"
                mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
                volumes = {v["name"]: v for v in pod.get("volumes", [])}
                assert "/tmp" in mounts and "emptyDir" in volumes[mounts["/tmp"]], name


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_references_resolve(rendered: dict[str, list[Doc]], path: str) -> None:
    """Services, HPAs and PDBs point at workloads that exist; env refs at existing objects."""
    docs = rendered[path]
    templates = [
        pod_doc["spec"]["template"]
        for pod_doc, _ in _workloads(docs)
        if "template" in pod_doc["spec"]
    ]
    pod_labels = [t["metadata"].get("labels", {}) for t in templates]
    for doc in docs:
        kind = doc["kind"]
        if kind == "Service":
            selector = doc["spec"]["selector"]
            matches = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
            assert matches, f"Service {doc['metadata']['name']} selects no pod"
            port_names = {
                p.get("name")
                for t in matches
                for c in t["spec"]["containers"]
                for p in c.get("ports", [])
            }
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                assert isinstance(target, int) or target in port_names, (doc, target)
        elif kind == "HorizontalPodAutoscaler":
            ref = doc["spec"]["scaleTargetRef"]
            target = _find(docs, ref["kind"], ref["name"])
            assert "replicas" not in target["spec"], "the HPA owns replicas; drop them"
            assert doc["spec"]["minReplicas"] <= doc["spec"]["maxReplicas"]
        elif kind == "ScaledObject":
            ref = doc["spec"]["scaleTargetRef"]
            target = _find(docs, ref.get("kind", "Deployment"), ref["name"])
            assert "replicas" not in target["spec"], "KEDA owns replicas; drop them"
        elif kind == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
            assert any(selector.items() <= labels.items() for labels in pod_labels), doc
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    external = {("Secret", "cadenza-secrets")} if path.startswith("overlays/prod") else set()
    for doc, pod in _workloads(docs):
        for c in containers(pod):
            for ref in c.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in ref:
                        assert (kind, ref[key]["name"]) in names | external, (doc, ref)
            for env in c.get("env", []):
                src = env.get("valueFrom", {})
                for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    if key in src:
                        target = _find(docs, kind, src[key]["name"])
                        data = {**target.get("data", {}), **target.get("stringData", {})}
                        assert src[key]["key"] in data, (doc["metadata"]["name"], src)
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names, volume


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_cadenza_env_names_are_read_by_the_app(rendered: dict[str, list[Doc]], path: str) -> None:
    known = settings_env_names()
    used: set[str] = set()
    for doc in rendered[path]:
        if doc["kind"] in {"ConfigMap", "Secret"} and doc["metadata"]["name"].startswith(
            "cadenza-"
        ):
            used |= {
                k
                for k in {**doc.get("data", {}), **doc.get("stringData", {})}
                if k.startswith("CADENZA_")
            }
        for _, pod in _workloads([doc]):
            used |= {
                e["name"]
                for c in containers(pod)
                for e in c.get("env", [])
                if e["name"].startswith("CADENZA_")
            }
    assert used, "no CADENZA_* variable found"
    assert used <= known, f"not read by cadenza.config.Settings: {sorted(used - known)}"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_images(rendered: dict[str, list[Doc]], compose_model: dict[str, Any], path: str) -> None:
    """Cadenza images are the ones docker-compose.yml builds here; others are pinned."""
    built = {
        s["image"].rsplit(":", 1)[0] for s in compose_model["services"].values() if "build" in s
    }
    assert built == CADENZA_IMAGES | {"cadenza/flower"}
    for doc, pod in _workloads(rendered[path]):
        for c in containers(pod):
            image = c["image"]
            tag = image.split("/")[-1].partition(":")[2]
            assert tag and tag != "latest", f"{doc['metadata']['name']}: {image} not pinned"
            if _image_repo(image).startswith("cadenza/"):
                assert _image_repo(image) in built, image


def test_worker_images_per_workload(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        docs = rendered[path]
        expect = {
            ("Deployment", "cadenza-api"): "cadenza/api",
            ("Job", "cadenza-migrate"): "cadenza/api",
            ("Deployment", "cadenza-worker-cpu"): "cadenza/worker-cpu",
            ("Deployment", "cadenza-worker-gpu"): "cadenza/worker-gpu",
        }
        for (kind, name), repo in expect.items():
            pod = next(pod_specs(_find(docs, kind, name)))
            assert _image_repo(pod["containers"][0]["image"]) == repo, (path, name)


# ---------------------------------------------------------------------------------------------
# The pieces the runtime contract names.


def test_api_probes_and_port(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        pod = next(pod_specs(_find(rendered[path], "Deployment", "cadenza-api")))
        api = pod["containers"][0]
        assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
        assert {"name": "http", "containerPort": 8000, "protocol": "TCP"} in api["ports"]
        assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert api[probe]["httpGet"]["port"] in {"http", 8000}
        hpa = _find(rendered[path], "HorizontalPodAutoscaler", "cadenza-api")
        assert hpa["spec"]["scaleTargetRef"]["name"] == "cadenza-api"
        _find(rendered[path], "PodDisruptionBudget", "cadenza-api")


def test_workers_run_their_queues(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        docs = rendered[path]
        for queue, concurrency in (("cpu", "2"), ("gpu", "1")):
            pod = next(pod_specs(_find(docs, "Deployment", f"cadenza-worker-{queue}")))
            worker = pod["containers"][0]
            assert worker["args"] == ["worker", "--queues", queue, "--concurrency", concurrency]
            assert worker["livenessProbe"]["exec"]["command"] == ["cadenza-worker-healthcheck"]
            _assert_heartbeat_probe(worker["livenessProbe"])


def _assert_heartbeat_probe(probe: dict[str, Any]) -> None:
    """The probe may fail only well after the worker's 10 s heartbeat: a busy worker passes."""
    assert probe["exec"]["command"] == ["cadenza-worker-healthcheck"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 90, probe
    assert probe["timeoutSeconds"] >= 10, probe


def test_training_jobs_have_the_heartbeat_liveness_probe() -> None:
    for docs in train_jobs().values():
        job = next(d for d in docs if d["kind"] == "Job")
        _assert_heartbeat_probe(job["spec"]["template"]["spec"]["containers"][0]["livenessProbe"])


def _assert_gpu_pod(pod: dict[str, Any], count: int = 1) -> None:
    c = pod["containers"][0]
    assert c["resources"]["limits"].get(GPU) == count, c["resources"]
    assert c["resources"]["requests"].get(GPU, count) == count, c["resources"]
    assert any(t.get("key") == GPU for t in pod.get("tolerations", [])), "no GPU toleration"
    assert pod.get("nodeSelector"), "GPU pods need a nodeSelector"
    assert any(m["mountPath"] == "/dev/shm" for m in c["volumeMounts"]), "no /dev/shm"


def test_gpu_worker_requests_a_gpu_and_cpu_worker_does_not(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        docs = rendered[path]
        _assert_gpu_pod(next(pod_specs(_find(docs, "Deployment", "cadenza-worker-gpu"))))
        for doc, pod in _workloads(docs):
            if doc["metadata"]["name"] != "cadenza-worker-gpu":
                for c in containers(pod):
                    assert GPU not in str(c.get("resources")), doc["metadata"]["name"]


def test_migrate_job(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        job = _find(rendered[path], "Job", "cadenza-migrate")
        pod = job["spec"]["template"]["spec"]
        assert pod["restartPolicy"] in {"Never", "OnFailure"}
        assert pod["containers"][0]["args"] == ["migrate"]
        assert job["spec"].get("ttlSecondsAfterFinished"), "re-apply needs the old Job gone"


def test_train_jobs_match_the_gpu_worker(rendered: dict[str, list[Doc]]) -> None:
    """Same image, settings, user, namespace and GPU placement as the worker that trains on
    the queue, so `cadenza k8s train-job`'s defaults need no option on a base install."""
    base = rendered["base"]
    worker = next(pod_specs(_find(base, "Deployment", "cadenza-worker-gpu")))
    tag = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())["images"]
    gpu_tag = next(i["newTag"] for i in tag if i["name"] == "cadenza/worker-gpu")
    namespace = _find(base, "Namespace", "cadenza")["metadata"]["name"]
    for shape, docs in train_jobs().items():
        for doc in docs:
            assert doc["metadata"]["namespace"] == namespace, shape
        job = next(d for d in docs if d["kind"] == "Job")
        pod = job["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["image"] == f"cadenza/worker-gpu:{gpu_tag}", shape
        assert pod["securityContext"] == worker["securityContext"]
        assert c["envFrom"] == worker["containers"][0]["envFrom"]
        assert c["securityContext"] == worker["containers"][0]["securityContext"]
        assert pod["tolerations"] == worker["tolerations"]
        assert pod["nodeSelector"] == worker["nodeSelector"]
        assert pod["serviceAccountName"] == worker["serviceAccountName"]
        assert pod["automountServiceAccountToken"] is False
        assert pod["terminationGracePeriodSeconds"] >= worker["terminationGracePeriodSeconds"]
        assert {v["name"] for v in pod["volumes"]} >= {"tmp", "data", "dshm"}


# ---------------------------------------------------------------------------------------------
# Secrets: examples are marked, dev is self-consistent, prod ships none.


def _secret_data(doc: Doc) -> dict[str, str]:
    return {**doc.get("stringData", {}), **doc.get("data", {})}


def test_base_secret_holds_only_marked_examples(rendered: dict[str, list[Doc]]) -> None:
    secret = _find(rendered["base"], "Secret", "cadenza-secrets")
    assert secret["metadata"]["annotations"]["cadenza.dev/example-values"] == "true"
    for key, value in _secret_data(secret).items():
        assert "EXAMPLE" in value, f"{key} is not marked as an example"


def test_prod_has_no_example_or_dev_secret(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overlays/prod"]
    assert not [d for d in docs if d["kind"] == "Secret"], "prod secrets come from outside git"
    text = yaml.safe_dump_all(docs)
    assert "EXAMPLE" not in text and "dev-only" not in text
    assert not [d for d in docs if d["kind"] == "StatefulSet"], "prod uses external datastores"
    config = _find(docs, "ConfigMap", "cadenza-config")["data"]
    assert config["CADENZA_ENV"] == "production"
    for name in ("cadenza-api", "cadenza-worker-cpu", "cadenza-worker-gpu"):
        image = next(pod_specs(_find(docs, "Deployment", name)))["containers"][0]["image"]
        registry = image.split("/")[0]
        assert "." in registry or ":" in registry, f"prod should pull {image} from a registry"


def test_dev_points_at_its_own_datastores(rendered: dict[str, list[Doc]]) -> None:
    docs = rendered["overlays/dev"]
    app = _secret_data(_find(docs, "Secret", "cadenza-secrets"))
    stores = _secret_data(_find(docs, "Secret", "cadenza-dev-datastores"))
    config = _find(docs, "ConfigMap", "cadenza-config")["data"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for value in app.values():
        assert "EXAMPLE" not in value, "dev must replace every example value"

    db = urlsplit(app["CADENZA_DATABASE_URL"])
    assert db.scheme == "postgresql+psycopg" and db.password == stores["POSTGRES_PASSWORD"]
    assert db.hostname in services and db.port == 5432
    _find(docs, "StatefulSet", db.hostname or "")

    broker = urlsplit(app["CADENZA_BROKER_URL"])
    assert broker.scheme == "redis" and broker.password == stores["REDIS_PASSWORD"]
    assert broker.hostname in services and broker.port == 6379
    _find(docs, "StatefulSet", broker.hostname or "")

    s3 = urlsplit(config["CADENZA_S3_ENDPOINT_URL"])
    assert s3.hostname in services and s3.port == 8333
    _find(docs, "StatefulSet", s3.hostname or "")
    identities = json.loads(stores["s3.json"])["identities"]
    bucket = urlsplit(config["CADENZA_STORAGE_URL"]).netloc
    creds = identities[0]["credentials"][0]
    assert creds == {
        "accessKey": app["CADENZA_S3_ACCESS_KEY_ID"],
        "secretKey": app["CADENZA_S3_SECRET_ACCESS_KEY"],
    }
    assert all(action.endswith(f":{bucket}") for action in identities[0]["actions"])
    job = _find(docs, "Job", "cadenza-seaweedfs-bucket")
    env = {
        e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["BUCKET"] == bucket
    assert env["MASTER"].split(":")[0] in services and env["FILER"].split(":")[0] in services


def test_dev_scales_down_and_prod_scales_up(rendered: dict[str, list[Doc]]) -> None:
    def replicas(path: str, name: str) -> int:
        return _find(rendered[path], "Deployment", name)["spec"]["replicas"]

    def hpa(path: str) -> tuple[int, int]:
        spec = _find(rendered[path], "HorizontalPodAutoscaler", "cadenza-api")["spec"]
        return spec["minReplicas"], spec["maxReplicas"]

    assert replicas("overlays/dev", "cadenza-worker-gpu") == 0
    assert replicas("overlays/prod", "cadenza-worker-cpu") > replicas("base", "cadenza-worker-cpu")
    assert hpa("overlays/dev")[1] < hpa("base")[1] < hpa("overlays/prod")[1]


def test_network_policies(rendered: dict[str, list[Doc]]) -> None:
    for path in KUSTOMIZATIONS:
        policies = [d for d in rendered[path] if d["kind"] == "NetworkPolicy"]
        deny = [
            p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
        ]
        assert deny, f"{path}: no default-deny ingress policy"
        api = [
            p
            for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/component")
            == "api"
        ]
        assert api and api[0]["spec"]["ingress"][0]["ports"][0]["port"] == 8000


def test_kustomizations_list_every_manifest() -> None:
    """A manifest left out of kustomization.yaml would silently never be deployed."""
    directories = [K8S / "base", *(K8S / p for p in KUSTOMIZATIONS[1:])]
    for directory in [*directories, K8S / "components" / "autoscaling"]:
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        listed = set(kustomization.get("resources", []))
        listed |= {p["path"] for p in kustomization.get("patches", []) if "path" in p}
        files = {p.relative_to(directory).as_posix() for p in directory.rglob("*.yaml")}
        files.discard("kustomization.yaml")
        assert files <= listed, f"{directory.relative_to(ROOT)}: not listed {files - listed}"


def test_image_repo_parsing() -> None:
    assert _image_repo("registry.example.com/cadenza/api:0.1.0") == "cadenza/api"
    assert _image_repo("cadenza/worker-gpu:0.1.0") == "cadenza/worker-gpu"
    assert _image_repo("localhost:5000/cadenza/api@sha256:abc") == "cadenza/api"
    assert re.fullmatch(r"cadenza/\S+", _image_repo("cadenza/api"))
