"""`cadenza k8s`: Kubernetes manifests an operator applies, rendered from options.

    cadenza k8s train-job JOB_ID --gpus 8 --nodes 4 | kubectl apply -f -

One training job (the `train` job's id, or its model's id) becomes one Kubernetes Job running
the same entry point as a GPU worker would: `cadenza train-job JOB_ID` on one GPU, else
`torchrun … -m cadenza.jobs.train_job JOB_ID` (global rank 0 claims the job in SQL, so a Job
and a worker never train it twice). On several nodes it is an Indexed Job (one pod per node,
`--node_rank` = the pod's index) with a headless Service whose DNS name for pod 0 is
torchrun's c10d rendezvous endpoint, a NetworkPolicy that lets the pods of that run reach
each other (the namespace denies ingress by default; NCCL uses ports of its own) and a
PodDisruptionBudget that makes node drains wait for the run. The c10d rendezvous assigns node
ranks in join order (torchrun says it ignores `--node_rank` then); nothing depends on which
pod holds rank 0.

Pure functions build the documents (torch-free, no cluster needed); the defaults are those of
`k8s/base` (namespace, image, config and secret names, service account, GPU node selector and
toleration, security context), which tests/deploy checks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from cadenza import __version__

k8s_app = typer.Typer(help="Kubernetes manifests for operators (print; pipe to kubectl apply).")

Doc = dict[str, Any]
RDZV_PORT = 29500
# Seconds between SIGTERM and SIGKILL for a training pod: a drain stops at the next step and
# saves a checkpoint (as the GPU worker Deployment allows).
GRACE_S = 600
# torchrun gives its workers only 30 s after SIGTERM by default, then kills them: let them
# drain for most of the pod's grace period, and still end before the kubelet's SIGKILL.
TORCHRUN_SHUTDOWN_S = GRACE_S - 30
# A DNS label (RFC 1123): what names, label values and hostnames accept.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?")
_IMAGE = re.compile(r"[A-Za-z0-9./:@_-]+")
# A label value (the job id): alphanumerics at both ends.
_LABEL_VALUE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
# The Job's and the Service's name: a DNS-1035 label (a Service name starts with a letter).
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class Toleration:
    """A pod toleration of the taint `key` (any value when `value` is None)."""

    key: str
    effect: str = "NoSchedule"
    value: str | None = None  # None: operator Exists

    def doc(self) -> Doc:
        out: Doc = {"key": self.key}
        out |= (
            {"operator": "Exists"}
            if self.value is None
            else {"operator": "Equal", "value": self.value}
        )
        return out | {"effect": self.effect}


@dataclass(frozen=True)
class TrainJobSpec:
    """Everything a training Job's manifest depends on; defaults match k8s/base."""

    job_id: str
    gpus: int = 1  # per node
    nodes: int = 1
    namespace: str = "cadenza"
    image: str = f"cadenza/worker-gpu:{__version__}"
    config_map: str = "cadenza-config"
    secret: str = "cadenza-secrets"
    service_account: str = "cadenza"
    gpu_resource: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}
    )
    tolerations: tuple[Toleration, ...] = (Toleration("nvidia.com/gpu"),)
    cpu: str | None = None  # request per node; default 4 per GPU (limit: twice)
    memory: str | None = None  # request per node; default 16Gi per GPU (limit: twice)
    backoff_limit: int = 3
    name: str | None = None

    def __post_init__(self) -> None:
        if not _LABEL_VALUE.fullmatch(self.job_id):
            raise ValueError(
                "the job id may only hold A-Z a-z 0-9 . _ - (at most 63, a letter or digit "
                "at both ends)"
            )
        if self.gpus < 1 or self.nodes < 1:
            raise ValueError("--gpus and --nodes must be at least 1")
        if not _LABEL.fullmatch(self.namespace) or len(self.namespace) > 63:
            raise ValueError(f"--namespace {self.namespace!r} is not a DNS label")
        if not _IMAGE.fullmatch(self.image):
            raise ValueError(f"--image {self.image!r} is not an image reference")
        for q, opt in ((self.cpu, "--cpu"), (self.memory, "--memory")):
            if q is not None and not _QUANTITY.fullmatch(q):
                raise ValueError(f"{opt} {q!r} is not a Kubernetes quantity (e.g. 8, 500m, 64Gi)")
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise ValueError(f"--name {self.name!r} is not a DNS label starting with a letter")
        if len(self.job_name) > 63 - len(f"-{self.nodes - 1}"):
            raise ValueError(f"--name {self.job_name!r} leaves no room for the pod index")

    @property
    def job_name(self) -> str:
        """Fixed (not generateName) so that `kubectl apply` is idempotent and pods have DNS."""
        if self.name:
            return self.name
        slug = re.sub(r"[^a-z0-9-]+", "-", self.job_id.lower()).strip("-")
        return f"cadenza-train-{slug}"[:56].rstrip("-")

    @property
    def rdzv_host(self) -> str:
        """Pod 0's stable name: `<job>-0.<service>` (Indexed Job hostname + subdomain)."""
        return f"{self.job_name}-0.{self.job_name}"


def _labels(spec: TrainJobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "cadenza",
        "app.kubernetes.io/component": "train",
        "app.kubernetes.io/part-of": "cadenza",
        "cadenza.dev/job-id": spec.job_id,
        "cadenza.dev/train-run": spec.job_name,
    }


def _selector(spec: TrainJobSpec) -> dict[str, str]:
    """The labels that pick exactly this run's pods (Service, NetworkPolicy)."""
    return {"app.kubernetes.io/component": "train", "cadenza.dev/train-run": spec.job_name}


def _command(spec: TrainJobSpec) -> tuple[list[str] | None, list[str]]:
    """(command, args) of the training container."""
    if spec.gpus == 1 and spec.nodes == 1:
        return None, ["train-job", "$(JOB_ID)"]  # the image's entry point: `cadenza`
    if spec.nodes == 1:
        return ["torchrun"], [
            "--standalone",
            "--nnodes=1",
            "--nproc_per_node=$(GPUS)",
            "-m",
            "cadenza.jobs.train_job",
            "$(JOB_ID)",
        ]
    # Pod 0 hosts the c10d store (is_host set rather than guessed from DNS, which may not
    # list pod 0 yet when it starts); join_timeout covers pods scheduled minutes apart.
    script = (
        'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then host=true; else host=false; fi; '
        "exec torchrun --nnodes=$NNODES --nproc_per_node=$GPUS "
        "--node_rank=$JOB_COMPLETION_INDEX --rdzv_backend=c10d "
        "--rdzv_endpoint=$RDZV_HOST:$RDZV_PORT --rdzv_id=$JOB_ID "
        '--rdzv_conf="is_host=$host,join_timeout=1800,read_timeout=600" '
        '-m cadenza.jobs.train_job "$JOB_ID"'
    )
    return ["sh", "-c"], [script]


def _env(spec: TrainJobSpec) -> list[Doc]:
    env = [{"name": "JOB_ID", "value": spec.job_id}]
    if spec.gpus > 1 or spec.nodes > 1:
        env.append({"name": "GPUS", "value": str(spec.gpus)})
        env.append({"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": str(TORCHRUN_SHUTDOWN_S)})
    if spec.nodes > 1:
        env += [
            {"name": "NNODES", "value": str(spec.nodes)},
            {"name": "RDZV_HOST", "value": spec.rdzv_host},
            {"name": "RDZV_PORT", "value": str(RDZV_PORT)},
        ]
    return env


def _pod(spec: TrainJobSpec) -> Doc:
    g = spec.gpus
    command, args = _command(spec)
    cpu = spec.cpu or str(4 * g)
    memory = spec.memory or f"{16 * g}Gi"
    container: Doc = {"name": "train", "image": spec.image, "imagePullPolicy": "IfNotPresent"}
    if command:
        container["command"] = command
    container["args"] = args
    container["env"] = _env(spec)
    container["envFrom"] = [
        {"configMapRef": {"name": spec.config_map}},
        {"secretRef": {"name": spec.secret}},
    ]
    if spec.nodes > 1:
        container["ports"] = [{"name": "c10d", "containerPort": RDZV_PORT, "protocol": "TCP"}]
    container["livenessProbe"] = {
        # The job's lease keeper touches the heartbeat file every few seconds while it trains.
        "exec": {"command": ["cadenza-worker-healthcheck"]},
        "initialDelaySeconds": 180,
        "periodSeconds": 30,
        "timeoutSeconds": 20,
        "failureThreshold": 4,
    }
    container["resources"] = {
        "requests": {
            "cpu": cpu,
            "memory": memory,
            "ephemeral-storage": "10Gi",
            spec.gpu_resource: g,
        },
        "limits": {
            "cpu": _double(cpu),
            "memory": _double(memory),
            "ephemeral-storage": f"{50 * g}Gi",
            spec.gpu_resource: g,
        },
    }
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    container["volumeMounts"] = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "data", "mountPath": "/var/lib/cadenza"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    pod: Doc = {
        "serviceAccountName": spec.service_account,
        "automountServiceAccountToken": False,
        # A new pod, possibly on another node, rather than restarting on a GPU that failed.
        "restartPolicy": "Never",
        # SIGTERM drains: training stops at its next step, saves a checkpoint and is requeued
        # without using an attempt (see the GPU worker Deployment).
        "terminationGracePeriodSeconds": GRACE_S,
    }
    if spec.nodes > 1:
        pod["subdomain"] = spec.job_name  # pod i is <job>-i.<service>
    if spec.node_selector:
        pod["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod["tolerations"] = [t.doc() for t in spec.tolerations]
    pod["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod["containers"] = [container]
    pod["volumes"] = [
        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "data", "emptyDir": {"sizeLimit": f"{30 * g}Gi"}},
        # NCCL and DataLoader workers exchange tensors through shared memory.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{4 * g}Gi"}},
    ]
    return pod


def _double(quantity: str) -> str:
    """Twice a Kubernetes quantity (the limit for a request)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(.*)", quantity)
    assert m is not None  # checked in TrainJobSpec
    number = float(m.group(1)) * 2
    text = str(int(number)) if number.is_integer() else str(number)
    return text + m.group(2)


def train_job_manifest(spec: TrainJobSpec) -> list[Doc]:
    """The documents of one training run: the Job, plus its Service, NetworkPolicy and
    PodDisruptionBudget on several nodes."""
    meta = {"name": spec.job_name, "namespace": spec.namespace, "labels": _labels(spec)}
    job_spec: Doc = {
        "backoffLimit": spec.backoff_limit * spec.nodes,
        "ttlSecondsAfterFinished": 86400,
    }
    if spec.nodes > 1:
        job_spec |= {
            "completionMode": "Indexed",
            "completions": spec.nodes,
            "parallelism": spec.nodes,
        }
    job_spec["template"] = {"metadata": {"labels": _labels(spec)}, "spec": _pod(spec)}
    job: Doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}
    if spec.nodes == 1:
        return [job]
    service: Doc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": dict(meta),
        "spec": {
            "clusterIP": "None",
            # Pods resolve each other before any is ready (there is no readiness probe).
            "publishNotReadyAddresses": True,
            "selector": _selector(spec),
            "ports": [{"name": "c10d", "port": RDZV_PORT, "targetPort": "c10d", "protocol": "TCP"}],
        },
    }
    policy: Doc = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": dict(meta),
        "spec": {
            "podSelector": {"matchLabels": _selector(spec)},
            "policyTypes": ["Ingress"],
            # The c10d store and NCCL's own ports, between this run's pods only.
            "ingress": [{"from": [{"podSelector": {"matchLabels": _selector(spec)}}]}],
        },
    }
    # Voluntary evictions (kubectl drain, the cluster autoscaler) wait for the run: a drained
    # pod that does not hold global rank 0 cannot stop the run cleanly (rank 0 decides when
    # every rank stops), so its loss would fail the job.
    budget: Doc = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": dict(meta),
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": _selector(spec)}},
    }
    return [service, policy, budget, job]


def dump(docs: list[Doc]) -> str:
    """Multi-document YAML for `kubectl apply -f -`.

    PyYAML is not a dependency of the `cadenza` command (it comes with the server extras):
    without it each document is written as JSON, which is YAML too.
    """
    try:
        import yaml
    except ImportError:
        return "".join(f"---\n{json.dumps(d, indent=2)}\n" for d in docs)
    return str(yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True))


# ---------------------------------------------------------------------------------------------
# Command line


def _pairs(values: list[str], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{v!r}: expected KEY=VALUE", param_hint=option)
        out[key] = value
    return out


def _toleration(text: str) -> Toleration:
    """KEY[=VALUE][:EFFECT]."""
    rest, _, effect = text.partition(":")
    key, sep, value = rest.partition("=")
    effects = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
    if not key or (effect and effect not in effects):
        raise typer.BadParameter(
            f"{text!r}: expected KEY[=VALUE][:{'|'.join(sorted(effects))}]",
            param_hint="--toleration",
        )
    return Toleration(key, effect or "NoSchedule", value if sep else None)


def resolve_job_id(ident: str) -> str:
    """The training job of `ident`: the id of a `train` job as is, or the job that trains the
    model `ident` (through the API at CADENZA_API_URL with CADENZA_API_KEY)."""
    from cadenza.cli.client import connect
    from cadenza.client import ApiFailure

    with connect() as c:
        try:
            job = c.job(ident)
        except ApiFailure as exc:
            if exc.status != 404:
                raise
            job = c.job(str(c.get(f"/v1/models/{ident}")["job_id"]))
    if job["type"] != "train":
        raise typer.BadParameter(f"job {job['id']} is a {job['type']} job, not a training job")
    if job["state"] != "queued":
        typer.echo(
            f"warning: job {job['id']} is {job['state']}; the Job will exit without training "
            "unless it is queued when the pod starts",
            err=True,
        )
    elif job.get("queue") != "cluster":
        typer.echo(
            f"warning: job {job['id']} is on the {job.get('queue')} queue, so a GPU worker may "
            "claim it before the Job's pods do; create it with cluster_job: true "
            "(cadenza models create ... --cluster-job) to hold it for the cluster",
            err=True,
        )
    return str(job["id"])


@k8s_app.command("train-job")
def train_job(
    model_or_job: Annotated[
        str, typer.Argument(metavar="MODEL_OR_JOB", help="a training job's id or its model's id")
    ],
    gpus: Annotated[int, typer.Option(min=1, help="GPUs per node (torchrun processes)")] = 1,
    nodes: Annotated[int, typer.Option(min=1, help="nodes (pods of an Indexed Job)")] = 1,
    namespace: Annotated[str, typer.Option(help="where Cadenza runs")] = "cadenza",
    image: Annotated[str, typer.Option(help="the worker-gpu image")] = (
        f"cadenza/worker-gpu:{__version__}"
    ),
    config_map: Annotated[str, typer.Option(help="ConfigMap of CADENZA_* settings")] = (
        "cadenza-config"
    ),
    secret: Annotated[str, typer.Option(help="Secret of CADENZA_* credentials")] = (
        "cadenza-secrets"
    ),
    service_account: Annotated[str, typer.Option(help="the pods' ServiceAccount")] = "cadenza",
    gpu_resource: Annotated[str, typer.Option(help="extended resource of one GPU")] = (
        "nvidia.com/gpu"
    ),
    node_selector: Annotated[
        list[str] | None,
        typer.Option(help="KEY=VALUE, repeatable (default nvidia.com/gpu.present=true)"),
    ] = None,
    toleration: Annotated[
        list[str] | None,
        typer.Option(help="KEY[=VALUE][:EFFECT], repeatable (default nvidia.com/gpu:NoSchedule)"),
    ] = None,
    cpu: Annotated[
        str | None, typer.Option(help="CPU request per node (default 4 per GPU; limit twice)")
    ] = None,
    memory: Annotated[
        str | None, typer.Option(help="memory request per node (default 16Gi per GPU; limit twice)")
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Job name (default cadenza-train-JOB_ID)")
    ] = None,
    lookup: Annotated[
        bool | None,
        typer.Option(
            "--lookup/--no-lookup",
            help="ask the API (CADENZA_API_URL, CADENZA_API_KEY) whether MODEL_OR_JOB is a "
            "model, and check the job; default: when CADENZA_API_KEY is set",
        ),
    ] = None,
) -> None:
    """Print the manifest of one training run for `kubectl apply -f -`.

    One node: a Job running `cadenza train-job` (or torchrun --standalone for several GPUs).
    Several nodes: a headless Service, a NetworkPolicy and an Indexed Job whose pods run
    torchrun with the c10d rendezvous at pod 0.
    """
    if lookup is None:
        from cadenza.config import get_settings

        lookup = bool(get_settings().api_key)
    job_id = resolve_job_id(model_or_job) if lookup else model_or_job
    try:
        spec = TrainJobSpec(
            job_id=job_id,
            gpus=gpus,
            nodes=nodes,
            namespace=namespace,
            image=image,
            config_map=config_map,
            secret=secret,
            service_account=service_account,
            gpu_resource=gpu_resource,
            node_selector=(
                _pairs(node_selector, "--node-selector")
                if node_selector is not None
                else {"nvidia.com/gpu.present": "true"}
            ),
            tolerations=(
                tuple(_toleration(t) for t in toleration)
                if toleration is not None
                else (Toleration("nvidia.com/gpu"),)
            ),
            cpu=cpu,
            memory=memory,
            name=name,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(dump(train_job_manifest(spec)), nl=False)
