"""The `tokenize` job's parameters: what a corpus request may say, and what the job runs with.

Torch-free, so the API validates requests with the same model the worker reads. A request
(`CorpusRequest`) names a tokenizer or a preset plus overrides; `TokenizeParams.from_request`
resolves that into one validated `TokenizerSpec` (and `AugmentSpec`), which is what the job
stores and the handler reads.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cadenza.limits.lists import check_nested_lists
from cadenza.tokenize.controls import ControlName
from cadenza.tokenize.spec import AugmentSpec, TokenizerSpec
from cadenza.validation import InvalidParams


class CleanParams(BaseModel):
    """Cleaning before tokenization (see `cadenza.midi.clean.CleanOptions` for each rule)."""

    model_config = ConfigDict(extra="forbid")

    drop_drums: bool = True
    merge_tracks: bool = True
    program: int = Field(default=0, ge=0, le=127)
    keep_programs: list[int] | None = Field(default=None, max_length=128)
    quantize: int | None = Field(default=None, ge=1, le=96)
    min_notes: int = Field(default=8, ge=0, le=100_000)


#: Files per shard when a corpus request does not say how many shards (see `shard_count`).
FILES_PER_SHARD = 1000
MAX_SHARDS = 64


def shard_count(n_files: int, requested: int | None) -> int:
    """How many shard jobs tokenize `n_files`: the request's `shards`, else one per
    `FILES_PER_SHARD` files (at most `MAX_SHARDS`), never more than there are files.

    A shard is the unit a free worker can pick up, so more shards than workers lets a build use
    every worker that frees up; each shard costs a job row, a process pool start-up and one
    spool object, which is why a shard is not a single file.
    """
    wanted = requested if requested is not None else -(-n_files // FILES_PER_SHARD)
    return max(1, min(wanted, MAX_SHARDS, n_files))


class CorpusRequest(BaseModel):
    """`POST /v1/corpora`: a dataset, a tokenizer (or preset) and how to split and augment."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"dataset_id": "3f0c2b9e8d7a4c1b9e6f5a4d3c2b1a09", "preset": "remi-colab"},
                {
                    "dataset_id": "3f0c2b9e8d7a4c1b9e6f5a4d3c2b1a09",
                    "tokenizer": "REMI",
                    "tokenizer_config": {"use_chords": True, "use_tempos": True},
                    "bpe": {"vocab_size": 2000},
                    "split": [0.9, 0.1, 0.0],
                    "seed": 1,
                },
                {
                    "dataset_id": "3f0c2b9e8d7a4c1b9e6f5a4d3c2b1a09",
                    "base_model_id": "9a8b7c6d5e4f4a3b8c2d1e0f9a8b7c6d",
                },
            ]
        },
    )

    dataset_id: str = Field(min_length=1, max_length=64)
    base_model_id: str | None = Field(
        default=None,
        max_length=64,
        description="tokenize with this model's tokenizer (yours or a public model's, BPE "
        "vocabulary included), so the corpus can train an adapter of it; leave tokenizer, "
        "preset, tokenizer_config and bpe unset",
    )
    tokenizer: str | None = Field(
        default=None, max_length=64, description="tokenizer name (REMI, TSD, …); or use preset"
    )
    preset: str | None = Field(
        default=None, max_length=64, description="named tokenizer preset, e.g. remi-chords-tempos"
    )
    tokenizer_config: dict[str, Any] = Field(default_factory=dict)
    bpe: dict[str, Any] | None = None
    augment: dict[str, Any] | None = None
    clean: CleanParams = Field(default_factory=CleanParams)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    controls: list[ControlName] = Field(
        default_factory=list,
        max_length=8,
        description="attribute controls to learn as conditioning tokens: per piece tempo, "
        "time_signature, key, program; per bar (REMI) note_density, polyphony, pitch_range, "
        "duration. A sample request then sets them (see the model's capabilities)",
    )
    learn_tags: bool = Field(
        default=False,
        description="learn each file's style tags (its own and its dataset's) as tokens",
    )
    shards: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARDS,
        description=(
            "tokenize in this many parts, each a `tokenize_shard` job any cpu worker may run, "
            f"merged into one corpus (the same as 1 part); default: one per {FILES_PER_SHARD} "
            "files"
        ),
    )

    @model_validator(mode="after")
    def _split_sums_to_one(self) -> CorpusRequest:
        for name in ("tokenizer_config", "bpe", "augment"):
            check_nested_lists(getattr(self, name), name)
        if any(x < 0 for x in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise ValueError("split must be three non-negative fractions summing to 1")
        if self.split[0] <= 0:
            raise ValueError("split: the train fraction must be > 0")
        return self


class TokenizeParams(CorpusRequest):
    """What a `tokenize` job runs with: the request plus its resolved, validated specs."""

    tokenizer_spec: TokenizerSpec
    augment: AugmentSpec | None = None  # type: ignore[assignment]

    @classmethod
    def from_request(
        cls, request: CorpusRequest, *, base_spec: dict[str, Any] | None = None
    ) -> TokenizeParams:
        """Resolve preset + overrides; InvalidParams (naming the field) when they do not fit.

        `base_spec` is the tokenizer spec of `request.base_model_id`'s corpus: the job then
        tokenizes with that model's saved tokenizer, and the request may not name another.
        """
        from cadenza.tokenize.presets import resolve_spec

        if request.base_model_id is not None:
            assert base_spec is not None, "the caller looks up the base model's tokenizer spec"
            for field in ("tokenizer", "preset", "tokenizer_config", "bpe"):
                if getattr(request, field):
                    why = "base_model_id fixes the tokenizer (the base model's); leave it unset"
                    raise InvalidParams(
                        f"invalid request: {field}: {why}",
                        code="invalid_tokenizer",
                        details=[{"field": field, "message": why}],
                    )
        try:
            if base_spec is not None:
                spec = TokenizerSpec.model_validate(base_spec)
            else:
                spec = resolve_spec(
                    preset=request.preset,
                    tokenizer=request.tokenizer,
                    config=request.tokenizer_config,
                    bpe=request.bpe,
                )
        except ValidationError as exc:
            raise InvalidParams.from_validation("tokenizer", exc) from exc
        except ValueError as exc:
            raise InvalidParams(str(exc), code="invalid_tokenizer") from exc
        if request.controls or request.learn_tags:
            try:
                spec = TokenizerSpec.model_validate(
                    {
                        **spec.model_dump(mode="json"),
                        "controls": request.controls,
                        "learn_tags": request.learn_tags,
                    }
                )
            except ValidationError as exc:
                msg = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
                field = "controls" if request.controls else "learn_tags"
                raise InvalidParams(
                    msg,
                    code="invalid_controls",
                    details=[{"field": field, "message": msg}],
                ) from exc
        try:
            augment = AugmentSpec.model_validate(request.augment) if request.augment else None
        except ValidationError as exc:
            raise InvalidParams.from_validation("augment", exc) from exc
        fields = request.model_dump(exclude={"augment"})
        fields["clean"] = _preset_clean(request)
        return cls(**fields, tokenizer_spec=spec, augment=augment)


def _preset_clean(request: CorpusRequest) -> dict[str, Any]:
    """The request's cleaning over its preset's (`PRESET_CLEAN`): fields the request sets win."""
    from cadenza.tokenize.presets import ALIASES, PRESET_CLEAN

    given = request.clean.model_dump()
    preset = ALIASES.get(request.preset or "", request.preset or "")
    defaults = PRESET_CLEAN.get(preset, {})
    explicit = request.clean.model_fields_set if "clean" in request.model_fields_set else set()
    return {**given, **{k: v for k, v in defaults.items() if k not in explicit}}


class TokenizeShardParams(BaseModel):
    """What a `tokenize_shard` job runs with: part `shard` of its parent `tokenize` job.

    The files of the part, with their split, are in the object `manifest_key` (written by the
    parent; a dataset may change while the job waits, the manifest does not); the job writes
    its spool of per-file symbols to `out_key`, which the parent merges.
    """

    model_config = ConfigDict(extra="forbid")

    parent_job_id: str = Field(min_length=1, max_length=64)
    shard: int = Field(ge=0)
    shards: int = Field(ge=1, le=MAX_SHARDS)
    manifest_key: str = Field(min_length=1, max_length=1024)
    out_key: str = Field(min_length=1, max_length=1024)
    tokenize: TokenizeParams
