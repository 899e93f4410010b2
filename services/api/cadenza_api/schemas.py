"""Request and response bodies. Field limits here are the first line against bad input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer, model_validator


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


# -- datasets and files --------------------------------------------------------------------
class DatasetCreate(In):
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=5000)


class DatasetOut(Out):
    id: str
    name: str
    description: str
    created_at: datetime
    file_count: int = 0


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


class FileList(BaseModel):
    files: list[FileOut]


# -- jobs ----------------------------------------------------------------------------------
class JobOut(Out):
    id: str
    type: str
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
class CleanIn(In):
    drop_drums: bool = True
    merge_tracks: bool = True
    program: int = Field(default=0, ge=0, le=127)
    keep_programs: list[int] | None = None
    quantize: int | None = Field(default=None, ge=1, le=96)
    min_notes: int = Field(default=8, ge=0, le=100_000)


class CorpusCreate(In):
    dataset_id: str = Field(min_length=1, max_length=64)
    tokenizer: str | None = Field(
        default=None, max_length=64, description="tokenizer name (REMI, TSD, …); or use preset"
    )
    preset: str | None = Field(
        default=None, max_length=64, description="named tokenizer preset, e.g. remi-colab"
    )
    tokenizer_config: dict[str, Any] = Field(default_factory=dict)
    bpe: dict[str, Any] | None = None
    augment: dict[str, Any] | None = None
    clean: CleanIn = Field(default_factory=CleanIn)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> CorpusCreate:
        if any(x < 0 for x in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError("split must be three non-negative fractions summing to 1")
        if self.split[0] <= 0:
            raise ValueError("split: the train fraction must be > 0")
        return self


class CorpusOut(Out):
    id: str
    dataset_id: str
    params: dict[str, Any]
    tokenizer_hash: str
    vocab_size: int
    stats: dict[str, Any]
    created_at: datetime


# -- models --------------------------------------------------------------------------------
class ModelCreate(In):
    corpus_id: str = Field(min_length=1, max_length=64)
    architecture: str = Field(default="music-transformer", max_length=64)
    preset: str | None = Field(default="tiny", max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)
    init_checkpoint_id: str | None = Field(default=None, max_length=64)


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
    checkpoints: list[CheckpointOut] = []
    metrics: list[MetricOut] = []


# -- samples -------------------------------------------------------------------------------
class SampleCreate(In):
    primer_file_id: str | None = Field(default=None, max_length=64)
    primer_bars: int | None = Field(default=None, ge=1, le=512)
    primer_seconds: float | None = Field(default=None, gt=0, le=3600)
    primer_start_bar: int = Field(
        default=1, ge=1, le=100_000, description="take the primer from this bar (1 = the start)"
    )
    primer_tokens: list[int] | None = Field(default=None, max_length=65536)
    primer_tokenizer_hash: str | None = Field(
        default=None,
        max_length=64,
        description="hash of the tokenizer primer_tokens came from (checked against the model)",
    )
    include_primer: bool = True
    force_tokens: list[str] | None = Field(
        default=None,
        max_length=32,
        description="attribute control: token names the piece must start with, e.g. "
        '["Bar_None", "TimeSig_3/4", "Position_0", "Tempo_80.65"] (see the corpus token_names)',
    )
    n: int = Field(default=1, ge=1, le=64)
    max_new_tokens: int = Field(default=256, ge=1, le=65536)
    stop_at_eos: bool = Field(default=True, description="end a variation at the end-of-piece token")
    max_bars: int | None = Field(
        default=None, ge=1, le=4096, description="stop once the output has this many bars"
    )
    max_seconds: float | None = Field(
        default=None, gt=0, le=7200, description="stop once the output lasts this long"
    )
    temperature: float = Field(default=1.0, gt=0, le=10)
    top_k: int | None = Field(default=None, ge=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    min_p: float | None = Field(default=None, ge=0, lt=1)
    repetition_penalty: float = Field(default=1.0, ge=1.0, le=5.0)
    repetition_window: int = Field(default=64, ge=1, le=8192)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    checkpoint: str = Field(default="best", max_length=64)

    @model_validator(mode="after")
    def _one_primer(self) -> SampleCreate:
        if self.primer_file_id and self.primer_tokens:
            raise ValueError("give primer_file_id or primer_tokens, not both")
        if (self.primer_bars or self.primer_seconds) and not self.primer_file_id:
            raise ValueError("primer_bars/primer_seconds need a primer_file_id")
        return self


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


class SampleList(BaseModel):
    samples: list[SampleOut]


# -- audio jobs ----------------------------------------------------------------------------
class ConvertIn(In):
    sample_rate: int = Field(default=16000, ge=4000, le=192_000)
    mono: bool = True


class CropIn(In):
    interval_s: float = Field(default=30.0, gt=0, le=3600)
    min_tail_s: float = Field(default=0.0, ge=0, le=3600)
    positions: list[float] | None = Field(default=None, max_length=9999)
    positions_text: str | None = Field(
        default=None, max_length=100_000, description="comma-separated seconds, e.g. 179,500,748"
    )


class AudioJobCreate(In):
    operation: Literal["convert", "crop", "transcribe"]
    file_ids: list[str] = Field(
        default_factory=list, max_length=10_000, description="audio files; empty = all of them"
    )
    convert: ConvertIn | None = None
    crop: CropIn | None = None
    transcribe: dict[str, Any] | None = None
