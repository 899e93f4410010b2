"""Fixtures of the deployment tests: rendered kustomizations and the resolved compose model."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .helpers import KUSTOMIZATIONS, ROOT, TEST_ENV, compose_config, kustomize, write_env_file


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """kubectl kustomize output of base and every overlay."""
    return {path: kustomize(path) for path in KUSTOMIZATIONS}


@pytest.fixture(scope="session")
def compose_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """docker-compose.yml as Compose resolves it (JSON), with the test settings."""
    env_file = write_env_file(tmp_path_factory.mktemp("compose") / "test.env", TEST_ENV)
    result = compose_config(env_file, "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="session")
def compose_raw() -> dict[str, Any]:
    """docker-compose.yml as plain YAML, before interpolation."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())
