"""Response bodies (the error body included), and the request bodies that belong to the API alone.

A job's request body is its params model's request form (`CorpusRequest`, `ModelRequest`,
`SampleRequest`, `AudioJobRequest`, next to the domain code that uses them), re-exported here
so the OpenAPI document and the routes name them in one place. Field limits there and here
are the first line against bad input.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from cadenza.audio.params import AudioJobRequest
from cadenza.db.repo import SCOPES
from cadenza.sample.params import SampleRequest
from cadenza.tokenize.controls import check_tags, default_capabilities
from cadenza.tokenize.params import CorpusRequest
from cadenza.train.params import ModelRequest


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    @field_serializer("*", when_used="json", check_fields=False)
    def _utc(self, v: Any) -> Any:
        # SQLite returns naive datetimes; every stored time is UTC, so say so.
        if isinstance(v, datetime) and v.tzinfo is None:
            return v.replace(tzinfo=UTC).isoformat()
        return v.isoformat() if isinstance(v, datetime) else v


class In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors --------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    """One field of the request that failed validation."""

    field: str = Field(description="the field's dotted path, e.g. `train.seq_len`")
    message: str


class ErrorInfo(BaseModel):
    code: str = Field(
        description="stable machine code to branch on, e.g. `not_found`, `too_large`, "
        "`no_midi_files`, `model_not_ready`"
    )
    message: str = Field(description="what went wrong and what to do about it, for a person")
    details: list[ErrorDetail] = Field(
        default_factory=list, description="on 422: every invalid field (absent otherwise)"
    )


class Error(BaseModel):
    """The body of every error answer: `{"error": {"code", "message", "details"?}}`."""

    error: ErrorInfo


# -- health --------------------------------------------------------------------------------
class Liveness(BaseModel):
    status: str = Field(description="always `ok`: the process answers")


class Readiness(BaseModel):
    """`/readyz`: `ok` when the database, broker and store all answer (503 otherwise)."""

    status: str = Field(description="`ok` or `unavailable`")
    checks: dict[str, str] = Field(description="`ok` or `unavailable` per dependency")
    errors: dict[str, str] | None = Field(
        default=None,
        description="only for a key with the `admin` scope: the exception class of each "
        "unavailable dependency",
    )


# -- datasets and files --------------------------------------------------------------------
class DatasetCreate(In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"name": "bach chorales", "description": "four-part chorales from music21"}
            ]
        }
    )

    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)
    tags: list[str] = Field(
        default_factory=list,
        description="style tags (≤ 16, each 1-40 of a-z 0-9 - _), learned by learn_tags corpora",
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return check_tags(v)


class TagsPatch(In):
    """`PATCH /v1/datasets/{id}` and `/v1/files/{id}`: replace the style tags."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"tags": ["baroque", "mine-2019"]}]})

    tags: list[str] = Field(description="≤ 16 tags, each 1-40 characters of a-z, 0-9, - and _")

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str]) -> list[str]:
        return check_tags(v)


class DatasetOut(Out):
    id: str
    name: str
    description: str
    created_at: datetime
    file_count: int = 0
    tags: list[str] = []


class FileOut(Out):
    id: str
    dataset_id: str
    name: str
    kind: str
    format: str
    size: int
    sha256: str
    meta: dict[str, Any]
    source_file_id: str | None
    created_at: datetime
    tags: list[str] = []


class FileList(BaseModel):
    files: list[FileOut]


# -- jobs ----------------------------------------------------------------------------------
class JobOut(Out):
    id: str
    type: str
    # cpu or gpu (the workers' queues), or cluster: a training job held for a Kubernetes Job.
    queue: str
    state: str
    progress: float
    message: str
    error: str | None
    attempts: int
    params: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    corpus_id: str | None = None
    model_id: str | None = None
    sample_id: str | None = None
    sample_ids: list[str] = []
    file_ids: list[str] = []

    @model_validator(mode="before")
    @classmethod
    def _outputs(cls, data: Any) -> Any:
        """Lift the ids a job produced out of its `result` to the top level."""
        if hasattr(data, "result"):
            result = dict(data.result or {})
            fields = {k: getattr(data, k) for k in cls.model_fields if hasattr(data, k)}
            fields.update(
                {k: result[k] for k in ("corpus_id", "model_id", "sample_id") if k in result}
            )
            fields["sample_ids"] = result.get("sample_ids", [])
            fields["file_ids"] = result.get("file_ids", [])
            return fields
        return data


class JobList(BaseModel):
    jobs: list[JobOut]


# -- corpora -------------------------------------------------------------------------------
class CorpusOut(Out):
    id: str
    dataset_id: str | None = Field(description="null once its dataset was deleted")
    params: dict[str, Any]
    tokenizer_hash: str
    vocab_size: int
    stats: dict[str, Any]
    created_at: datetime


# -- models --------------------------------------------------------------------------------
class CheckpointOut(Out):
    id: str
    step: int
    val_loss: float | None
    is_best: bool
    size: int
    created_at: datetime


class MetricOut(Out):
    step: int
    split: str
    loss: float
    values: dict[str, Any]


class ModelOut(Out):
    id: str
    corpus_id: str
    job_id: str
    architecture: str
    preset: str | None
    config: dict[str, Any]
    train_config: dict[str, Any]
    vocab_size: int
    tokenizer_hash: str
    state: str
    summary: dict[str, Any]
    created_at: datetime
    visibility: str = Field(
        default="private", description="`private` (yours only) or `public` (see PATCH)"
    )
    base_model_id: str | None = Field(default=None, description="an adapter's base model")
    adapter: dict[str, Any] | None = Field(
        default=None, description="an adapter's LoRA options; null for a whole model"
    )
    checkpoints: list[CheckpointOut] = []
    metrics: list[MetricOut] = []
    capabilities: dict[str, Any] = Field(
        default_factory=default_capabilities,
        description="what a sample request may use: `modes` (continue, and infill and "
        "accompany for a model trained to edit on a `multitrack` corpus), `controls` (name → "
        "`per`, `range` or `values`, `unit`), `tags`, for a multitrack (MMM) corpus with "
        "per-bar controls `tracks` (`max` entries, the per-bar `controls` a request's "
        "`controls.tracks` may set per track, `select` by index or program) "
        "(cadenza.tokenize.controls), and `output` (`midi`, or `audio` for a model of an "
        "`audio-vq` corpus: WAV samples, primers in seconds)",
    )


class ModelPatch(In):
    """`PATCH /v1/models/{id}`: what may change on a model."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"visibility": "public"}]}
    )

    visibility: Literal["private", "public"]


# -- samples -------------------------------------------------------------------------------
class SampleOut(Out):
    id: str
    model_id: str
    job_id: str
    index: int
    params: dict[str, Any]
    num_tokens: int
    num_notes: int
    duration_s: float
    partial: bool
    meta: dict[str, Any]
    created_at: datetime
    parent_sample_id: str | None = Field(
        default=None,
        description="the sample this one continues (its primer_sample_id); null for a sample "
        "made without one, or once that sample is deleted",
    )


class SampleList(BaseModel):
    samples: list[SampleOut]


class SampleLineage(SampleList):
    """`GET /v1/samples/{id}/lineage`: the sample's ancestors, oldest first, then itself."""

    truncated: bool = Field(
        default=False,
        description="true when the chain is longer than the depth the server walks (or loops): "
        "the first sample listed then has a parent that is not shown",
    )


__all__ = [
    "TagsPatch",
    "OwnerLimits",
    "AudioJobRequest",
    "CheckpointOut",
    "CorpusOut",
    "CorpusRequest",
    "DatasetCreate",
    "DatasetOut",
    "Error",
    "ErrorDetail",
    "ErrorInfo",
    "FileList",
    "FileOut",
    "JobList",
    "JobOut",
    "Liveness",
    "MetricOut",
    "ModelOut",
    "ModelRequest",
    "Readiness",
    "SampleLineage",
    "SampleList",
    "SampleOut",
    "SampleRequest",
]


class DeletedOut(BaseModel):
    """What a DELETE removed. Rows are gone when it answers; objects are gone too, except the
    `objects_pending` that a background sweep removes once nothing can still need them."""

    kind: str = Field(description="dataset, file, corpus, model, sample or job")
    id: str
    rows: dict[str, int] = Field(description="rows deleted, per table")
    objects_deleted: int = Field(description="objects removed from the store by this request")
    objects_pending: int = Field(
        description="object deletes left to the background sweep (a recently written shared "
        "object, or the rest of a large delete)"
    )


# -- API keys -------------------------------------------------------------------------------
# Ten years: longer is "never", which is what leaving it out says.
MAX_EXPIRES_IN_S = 10 * 365 * 86400


class KeyOut(Out):
    """An API key as it is shown: never its secret or hash, only the prefix to recognise it."""

    id: str
    owner: str = Field(description="the owner's name")
    name: str = Field(description="a label, e.g. the machine the key lives on")
    prefix: str = Field(description="the secret's first characters")
    scopes: list[str] = Field(description=f"what the key may do: {', '.join(SCOPES)}")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")


class KeyCreate(In):
    """What `POST /v1/admin/keys` takes: whose key, what it may do, for how long."""

    owner: str = Field(min_length=1, max_length=200, description="owner name (created if new)")
    scopes: list[str] = Field(
        default=["read", "write", "train"],
        max_length=len(SCOPES),
        description=f"any of {', '.join(SCOPES)}; `admin` implies all",
    )
    name: str = Field(default="", max_length=200, description="a label for the key")
    expires_in_s: int | None = Field(
        default=None,
        ge=60,
        le=MAX_EXPIRES_IN_S,
        description="seconds until the key stops working (never when absent)",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"owner": "alice", "scopes": ["read"], "name": "dashboard"}]
        }
    )


class KeyCreated(KeyOut):
    secret: str = Field(description="the key itself: shown this once, only its hash is kept")


class OwnerLimits(BaseModel):
    """`PUT /v1/admin/owners/{name}/limits`: the owner's overrides of the limit settings,
    replacing the old ones; a limit not named uses the server default (`{}` clears them)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"overrides": {"max_model_params": 2_000_000_000, "rate_jobs_burst": 100}}]
        },
    )

    overrides: dict[str, Any] = Field(default_factory=dict)
