"""Settings for every Cadenza process, read from `CADENZA_*` environment variables.

Unset URLs mean the embedded default: a SQLite file, a local object folder and a
filesystem broker under `CADENZA_DATA_DIR` (default `./.cadenza`). Production sets the
three URLs to PostgreSQL, Redis and an S3 bucket; the code paths are the same.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_S3_SECRETS = {"", "changeme", "cadenza", "minioadmin"}


class Settings(BaseSettings):
    """All process settings; one instance per process (see `get_settings`)."""

    model_config = SettingsConfigDict(env_prefix="CADENZA_", extra="ignore")

    env: Literal["development", "production"] = "development"
    data_dir: Path = Path(".cadenza")

    database_url: str | None = None
    broker_url: str | None = None
    storage_url: str | None = None

    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_region: str = "us-east-1"

    # Client side (CLI).
    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None

    # Limits on hostile input; the streaming upload enforces them before anything is stored.
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    max_midi_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    max_files_per_upload: int = Field(default=1000, ge=1)
    # All files of one upload request together once zips are unpacked (a per-zip cap alone let
    # several small zip bombs in one request fill the API's disk and memory).
    max_request_unpacked_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)

    # Jobs: a worker renews its lease every lease/3 seconds; an expired lease means it died.
    job_lease_seconds: int = Field(default=60, ge=5)
    job_max_attempts: int = Field(default=3, ge=1)
    reconcile_interval_seconds: float = Field(default=15.0, gt=0)
    # Requeues that are not the job's fault (a worker draining on SIGTERM, a database, broker
    # or store outage) do not use up an attempt; this many end the job as failed.
    job_max_interruptions: int = Field(default=20, ge=1)
    # A worker retries its own database writes (claim, progress, finish) through an outage
    # this long before it gives up on them.
    job_transient_retry_seconds: float = Field(default=60.0, ge=0)
    # The file a worker touches while it is alive (`cadenza worker-alive` reads it); unset,
    # the worker keeps no heartbeat.
    worker_heartbeat_file: Path | None = None
    worker_heartbeat_interval_seconds: float = Field(default=10.0, gt=0)
    # Deletes: an unreferenced content-addressed object (an upload's blob, a rendering) is
    # removed only once it is this old, since an upload of the same bytes may have written it
    # and not committed its row yet; the periodic sweep removes it later.
    sweep_grace_seconds: float = Field(default=3600.0, ge=0)

    # API concurrency (see cadenza_api.deps.Database): `api_processes` processes share the
    # port (one runs Python on one core at a time); in each, sync routes run on `api_threads`
    # AnyIO worker threads. At most `db_pool_size` requests of the whole API hold a database
    # session at once (each process gets its share, at least 2; unset: 3 per process), each
    # with its own pooled connection, so no thread ever waits for a connection. A request that
    # finds every slot taken for `db_pool_timeout` seconds gets 503 + Retry-After. PostgreSQL
    # connections of the API: about db_pool_size + 4 per process, whatever the process count.
    api_processes: int = Field(default_factory=lambda: default_api_processes(), ge=1)
    api_threads: int = Field(default=40, ge=4)
    db_pool_size: int | None = Field(default=None, ge=1)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    # A verified API key is trusted this long without a query; a key revoked by another
    # process stops working within this many seconds (0 turns the cache off).
    api_key_cache_seconds: float = Field(default=5.0, ge=0)

    # Budgets, quotas and rate limits (cadenza.limits); each can be overridden per owner in
    # `owners.limits` (PUT /v1/admin/owners/{name}/limits) under the same name.
    max_model_params: int = Field(default=500_000_000, ge=1)
    # Weights + gradients + Adam states + activations at the requested batch and context.
    max_train_memory_bytes: int = Field(default=80 * 1024**3, ge=1)
    # batch_size × seq_len × max_steps: the tokens one training job may process.
    max_train_tokens: int = Field(default=50_000_000_000, ge=1)
    train_time_budget_default_s: float = Field(default=24 * 3600.0, gt=0)
    train_time_budget_max_s: float = Field(default=7 * 24 * 3600.0, gt=0)
    max_stored_bytes: int = Field(default=20 * 1024**3, ge=0)
    max_active_jobs_per_queue: int = Field(default=32, ge=1)
    # Token buckets per owner: `burst` requests at once, refilled at `per_minute`.
    rate_jobs_burst: float = Field(default=20.0, ge=1)
    rate_jobs_per_minute: float = Field(default=20.0, gt=0)
    rate_uploads_burst: float = Field(default=60.0, ge=1)
    rate_uploads_per_minute: float = Field(default=60.0, gt=0)

    soundfont: Path = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
    torch_threads: int | None = None

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        """Production must never start on an embedded SQLite file or a default S3 secret."""
        if self.env == "production":
            missing = [
                name
                for name in ("database_url", "broker_url", "storage_url")
                if not getattr(self, name)
            ]
            if missing:
                names = ", ".join(f"CADENZA_{m.upper()}" for m in missing)
                raise ValueError(f"CADENZA_ENV=production needs {names} to be set")
            if (self.storage_url or "").startswith("s3://") and (
                self.s3_secret_access_key or ""
            ) in DEFAULT_S3_SECRETS:
                raise ValueError(
                    "CADENZA_ENV=production refuses an empty or default "
                    "CADENZA_S3_SECRET_ACCESS_KEY"
                )
        return self

    @property
    def embedded(self) -> bool:
        """True when the broker is the serverless filesystem transport."""
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'cadenza.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_dir(self) -> Path:
        """Folder of the filesystem broker (embedded mode only)."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "objects").resolve().as_uri()


# More API processes than this spend memory and database slots for little: on more cores,
# run more replicas.
MAX_DEFAULT_API_PROCESSES = 4


def default_api_processes() -> int:
    """One API process per core this process may use, at most `MAX_DEFAULT_API_PROCESSES`.

    Why more than one: a process runs Python on one core at a time (the GIL), and under load
    the API is Python-bound (about 1-1.5 ms of CPU per `GET /v1/jobs/{id}`), so one process
    leaves the other cores idle. A container's CPU quota (cgroup v2 `cpu.max`, what a
    Kubernetes CPU limit sets) counts, rounded up: a pod limited to 1 CPU runs one process.
    """
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass  # no cgroup v2 limit to read: the cores decide
    return max(1, min(MAX_DEFAULT_API_PROCESSES, cores))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
