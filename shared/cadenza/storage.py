"""Object store on obstore: a local folder (embedded) or any S3 endpoint, one interface.

Keys are built here from ids and hashes only: nothing a client sends (file names, zip member
names) ever becomes part of a key, so no path traversal or collision can come from input.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import LocalStore, S3Store

from cadenza.config import Settings

_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9/_.\-]{0,299}$")
CHUNK = 1024 * 1024


class ObjectNotFound(KeyError):
    """The key does not exist in the store."""


def check_key(key: str) -> str:
    """Refuse keys that did not come from the builders below (defence in depth)."""
    if not _KEY_RE.match(key) or ".." in key or "//" in key:
        raise ValueError(f"invalid object key {key!r}")
    return key


def blob_key(sha256: str, ext: str) -> str:
    """Content-addressed key of an uploaded file: same bytes, same key, stored once."""
    if not re.fullmatch(r"[0-9a-f]{64}", sha256) or not re.fullmatch(r"[a-z0-9]{1,8}", ext):
        raise ValueError("blob_key needs a sha256 hex digest and a short lowercase extension")
    return f"blobs/{sha256[:2]}/{sha256}.{ext}"


def job_key(job_id: str, *parts: str) -> str:
    """Key of an output of a job: a rerun of the job overwrites instead of duplicating."""
    return check_key("/".join(("jobs", job_id, *parts)))


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore:
    """Thin typed wrapper over an obstore store."""

    def __init__(self, store: Any, url: str) -> None:
        self._store = store
        self.url = url

    # -- writing ---------------------------------------------------------------------------
    def put(self, key: str, data: bytes | IO[bytes] | Path) -> None:
        """Write `data` at `key`, atomically (visible whole or not at all)."""
        obstore.put(self._store, check_key(key), data)

    def put_atomic(self, key: str, data: bytes) -> None:
        """Write through a temporary key then rename: for checkpoints that must never be torn."""
        tmp = f"{check_key(key)}.tmp"
        obstore.put(self._store, tmp, data)
        obstore.rename(self._store, tmp, key, overwrite=True)

    def delete(self, key: str) -> None:
        with contextlib.suppress(NotFoundError, FileNotFoundError):
            obstore.delete(self._store, check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        keys = [o.key for o in self.list(prefix)]
        for k in keys:
            self.delete(k)
        return len(keys)

    # -- reading ---------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        try:
            return bytes(obstore.get(self._store, check_key(key)).bytes())
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(key) from exc

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """Stream an object without holding it whole in memory."""
        try:
            result = obstore.get(self._store, check_key(key))
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(key) from exc
        for chunk in result.stream(min_chunk_size=CHUNK):
            yield bytes(chunk)

    def exists(self, key: str) -> bool:
        try:
            obstore.head(self._store, check_key(key))
            return True
        except (NotFoundError, FileNotFoundError):
            return False

    def size(self, key: str) -> int:
        try:
            return int(obstore.head(self._store, check_key(key))["size"])
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(key) from exc

    def modified_at(self, key: str) -> datetime | None:
        """When the object was last written, or None if it does not exist (the sweep's grace
        period: an object written moments ago may belong to an upload not yet committed)."""
        try:
            return obstore.head(self._store, check_key(key))["last_modified"]
        except (NotFoundError, FileNotFoundError):
            return None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        out: list[ObjectInfo] = []
        for batch in obstore.list(self._store, prefix=prefix or None):
            for meta in batch:
                out.append(ObjectInfo(key=str(meta["path"]), size=int(meta["size"])))
        return sorted(out, key=lambda o: o.key)

    def ping(self) -> None:
        """Raise if the store cannot be reached (readiness probe)."""
        for _ in obstore.list(self._store, prefix="__ping__"):
            break


def open_store(settings: Settings) -> ObjectStore:
    """Open the store that `settings` names (`file:///…` or `s3://bucket[/prefix]`)."""
    url = settings.resolved_storage_url
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        path.mkdir(parents=True, exist_ok=True)
        return ObjectStore(LocalStore(path, mkdir=True), url)
    if parsed.scheme == "s3":
        options: dict[str, Any] = {
            "region": settings.s3_region,
        }
        if settings.s3_access_key_id:
            options["access_key_id"] = settings.s3_access_key_id
            options["secret_access_key"] = settings.s3_secret_access_key or ""
        client_options: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            options["endpoint"] = settings.s3_endpoint_url
            options["virtual_hosted_style_request"] = False
            if settings.s3_endpoint_url.startswith("http://"):
                client_options["allow_http"] = True
        prefix = parsed.path.strip("/") or None
        store = S3Store(
            parsed.netloc,
            prefix=prefix,
            client_options=client_options or None,  # type: ignore[arg-type]
            **options,
        )
        return ObjectStore(store, url)
    raise ValueError(f"CADENZA_STORAGE_URL must be file:///… or s3://bucket, got {url!r}")


def sha256_of(chunks: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for c in chunks:
        h.update(c)
    return h.hexdigest()
