"""What a user asks for when they create a corpus: tokenizer, its options, BPE, augmentation.

These are pydantic models so the API can take them as JSON and store them beside the corpus,
and so a wrong option fails at request time with the option's name in the message instead of
deep inside a worker. Importing this module does not import MidiTok or torch (API process).
The option models live in :mod:`cadenza.tokenize.options` (own encodings, quarter-vq) and
:mod:`cadenza.tokenize.miditok_options` (MidiTok); they are re-exported here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from cadenza.tokenize.controls import CONTROL_ORDER, ControlName, check_controls_spec
from cadenza.tokenize.miditok_options import (
    MIDITOK_OPTION_TYPES,
    import_miditok,
    make_miditok,
    miditok_class,
    miditok_config,
    validate_miditok_config,
)
from cadenza.tokenize.options import (
    CODES_PER_QUARTER,
    MAX_CHAR_SYMBOLS,
    AudioVQConfig,
    ChordDurationConfig,
    MidiCharConfig,
    QuarterVQConfig,
)

#: MidiTok 3.1 tokenizers that produce one stream of ids (what our single-stream models eat).
MIDITOK_SINGLE_STREAM: tuple[str, ...] = (
    "REMI",
    "TSD",
    "MIDILike",
    "Structured",
    "PerTok",
    "MMM",
    "BEAT",
)
#: MidiTok 3.1 tokenizers whose tokens are tuples (one id per sub-vocabulary per step); Cadenza
#: flattens each tuple into consecutive ids so that single-stream models can read them.
MIDITOK_MULTI_VOCAB: tuple[str, ...] = ("CPWord", "Octuple", "MuMIDI")
#: Cadenza's own encodings: one character per note (midichar); separator + (pitch, duration)
#: pairs on a 16th-note grid (chord-duration).
OWN_TOKENIZERS: tuple[str, ...] = ("midichar", "chord-duration")
#: Learned tokenizers whose ids are codes of a trained network (a VQ-VAE): no subwords.
VQ_TOKENIZERS: tuple[str, ...] = ("quarter-vq", "audio-vq")
#: Tokenizers that read audio files (not MIDI): a corpus of them needs a dataset with audio.
AUDIO_TOKENIZERS: tuple[str, ...] = ("audio-vq",)

TokenizerName = Literal[
    "REMI",
    "TSD",
    "MIDILike",
    "Structured",
    "PerTok",
    "MMM",
    "BEAT",
    "CPWord",
    "Octuple",
    "MuMIDI",
    "midichar",
    "chord-duration",
    "quarter-vq",
    "audio-vq",
]

#: The option model of each tokenizer that is not MidiTok's.
_OPTION_MODELS: dict[str, type[BaseModel]] = {
    "midichar": MidiCharConfig,
    "chord-duration": ChordDurationConfig,
    "quarter-vq": QuarterVQConfig,
    "audio-vq": AudioVQConfig,
}


class BPESpec(BaseModel):
    """Learned merges on top of the base tokens (Hugging Face ``tokenizers`` models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=8, le=1_000_000, description="final vocabulary size")
    model: Literal["BPE", "Unigram", "WordPiece"] = "BPE"


# Augmented copies of one training file at most: an unbounded offset list once grew a corpus
# 1,700-fold.
MAX_AUGMENT_COPIES = 100


class AugmentSpec(BaseModel):
    """Copies of each *training* file shifted in pitch, velocity or duration (MidiTok's offsets).

    Validation and test files are never augmented, so the metrics measure real music.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pitch_offsets: list[int] = Field(
        default_factory=list, max_length=16, description="semitones, e.g. [-2, 2]"
    )
    octaves: int = Field(default=0, ge=0, le=4, description="adds ±12, ±24, … semitones up to this")
    velocity_offsets: list[int] = Field(
        default_factory=list, max_length=16, description="MIDI velocity units"
    )
    duration_offsets: list[float] = Field(
        default_factory=list, max_length=16, description="in quarter notes"
    )
    all_combinations: bool = False  # also combine pitch × velocity × duration offsets
    restrict_to_tessitura: bool = True  # skip pitch shifts that leave the instrument's range

    @model_validator(mode="after")
    def _check(self) -> AugmentSpec:
        if any(not -48 <= p <= 48 or p == 0 for p in self.pitch_offsets):
            raise ValueError("pitch_offsets must be non-zero and within ±48 semitones")
        if any(not -127 < v < 127 or v == 0 for v in self.velocity_offsets):
            raise ValueError("velocity_offsets must be non-zero and within ±126")
        if any(not -4 <= d <= 4 or d == 0 for d in self.duration_offsets):
            raise ValueError("duration_offsets must be non-zero and within ±4 quarter notes")
        if (copies := self.copies_per_file()) > MAX_AUGMENT_COPIES:
            raise ValueError(
                f"these offsets make {copies} copies of every training file; the limit is "
                f"{MAX_AUGMENT_COPIES} (fewer offsets, or all_combinations false)"
            )
        return self

    def copies_per_file(self) -> int:
        """Augmented copies made of each training file (the corpus grows by this factor + 1)."""
        sizes = (
            len(self.all_pitch_offsets()),
            len(self.velocity_offsets),
            len(self.duration_offsets),
        )
        if self.all_combinations:
            return (sizes[0] + 1) * (sizes[1] + 1) * (sizes[2] + 1) - 1
        return sum(sizes)

    def all_pitch_offsets(self) -> list[int]:
        """Semitone offsets including the octave ones, sorted and without duplicates."""
        octs = [12 * k * s for k in range(1, self.octaves + 1) for s in (-1, 1)]
        return sorted(set(self.pitch_offsets) | set(octs))

    @property
    def enabled(self) -> bool:
        """True when at least one offset would produce a copy."""
        return bool(self.all_pitch_offsets() or self.velocity_offsets or self.duration_offsets)


class TokenizerSpec(BaseModel):
    """Tokenizer name, its options and optional BPE: everything needed to rebuild it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TokenizerName
    config: dict[str, Any] = Field(default_factory=dict)
    bpe: BPESpec | None = None
    # Conditioning tokens the corpus carries (`cadenza.tokenize.controls`). Left out of the
    # dump when unset, so that tokenizers built before they existed keep their hash.
    controls: list[ControlName] = Field(default_factory=list, max_length=len(CONTROL_ORDER))
    learn_tags: bool = False

    @model_serializer(mode="wrap")
    def _drop_unset_controls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if not out.get("controls"):
            out.pop("controls", None)
        if not out.get("learn_tags"):
            out.pop("learn_tags", None)
        return out

    @model_validator(mode="after")
    def _validate_config(self) -> TokenizerSpec:
        check_controls_spec(
            self.name, self.controls, self.learn_tags, self.bpe is not None, self.config
        )
        object.__setattr__(self, "controls", [c for c in CONTROL_ORDER if c in self.controls])
        if self.name in MIDITOK_MULTI_VOCAB and self.bpe is not None:
            raise ValueError(
                f"bpe: {self.name} tokens are tuples (one id per sub-vocabulary), flattened into "
                "the stream one field after another; subword merges are not defined for them. "
                "Leave bpe empty, or use REMI, TSD, MIDILike, Structured, PerTok, MMM or BEAT."
            )
        if self.name in VQ_TOKENIZERS and self.bpe is not None:
            raise ValueError(
                f"bpe: {self.name} ids are codes of a learned VQ-VAE; "
                "subword merges are not defined for them. Leave bpe empty."
            )
        if self.name in OWN_TOKENIZERS or self.name in VQ_TOKENIZERS:
            model = _OPTION_MODELS[self.name]
            try:
                cfg = model.model_validate(self.config)
            except ValidationError as e:
                msgs = [
                    f"config.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
                ]
                raise ValueError("; ".join(msgs)) from None
            canon = cfg.model_dump(mode="json")
        else:
            canon = validate_miditok_config(self.name, self.config)
        object.__setattr__(self, "config", canon)
        return self

    @property
    def is_miditok(self) -> bool:
        """True for MidiTok's tokenizers, False for our own encodings."""
        return self.name not in OWN_TOKENIZERS and self.name not in VQ_TOKENIZERS


__all__ = [
    "AUDIO_TOKENIZERS",
    "CODES_PER_QUARTER",
    "AudioVQConfig",
    "MAX_CHAR_SYMBOLS",
    "MIDITOK_MULTI_VOCAB",
    "MIDITOK_OPTION_TYPES",
    "MIDITOK_SINGLE_STREAM",
    "OWN_TOKENIZERS",
    "VQ_TOKENIZERS",
    "AugmentSpec",
    "BPESpec",
    "ChordDurationConfig",
    "MidiCharConfig",
    "QuarterVQConfig",
    "TokenizerName",
    "TokenizerSpec",
    "import_miditok",
    "make_miditok",
    "miditok_class",
    "miditok_config",
    "validate_miditok_config",
]
