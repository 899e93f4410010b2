"""SQL schema: the source of truth for owners, keys, data, models and jobs.

Bytes never live here: rows point at object-store keys. Ids are random hex strings so they
can be made before a row exists (job-derived object keys) and never leak counts.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def new_id() -> str:
    """A fresh 32-character hex id."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """Timezone-aware now, the only clock the schema uses."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Timestamped:
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Owner(Timestamped, Base):
    __tablename__ = "owners"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Per-owner overrides of the budgets and quotas in Settings (e.g. {"max_stored_bytes": …}).
    limits: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ApiKey(Timestamped, Base):
    """An API key; only its sha256 is stored, the prefix finds the row quickly.

    `scopes` say what the key may do (read, write, train, admin); a key past `expires_at` or
    with `revoked_at` set is refused.
    """

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    name: Mapped[str] = mapped_column(String(200), default="")
    scopes: Mapped[list[Any]] = mapped_column(default=lambda: ["read", "write", "train"])
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class Dataset(Timestamped, Base):
    __tablename__ = "datasets"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    # free style tags ([a-z0-9_-], ≤ 16): a corpus with learn_tags learns them as tokens
    tags: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")


class File(Timestamped, Base):
    """A stored file of a dataset. `name` is the client's name, for display only."""

    __tablename__ = "files"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(500))
    kind: Mapped[str] = mapped_column(String(16))  # midi | audio
    format: Mapped[str] = mapped_column(String(16))  # mid | wav | mp3 | ...
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(String(300))
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")  # as Dataset.tags
    source_file_id: Mapped[str | None] = mapped_column(
        ForeignKey("files.id", ondelete="SET NULL"), default=None
    )
    job_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Corpus(Timestamped, Base):
    """A tokenized dataset: tokenizer plus token arrays per split, all in the store."""

    __tablename__ = "corpora"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    # None once the dataset is deleted: the corpus keeps its own tokenizer and token arrays.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), default=None
    )
    job_id: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tokenizer_key: Mapped[str] = mapped_column(String(300))
    tokenizer_hash: Mapped[str] = mapped_column(String(64))
    vocab_size: Mapped[int] = mapped_column(Integer)
    object_prefix: Mapped[str] = mapped_column(String(300))
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Tokenized with this (public or own) model's tokenizer, so its ids are the model's: what
    # an adapter of that model trains on. Plain id (no foreign key): the tokenizer is copied.
    base_model_id: Mapped[str | None] = mapped_column(String(32), default=None)


class Model(Timestamped, Base):
    """A model: created with its training job so progress is visible while it trains."""

    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    corpus_id: Mapped[str] = mapped_column(ForeignKey("corpora.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(64))
    preset: Mapped[str | None] = mapped_column(String(64), default=None)
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    train_config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    vocab_size: Mapped[int] = mapped_column(Integer)
    tokenizer_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="training")
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # A fine-tune's starting checkpoint; for an adapter, the base checkpoint it is merged into.
    init_checkpoint_id: Mapped[str | None] = mapped_column(String(32), default=None)
    # "private" (its owner only) or "public" (every owner may see, sample and adapt it, never
    # read its corpus, dataset or training state).
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    # An adapter model: the base it adapts (deleting or unpublishing that base is refused
    # while adapters depend on it) and its LoRA options; None for a whole model.
    base_model_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class MetricRecord(Base):
    """One point of a model's training history (train/val/test loss per step)."""

    __tablename__ = "model_metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    split: Mapped[str] = mapped_column(String(8))
    loss: Mapped[float] = mapped_column(Float)
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (
        Index("ix_model_metrics_model_step", "model_id", "step"),
        UniqueConstraint("model_id", "step", "split", name="uq_model_metrics_model_step_split"),
    )


class Checkpoint(Timestamped, Base):
    __tablename__ = "checkpoints"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    step: Mapped[int] = mapped_column(Integer)
    object_key: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    val_loss: Mapped[float | None] = mapped_column(Float, default=None)
    is_best: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (UniqueConstraint("model_id", "step", name="uq_checkpoints_model_step"),)


class Sample(Timestamped, Base):
    """One generated variation: a MIDI file in the store plus what made it."""

    __tablename__ = "samples"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    index: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    midi_key: Mapped[str] = mapped_column(String(300))
    num_tokens: Mapped[int] = mapped_column(Integer)
    num_notes: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    partial: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The sample this one continues (`primer_sample_id`), else null. SET NULL: deleting a
    # parent leaves its children whole, only without the link; indexed for that update.
    parent_sample_id: Mapped[str | None] = mapped_column(
        ForeignKey("samples.id", ondelete="SET NULL"), index=True, default=None
    )

    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_samples_job_index"),)


class Job(Base):
    """An asynchronous unit of work; this row, not the broker, is the truth about it."""

    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    type: Mapped[str] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    # Fencing: a fresh token per claim; every write of a running job names it, so a worker
    # that lost its lease (paused, partitioned) can no longer write anything.
    claim_token: Mapped[str | None] = mapped_column(String(32), default=None)
    # Requeues that are not the job's fault (worker drained by SIGTERM, database or store
    # outage); they do not use up an attempt, and are bounded on their own.
    interruptions: Mapped[int] = mapped_column(Integer, default=0)
    # Times the reconciler re-sent a queued job whose broker message seemed lost.
    resends: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)


class JobEvent(Base):
    """Append-only progress events of a job, streamed to clients over SSE."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)


class RateBucket(Base):
    """A token bucket of the rate limiter (embedded default; production keeps them in Redis)."""

    __tablename__ = "rate_buckets"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)  # epoch seconds of the last refill


class PendingDelete(Base):
    """An object-store key to delete: written in the transaction that removes its row.

    The sweep deletes the object and then this row, so a crash between the SQL delete and
    the object delete leaves a to-do, never an orphan.
    """

    __tablename__ = "pending_deletes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    object_key: Mapped[str] = mapped_column(String(300))
    # Prefix deletes (a model's checkpoints folder) name the prefix and set this flag.
    is_prefix: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
