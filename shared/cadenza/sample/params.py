"""The `sample` job's parameters, torch-free: the API, the CLI and the sampler share the bounds.

`SamplingOptions` holds how logits become tokens; `SamplingParams` (the sampler's own value
type, in `generate.py`) validates against it, so a request the API accepts is one the sampler
runs and the other way round. Two meanings are fixed here once: `temperature=0` is greedy
decoding (argmax), and `min_p=0` (or null) turns the min-p filter off.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cadenza.sample.modes import EditFields
from cadenza.tokenize.controls import CONTROL_ORDER, MAX_TRACK_ENTRIES, check_tags


class SamplingOptions(BaseModel):
    """Logits → token: temperature, filters, repetition penalty, length, seed."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(default=1.0, ge=0, le=100, description="0 = greedy (argmax)")
    top_k: int | None = Field(default=None, ge=1, description="keep the k most likely tokens")
    top_p: float | None = Field(
        default=None, gt=0, le=1, description="keep the smallest set whose probability reaches p"
    )
    min_p: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="drop tokens less likely than min_p × the most likely one; 0 = off",
    )
    repetition_penalty: float = Field(
        default=1.0, ge=1.0, le=5.0, description="> 1 discourages recently seen tokens"
    )
    repetition_window: int = Field(
        default=64, ge=1, le=8192, description="recent tokens the penalty looks at"
    )
    max_new_tokens: int = Field(default=256, ge=1, le=65536)
    seed: int | None = Field(
        default=None, ge=0, le=2**63 - 1, description="same seed, same music; null = random"
    )
    stop_at_eos: bool = Field(default=True, description="end a variation at the end-of-piece token")
    compile: bool | None = Field(
        default=None,
        description="compile the model's decode step with torch.compile (CPU; CUDA replays a "
        "CUDA graph anyway): true, false, or null = only when the job is long enough to "
        "repay the one-off compile or the worker compiled the same shapes before",
    )
    quantize: Literal["none", "int8"] = Field(
        default="none",
        description="int8 = decode with a copy of the model whose linear layers hold int8 "
        "weights (one scale per output channel) and bfloat16 activations: about 2x the tokens "
        "per second of float32 at batch 1 on CPU, at a small measured change of the "
        "probabilities; none = the model as trained (float32 on CPU)",
    )

    constrained: bool = Field(
        default=True,
        description="mask every token the tokenizer's grammar forbids at that point (a pitch "
        "without its velocity or duration, a position going backwards in a bar, half a tuple); "
        "false samples the model's raw choice, and meta.invalid_tokens counts the violations",
    )

    @field_validator("min_p")
    @classmethod
    def _zero_is_off(cls, v: float | None) -> float | None:
        return None if v == 0 else v


class SampleRequest(SamplingOptions, EditFields):
    """`POST /v1/models/{id}/samples`: a primer (or none), how many, how long, how to sample."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"n": 4, "max_new_tokens": 512, "temperature": 0.9, "top_k": 20, "seed": 7},
                {
                    "primer_file_id": "c7e2a9d4b1f84e6a9d3c2b1a0f9e8d76",
                    "primer_bars": 4,
                    "n": 2,
                    "max_bars": 16,
                    "top_p": 0.95,
                },
                {
                    "primer_sample_id": "5b0e1f3c9a7d4e2f8c6b4a2d0e9f7c5a",
                    "primer_bars": 8,
                    "max_new_tokens": 512,
                    "min_p": 0.3,
                    "seed": 3,
                },
            ]
        }
    )

    primer_file_id: str | None = Field(default=None, max_length=64)
    primer_sample_id: str | None = Field(
        default=None,
        max_length=64,
        description="continue one of your samples: its MIDI is the primer (re-encoded with "
        "this model's tokenizer, so a sample of any model works); the new samples record it "
        "as their parent_sample_id",
    )
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
    controls: dict[str, Any] | None = Field(
        default=None,
        description="attribute controls, in musical units, for a model trained on a corpus "
        'with controls (see its capabilities): per piece {"key": "Dm", "tempo": 90, '
        '"time_signature": "3/4", "program": 0}; per bar one value for every bar '
        '{"note_density": 6} or a list indexed by bar (null = free) {"polyphony": [2, 4, null]}; '
        '"pitch_range": [lowest, highest] MIDI pitches; "duration": mean note length in beats; '
        "per track (a model whose capabilities have `tracks`: multitrack MMM) "
        '"tracks": [{"note_density": 4}, {"note_density": 12, "polyphony": [null, 1]}], one '
        "object of per-bar controls per track in the order the tracks are written (bars "
        'counted within the track), or chosen by program: [{"program": 33, "note_density": 4}]',
    )
    tags: list[str] | None = Field(
        default=None, max_length=16, description='style tags the model learned, e.g. ["baroque"]'
    )
    n: int = Field(default=1, ge=1, le=64)
    max_bars: int | None = Field(
        default=None, ge=1, le=4096, description="stop once the output has this many bars"
    )
    max_seconds: float | None = Field(
        default=None, gt=0, le=7200, description="stop once the output lasts this long"
    )
    checkpoint: str = Field(
        default="best", max_length=64, description="best, latest or a checkpoint id"
    )
    min_notes: int = Field(
        default=10, ge=0, le=10_000, description="a variation with fewer new notes is near-empty"
    )
    resample_empty: int = Field(
        default=2, ge=0, le=8, description="re-sample a near-empty variation up to this many times"
    )
    max_copied_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="copy check: re-sample (at most 3 more times) a variation whose share of "
        "8-note n-grams found in the training data is above this; meta.novelty.over_limit says "
        "if none got below it. null = report only",
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else check_tags(v, "tags")

    @field_validator("controls")
    @classmethod
    def _controls(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for name, value in (v or {}).items():
            if name == "tracks":
                if not isinstance(value, list) or len(value) > MAX_TRACK_ENTRIES:
                    raise ValueError(f"tracks: a list of at most {MAX_TRACK_ENTRIES} objects")
                continue
            if name not in CONTROL_ORDER:
                raise ValueError(
                    f"{name!r} is not a control; known: {', '.join(CONTROL_ORDER)} and tracks"
                )
            if isinstance(value, list) and len(value) > 4096:
                raise ValueError(f"{name}: a per-bar list has at most 4096 entries")
        return v

    @model_validator(mode="after")
    def _one_primer(self) -> SampleRequest:
        given = [name for name in PRIMER_FIELDS if getattr(self, name)]
        if len(given) > 1:
            raise ValueError(f"give one primer, not several: {', '.join(given)}")
        if (self.primer_bars or self.primer_seconds) and not self.midi_primer:
            raise ValueError("primer_bars/primer_seconds need a primer_file_id or primer_sample_id")
        if self.force_tokens and (self.controls or self.tags):
            raise ValueError("give controls/tags or force_tokens, not both")
        if self.force_tokens and given:
            raise ValueError(
                "force_tokens sets how a new piece starts; it cannot be combined with a primer"
            )
        return self

    @property
    def midi_primer(self) -> bool:
        """Whether the primer is MIDI (a file or a sample), cut by primer_bars/primer_seconds."""
        return bool(self.primer_file_id or self.primer_sample_id)


#: Why an audio model trained with `train.audio_prior` pair refuses `tags` (the API's 422 and
#: the sample job's error): its coarse prior reads no conditioning prefix.
PAIR_NO_TAGS = (
    "tags: this model is a coarse prior + upsampler (train.audio_prior pair), whose prior reads "
    "no style tags; leave tags out, or train a flat model (the default) on a corpus built with "
    "learn_tags"
)

# The ways to give a primer; a request gives at most one.
PRIMER_FIELDS = ("primer_file_id", "primer_sample_id", "primer_tokens")


class SampleParams(SampleRequest):
    """What a `sample` job runs with: the request plus the model and checkpoint it resolved to."""

    model_id: str
    checkpoint_id: str


def check_for_model(
    request: SampleRequest, *, vocab_size: int, tokenizer_hash: str, token_names: list[str]
) -> None:
    """Refuse token-level inputs that do not belong to the model's tokenizer.

    Raises `Conflict` for tokens from another tokenizer and `InvalidParams` for ids outside
    the vocabulary or names the tokenizer does not have, each saying what to send instead.
    """
    from cadenza.validation import Conflict, InvalidParams

    if request.primer_tokens and request.primer_tokenizer_hash not in (None, tokenizer_hash):
        raise Conflict(
            "primer_tokens come from another tokenizer than this model's "
            f"({tokenizer_hash[:12]}…); re-encode the primer with the model's corpus "
            "tokenizer or send a MIDI primer_file_id instead",
            code="tokenizer_mismatch",
        )
    bad = [t for t in request.primer_tokens or [] if not 0 <= t < vocab_size]
    if bad:
        raise InvalidParams(
            f"primer_tokens {bad[:5]} are outside this model's vocabulary "
            f"(0..{vocab_size - 1}); they must come from the same tokenizer",
            code="primer_tokens_out_of_vocab",
        )
    if not request.force_tokens:
        return
    names = set(token_names)
    if not names:
        raise InvalidParams(
            "this model's tokenizer has no named tokens to force (BPE, midichar, chord-duration "
            "or a multi-vocabulary tokenizer); train on a plain MidiTok corpus to use force_tokens",
            code="no_attribute_tokens",
        )
    unknown = [t for t in request.force_tokens if t not in names]
    if unknown:
        prefix = unknown[0].split("_", 1)[0] + "_"
        like = sorted(n for n in names if n.startswith(prefix))[:8]
        raise InvalidParams(
            f"force_tokens {unknown[:5]} are not in this model's vocabulary"
            + (f"; tokens like it: {like}" if like else ""),
            code="unknown_tokens",
        )


def check_controls(request: SampleRequest, capabilities: dict[str, Any] | None) -> None:
    """Refuse controls or tags the model did not learn, or values outside what it learned
    (`InvalidParams` naming the control and its allowed range or values)."""
    from cadenza.tokenize.controls import default_capabilities, resolve_controls
    from cadenza.validation import InvalidParams

    if not request.controls and not request.tags:
        return
    try:
        resolve_controls(request.controls, request.tags, capabilities or default_capabilities())
    except ValueError as exc:
        field = str(exc).split(":", 1)[0]
        raise InvalidParams(
            str(exc), code="invalid_controls", details=[{"field": field, "message": str(exc)}]
        ) from exc
