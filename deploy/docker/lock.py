"""Pin every Python package that goes into the Docker images (needs PyPI, not Docker).

The images install `cadenza` with pip constraints, so a rebuild next month gets the same
versions as today. Regenerate the pins after changing dependencies in pyproject.toml:

    .venv/bin/python deploy/docker/lock.py            # writes deploy/docker/constraints-*.txt
    .venv/bin/python deploy/docker/lock.py --check    # exit 1 if a pin no longer fits

The resolution runs against pypi.org for CPython 3.11 on manylinux x86_64 (what the images
run), not against whatever happens to be installed in .venv. `tests/deploy` checks that
every requirement of pyproject.toml still has a pin that satisfies it.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

# Build tools: the images build the cadenza wheel from source with these.
BUILD_REQS = ["setuptools>=68,<81", "wheel>=0.43"]

# image -> (extras of cadenza to install, requirements added on top)
IMAGES: dict[str, tuple[list[str], list[str]]] = {
    "api": (["api"], []),
    # resampy (basic-pitch) imports pkg_resources: setuptools must stay below 81 at run time.
    "worker": (["worker", "audio"], ["setuptools<81"]),
    # Flower only talks to the broker; its requirements are requirements-flower.txt.
    "flower": ([], []),
}

PYPI = "https://pypi.org/simple"
# glibc 2.35 (Ubuntu 22.04, the GPU image) is the oldest the images run on; pip does not
# widen an explicit --platform to older manylinux tags by itself.
PLATFORMS = [
    arg
    for tag in [f"manylinux_2_{minor}_x86_64" for minor in range(35, 4, -1)]
    + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    for arg in ("--platform", tag)
]


def _pyproject() -> dict:
    """The parsed pyproject.toml of the repository."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def _expand(extras: list[str], optional: dict[str, list[str]], name: str) -> list[str]:
    """Requirements of `extras`, following self references like `cadenza[ml]`."""
    out: list[str] = []
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        if extra not in optional:
            raise SystemExit(f"pyproject.toml has no extra {extra!r}")
        for req in optional[extra]:
            m = re.fullmatch(rf"{re.escape(name)}\[([^\]]+)\]", req.strip())
            if m:
                todo.extend(e.strip() for e in m.group(1).split(","))
            else:
                out.append(req)
    return out


def requirements(image: str) -> list[str]:
    """Every requirement that `image` installs, as PEP 508 strings (cadenza itself excluded)."""
    project = _pyproject()["project"]
    extras, extra_reqs = IMAGES[image]
    if image == "flower":
        lines = (HERE / "requirements-flower.txt").read_text().splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    reqs = list(project["dependencies"])
    reqs += _expand(extras, project.get("optional-dependencies", {}), project["name"])
    return reqs + BUILD_REQS + extra_reqs


def resolve(reqs: list[str]) -> dict[str, str]:
    """Resolve `reqs` on PyPI for CPython 3.11 / manylinux x86_64; returns {name: version}."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--isolated",
            "--quiet",
            "--dry-run",
            "--ignore-installed",
            "--report",
            str(report),
            "--index-url",
            PYPI,
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--abi",
            "abi3",
            "--abi",
            "none",
            *PLATFORMS,
            "--only-binary=:all:",
            *reqs,
        ]
        subprocess.run(cmd, check=True)
        data = json.loads(report.read_text())
    return {
        item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
        for item in data["install"]
    }


def constraints_path(image: str) -> Path:
    """Where the pins of `image` live."""
    return HERE / f"constraints-{image}.txt"


def read_pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a constraints file as {normalized name: version}."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path.name}: not an exact pin: {line!r}")
        pins[re.sub(r"[-_.]+", "-", name.strip().lower())] = version.strip()
    return pins


def write(image: str, pins: dict[str, str]) -> None:
    """Write the constraints file of `image`."""
    header = (
        f"# Pinned versions for the {image} image. Generated by deploy/docker/lock.py from\n"
        "# pyproject.toml (CPython 3.11, manylinux x86_64, pypi.org). Do not edit by hand.\n"
    )
    body = "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))
    constraints_path(image).write_text(header + body)


def main() -> int:
    """Regenerate (default) or check the constraints files."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only verify the existing pins")
    parser.add_argument("images", nargs="*", default=sorted(IMAGES))
    args = parser.parse_args()
    if args.check:
        from packaging.requirements import Requirement

        bad = 0
        for image in args.images:
            pins = read_pins(constraints_path(image))
            for req in map(Requirement, requirements(image)):
                name = re.sub(r"[-_.]+", "-", req.name.lower())
                if name not in pins or not req.specifier.contains(pins[name], prereleases=True):
                    print(f"{image}: {req} is not satisfied by {pins.get(name, 'no pin')}")
                    bad += 1
        return 1 if bad else 0
    for image in args.images:
        write(image, resolve(requirements(image)))
        print(f"wrote {constraints_path(image).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
