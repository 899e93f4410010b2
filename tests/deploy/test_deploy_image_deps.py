"""The images carry every third-party package their code imports.

The images install only what pyproject.toml declares for them (pinned by
deploy/docker/constraints-*.txt), unlike .venv, which has everything. So a module that the
API or a worker imports, even lazily inside a function, must map to a pinned distribution,
or that code path dies with ImportError in production only. Imports are found statically
(AST) by following first-party imports from each image's entry points.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .helpers import DEPLOY, ROOT

FIRST_PARTY = ("cadenza", "cadenza_api", "cadenza_worker")
SOURCE_ROOTS = (ROOT / "shared", ROOT / "services" / "api", ROOT / "services" / "worker")
# Imports inside functions are followed only where that code runs in the image: in the API's
# own modules (not in shared ones, e.g. `cadenza.models.registry` imports torch only to build a
# model, which the API never does), everywhere in the workers except the CLI (whose other
# commands do not run there).
CLI = "cadenza.cli"
# Modules the worker images never run, and why.
NOT_IN_WORKER = {
    "cadenza.datasets": "`cadenza demo` only (music21 is a dev dependency)",
}
# Dependencies of the --no-deps packages that are deliberately left out: basic-pitch's
# TensorFlow runtimes (we run its ONNX model), and what transkun needs only for training,
# evaluation plots and its CLI (torchaudio is replaced by one function, see
# cadenza.audio.transcribe.piano; tests/unit/test_transcribe_piano.py loads the model without
# any of these).
TRANSKUN_UNUSED = {
    "torchaudio", "tensorboard", "torch-optimizer", "seaborn", "sox", "pydub", "ncls",
    "moduleconf",
}  # fmt: skip
NO_DEPS_EXCLUDED = {
    "tensorflow", "tensorflow-macos", "tflite-runtime", "coremltools", *TRANSKUN_UNUSED
}  # fmt: skip
MARKER_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "extra": "",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.lower())


@cache
def _modules() -> dict[str, Path]:
    """First-party module name -> file."""
    out = {}
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            if parts and parts[0] in FIRST_PARTY:
                out[".".join(parts)] = path
    return out


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `if TYPE_CHECKING:` or a `try` that catches ImportError."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
        if isinstance(node, ast.Try) and any(
            h.type is not None
            and re.search(r"ImportError|ModuleNotFoundError", ast.unparse(h.type))
            for h in node.handlers
        ):
            return True
    return False


def _in_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


@cache
def _imports(module: str, module_level_only: bool) -> frozenset[str]:
    """Absolute dotted names imported by a first-party module."""
    path = _modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        # "cadenza.handlers.train:run" style targets, imported with importlib at run time.
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = re.fullmatch(r"((?:cadenza|cadenza_api|cadenza_worker)(?:\.\w+)*):\w+", node.value)
            if m and not module_level_only:
                names.add(m.group(1))
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if _optional(node, parents) or (module_level_only and _in_function(node, parents)):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(names)


def _follows_lazy(image: str, module: str) -> bool:
    if image == "api":
        return module.startswith("cadenza_api")
    return module.split(".")[:2] not in (["cadenza", "cli"], ["cadenza", "launch"])


def _third_party(image: str) -> dict[str, str]:
    """Top-level third-party module -> a first-party module importing it, from `roots`."""
    modules = _modules()
    seen: set[str] = set()
    todo = _roots(image)
    found: dict[str, str] = {}
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(module, module_level_only=not _follows_lazy(image, module)):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                parts = name.split(".")
                for i in range(len(parts), 0, -1):
                    candidate = ".".join(parts[:i])
                    if candidate in modules:
                        todo.append(candidate)
                        break
                # A package's parents run their __init__ too.
                for i in range(1, len(parts)):
                    if ".".join(parts[:i]) in modules:
                        todo.append(".".join(parts[:i]))
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, module)
    return found


def _roots(image: str) -> list[str]:
    modules = _modules()
    if image == "api":
        prefixes = ("cadenza_api",)
        extra = [CLI, "cadenza.db.migrate"]  # `cadenza api`, `cadenza migrate`
        return [m for m in modules if m.startswith(prefixes)] + [m for m in extra if m in modules]
    # Workers run every job type: all shared code is theirs, but for what only other CLI
    # commands use.
    return [m for m in modules if not m.startswith("cadenza_api") and m not in NOT_IN_WORKER]


def _pins(image: str) -> set[str]:
    lock = DEPLOY / "docker" / f"constraints-{image}.txt"
    names = {
        _norm(line.split("==")[0])
        for line in lock.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    return names | set(_no_deps(image))


def _no_deps(image: str) -> dict[str, str]:
    path = DEPLOY / "docker" / f"requirements-{image}-nodeps.txt"
    if not path.exists():
        return {}
    reqs = [
        Requirement(line)
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return {_norm(r.name): str(r.specifier) for r in reqs}


@pytest.mark.parametrize("image", ["api", "worker"])
def test_every_import_is_installed_in_the_image(image: str) -> None:
    distributions = md.packages_distributions()
    pins = _pins(image)
    problems = []
    for module, importer in sorted(_third_party(image).items()):
        dists = distributions.get(module)
        if not dists:
            problems.append(f"{module} (imported by {importer}) is not installed in .venv")
        elif not any(_norm(d) in pins for d in dists):
            problems.append(f"{module} -> {dists[0]} (imported by {importer})")
    assert not problems, (
        f"the {image} image would lack: "
        + "; ".join(problems)
        + ". Declare them in pyproject.toml for this image's extras, then run "
        "`python deploy/docker/lock.py`."
    )


def test_api_image_stays_light() -> None:
    """Heavy imports (torch, miditok, basic_pitch) stay out of the API process."""
    modules = _third_party("api")
    heavy = {"torch", "miditok", "basic_pitch", "onnxruntime"} & set(modules)
    assert not heavy, {m: modules[m] for m in heavy}


def test_no_deps_packages_have_their_dependencies_pinned() -> None:
    no_deps = _no_deps("worker")
    assert "basic-pitch" in no_deps and "transkun" in no_deps
    setup = (ROOT / "scripts" / "setup.sh").read_text() if (ROOT / "scripts").exists() else ""
    for name, spec in no_deps.items():
        if setup:
            assert f'"{name}{spec}"' in setup, f"{name}{spec} differs from scripts/setup.sh"
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            pytest.skip(f"{name} is not installed in .venv: cannot read its dependencies")
        pins = _pins("worker")
        missing = [
            str(r)
            for r in map(Requirement, requires)
            if (r.marker is None or r.marker.evaluate(MARKER_ENV))
            and _norm(r.name) not in NO_DEPS_EXCLUDED
            and _norm(r.name) not in pins
        ]
        assert not missing, f"{name} is installed --no-deps; pin its dependencies: {missing}"


def test_contract_modules_exist() -> None:
    """Modules the deployment runs by name: the Celery app and torchrun's entry module."""
    used_by = {
        "cadenza.cli": "the images' ENTRYPOINT (console script cadenza)",
        "cadenza_worker.app": "`cadenza worker` (celery -A cadenza_worker.app)",
        "cadenza.jobs.train_job": "`cadenza k8s train-job --gpus N` (torchrun -m …)",
    }
    missing = [f"{m} (used by {why})" for m, why in used_by.items() if m not in set(_modules())]
    assert not missing, f"missing modules: {missing}"
    assert importlib.util.find_spec("cadenza.cli") is not None


def test_import_scanner_sees_lazy_imports() -> None:
    """The scanner follows imports inside functions (they fail just as late in production)."""
    found = _third_party("worker")
    assert "torch" in found and "celery" in found
