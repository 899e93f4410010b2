"""docker-compose.yml: valid for Compose v2, and wired the way Cadenza needs it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import (
    DEPLOY,
    ROOT,
    TEST_ENV,
    compose_config,
    dockerfile_stages,
    settings_env_names,
    write_env_file,
)

EXPECTED_SERVICES = {
    "api",
    "migrate",
    "worker-cpu",
    "worker-gpu",
    "postgres",
    "redis",
    "seaweedfs",
    "seaweedfs-init",
    "flower",
}
APP_SERVICES = ("api", "migrate", "worker-cpu", "worker-gpu")
ONE_SHOTS = {"migrate", "seaweedfs-init"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|AUTH")
RAW = (ROOT / "docker-compose.yml").read_text()


def _strings(node: Any) -> list[str]:
    """Every string (keys and values) of a parsed YAML document."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return [node] if isinstance(node, str) else []


VALUES = _strings(yaml.safe_load(RAW))
VARIABLES = {v for s in VALUES for v in re.findall(r"(?<!\$)\$\{(\w+)", s)}


def _env_example() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """`docker compose config -q` (the real Compose v2 parser and schema) accepts the file."""
    result = compose_config(write_env_file(tmp_path / "test.env", TEST_ENV), "-q")
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets() -> None:
    """The example env file has empty secrets, and Compose refuses them: no usable default."""
    result = compose_config(DEPLOY / "env.example", "-q")
    assert result.returncode != 0
    assert "required variable" in result.stderr and "is missing a value" in result.stderr


@pytest.mark.parametrize("secret", sorted(v for v in VARIABLES if SECRET_NAME.search(v)))
def test_every_secret_is_required_and_has_no_default(secret: str, tmp_path: Path) -> None:
    uses = [u for s in VALUES for u in re.findall(rf"(?<!\$)\$\{{{secret}([^}}]*)\}}", s)]
    assert uses and all(use.startswith(":?") for use in uses), f"${{{secret}{uses}}}"
    assert _env_example()[secret] == "", f"env.example must leave {secret} empty"
    values = {k: v for k, v in TEST_ENV.items() if k != secret}
    result = compose_config(write_env_file(tmp_path / "test.env", values), "-q")
    assert result.returncode != 0 and secret in result.stderr


def test_env_example_documents_every_variable() -> None:
    example = _env_example()
    assert set(example) >= VARIABLES, f"missing from env.example: {VARIABLES - set(example)}"
    assert set(TEST_ENV) == set(example), "keep TEST_ENV in step with deploy/env.example"


def test_services(compose_model: dict[str, Any]) -> None:
    assert set(compose_model["services"]) == EXPECTED_SERVICES


def test_long_running_services_have_healthchecks(compose_model: dict[str, Any]) -> None:
    for name, service in compose_model["services"].items():
        if name in ONE_SHOTS:
            assert service.get("restart") == "no", f"{name} is a one-shot"
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test[0] in {"CMD", "CMD-SHELL"}, f"{name} has no healthcheck"
        assert not service["healthcheck"].get("disable"), name


def test_dependencies_wait_for_health_or_completion(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    for name, service in services.items():
        for dep, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            if dep in ONE_SHOTS:
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}: {condition}"
                assert services[dep].get("healthcheck", {}).get("test"), f"{dep} has no healthcheck"


def test_startup_order(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services["migrate"]["depends_on"]) == {"postgres"}
    assert set(services["seaweedfs-init"]["depends_on"]) == {"seaweedfs"}
    for name in ("api", "worker-cpu", "worker-gpu"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["seaweedfs-init"]["condition"] == "service_completed_successfully", name
        assert {"redis", "seaweedfs"} <= set(deps), name


def test_commands_follow_the_cli_contract(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["api"]["command"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    assert services["worker-cpu"]["command"] == ["worker", "--queues", "cpu", "--concurrency", "2"]
    assert services["worker-gpu"]["command"] == ["worker", "--queues", "gpu", "--concurrency", "1"]


def test_gpu_worker_reserves_an_nvidia_gpu(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), devices
    assert services["worker-gpu"]["build"]["target"] == "gpu"
    for name, service in services.items():
        if name != "worker-gpu":
            assert "devices" not in str(service.get("deploy", {})), f"{name} reserves a device"


def test_images_are_built_here_or_pinned(compose_model: dict[str, Any]) -> None:
    for name, service in compose_model["services"].items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: {image} is not pinned"
        if repo.startswith("cadenza/"):
            build = service.get("build")
            assert build, f"{name}: {image} has no build section"
            dockerfile = Path(build["context"]) / build["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            assert build["target"] in dockerfile_stages(dockerfile), f"{name}: no stage {build}"
        else:
            assert "build" not in service, name
            assert re.search(r"\d", tag), f"{name}: {image}"


def test_same_image_name_means_same_build(compose_model: dict[str, Any]) -> None:
    builds: dict[str, tuple[str, str]] = {}
    for service in compose_model["services"].values():
        if "build" in service:
            key = (service["build"]["dockerfile"], service["build"]["target"])
            assert builds.setdefault(service["image"], key) == key, service["image"]


def test_cadenza_env_names_are_read_by_the_app(compose_model: dict[str, Any]) -> None:
    known = settings_env_names()
    used = {
        key
        for service in compose_model["services"].values()
        for key in (service.get("environment") or {})
        if key.startswith("CADENZA_")
    } | {v for v in VARIABLES if v.startswith("CADENZA_")}
    assert used, "no CADENZA_* variable found"
    assert used <= known, f"not read by cadenza.config.Settings: {sorted(used - known)}"


def test_app_services_get_production_settings(compose_model: dict[str, Any]) -> None:
    required = {
        "CADENZA_ENV",
        "CADENZA_DATABASE_URL",
        "CADENZA_BROKER_URL",
        "CADENZA_STORAGE_URL",
        "CADENZA_S3_ENDPOINT_URL",
        "CADENZA_S3_ACCESS_KEY_ID",
        "CADENZA_S3_SECRET_ACCESS_KEY",
    }
    for name in APP_SERVICES:
        env = compose_model["services"][name]["environment"]
        assert required <= set(env), f"{name}: missing {required - set(env)}"
        assert env["CADENZA_ENV"] == "production"
        assert env["CADENZA_DATABASE_URL"].startswith("postgresql+psycopg://cadenza:")
        assert env["CADENZA_DATABASE_URL"].endswith("@postgres:5432/cadenza")
        assert env["CADENZA_BROKER_URL"].endswith("@redis:6379/0")
        assert env["CADENZA_STORAGE_URL"] == f"s3://{TEST_ENV['S3_BUCKET']}"


def test_credentials_agree_between_services(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    env = services["api"]["environment"]
    assert (
        f":{services['postgres']['environment']['POSTGRES_PASSWORD']}@"
        in env["CADENZA_DATABASE_URL"]
    )
    assert f":{services['redis']['environment']['REDIS_PASSWORD']}@" in env["CADENZA_BROKER_URL"]
    weed = services["seaweedfs"]["environment"]
    assert weed["S3_ACCESS_KEY_ID"] == env["CADENZA_S3_ACCESS_KEY_ID"]
    assert weed["S3_SECRET_ACCESS_KEY"] == env["CADENZA_S3_SECRET_ACCESS_KEY"]
    assert services["seaweedfs-init"]["environment"]["S3_BUCKET"] == weed["S3_BUCKET"]
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == env["CADENZA_BROKER_URL"]


def test_only_api_and_flower_publish_ports_on_loopback(compose_model: dict[str, Any]) -> None:
    for name, service in compose_model["services"].items():
        ports = service.get("ports") or []
        if name not in {"api", "flower"}:
            assert not ports, f"{name} publishes {ports}"
            continue
        assert ports, name
        for port in ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"


def test_seaweedfs_scripts_are_mounted(compose_model: dict[str, Any]) -> None:
    for name in ("seaweedfs", "seaweedfs-init"):
        service = compose_model["services"][name]
        mounts = {m["target"]: m for m in service["volumes"] if m["type"] == "bind"}
        mount = mounts["/cadenza"]
        assert mount["read_only"] is True
        script = service["entrypoint"][-1]
        assert script.startswith("/cadenza/")
        local = Path(mount["source"]) / script.removeprefix("/cadenza/")
        assert local.is_file(), f"{name}: {local} does not exist"
    command = compose_model["services"]["seaweedfs"]["command"]
    assert "-s3" in command and "-s3.config=/tmp/s3.json" in command
    assert compose_model["services"]["seaweedfs"]["environment"]["SEAWEEDFS_S3_CONFIG"] == (
        "/tmp/s3.json"
    )


def test_app_containers_are_hardened(compose_model: dict[str, Any]) -> None:
    for name in (*APP_SERVICES, "flower"):
        service = compose_model["services"][name]
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_workers_probe_their_heartbeat(compose_model: dict[str, Any]) -> None:
    """Not a Celery ping: with the solo pool a worker running a job answers none."""
    services = compose_model["services"]
    for name in ("worker-cpu", "worker-gpu"):
        check = services[name]["healthcheck"]
        assert check["test"] == ["CMD", "cadenza-worker-healthcheck"], name
    dockerfile = (ROOT / "Dockerfile.worker").read_text()
    assert dockerfile.count("CADENZA_WORKER_HEARTBEAT_FILE=/tmp/cadenza-worker.alive") == 2
