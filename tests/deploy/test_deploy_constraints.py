"""deploy/docker/constraints-*.txt: the pins the images install still fit pyproject.toml."""

from __future__ import annotations

import importlib.util
import re
from types import ModuleType

import pytest
from packaging.requirements import Requirement

from .helpers import DEPLOY, ROOT, dockerfile_stages


def _lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "cadenza_deploy_lock", DEPLOY / "docker" / "lock.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LOCK = _lock()


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


@pytest.mark.parametrize("image", sorted(LOCK.IMAGES))
def test_every_requirement_has_a_fitting_pin(image: str) -> None:
    """Fails after a dependency change in pyproject.toml: run deploy/docker/lock.py."""
    pins = LOCK.read_pins(LOCK.constraints_path(image))
    problems = []
    for req in map(Requirement, LOCK.requirements(image)):
        if req.marker and not req.marker.evaluate(
            {"python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux"}
        ):
            continue
        pin = pins.get(_norm(req.name))
        if pin is None or not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req} (pinned: {pin})")
    assert not problems, f"{image}: run `python deploy/docker/lock.py`: " + "; ".join(problems)


def test_requirements_follow_pyproject() -> None:
    api = {_norm(Requirement(r).name) for r in LOCK.requirements("api")}
    worker = {_norm(Requirement(r).name) for r in LOCK.requirements("worker")}
    assert {"fastapi", "uvicorn", "sqlalchemy", "celery"} <= api and "torch" not in api
    assert {"torch", "miditok", "symusic", "celery"} <= worker and "fastapi" not in worker


def test_dockerfiles_use_the_constraints() -> None:
    for name, image in (("Dockerfile.api", "api"), ("Dockerfile.worker", "worker")):
        text = (ROOT / name).read_text()
        assert f"PIP_CONSTRAINT=/build/deploy/docker/constraints-{image}.txt" in text
    assert "PIP_CONSTRAINT=/build/constraints-flower.txt" in (ROOT / "Dockerfile.api").read_text()


def test_pinned_versions_agree_with_dockerfiles() -> None:
    worker = LOCK.read_pins(LOCK.constraints_path("worker"))
    args = dict(
        rest.split("=", 1)
        for instruction, rest in dockerfile_stages(ROOT / "Dockerfile.worker")["__global__"]
        if instruction == "ARG" and "=" in rest
    )
    assert worker["torch"] == args["TORCH_VERSION"]
    flower_reqs = LOCK.requirements("flower")
    flower = LOCK.read_pins(LOCK.constraints_path("flower"))["flower"]
    assert f"flower=={flower}" in flower_reqs
    assert "-r requirements-flower.txt" in (ROOT / "Dockerfile.api").read_text()


def test_flower_uses_the_apps_celery_and_redis_client() -> None:
    """Flower's kombu must load the redis transport: celery[redis], as pinned for the app."""
    app_celery = [r for r in LOCK.requirements("api") if Requirement(r).name == "celery"]
    flower_celery = [r for r in LOCK.requirements("flower") if Requirement(r).name == "celery"]
    assert flower_celery == app_celery and "redis" in Requirement(flower_celery[0]).extras
    api, flower = (LOCK.read_pins(LOCK.constraints_path(i)) for i in ("api", "flower"))
    for name in ("celery", "kombu", "redis"):
        assert flower[name] == api[name], name


def test_symusic_pin_avoids_the_broken_release() -> None:
    """symusic 0.6.0's Synthesizer.render fails with a pybind TypeError; images carry 0.5.9."""
    assert LOCK.read_pins(LOCK.constraints_path("worker"))["symusic"] == "0.5.9"
