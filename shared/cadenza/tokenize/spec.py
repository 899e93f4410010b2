"""What a user asks for when they create a corpus: tokenizer, its options, BPE, augmentation.

These are pydantic models so the API can take them as JSON and store them beside the corpus,
and so a wrong option fails at request time with the option's name in the message instead of
deep inside a worker. Importing this module does not import MidiTok or torch (API process).
"""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
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
#: Our own encodings, ports of the earlier systems' formats (PRIOR_SYSTEMS B and C).
OWN_TOKENIZERS: tuple[str, ...] = ("midichar", "chord-duration")
#: Learned tokenizers whose ids are codes of a trained network (system E's VQ-VAE): no subwords.
VQ_TOKENIZERS: tuple[str, ...] = ("quarter-vq",)

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
]

#: Options MidiTok reads from ``TokenizerConfig.additional_params`` per tokenizer, with types.
_MIDITOK_EXTRA_PARAMS: dict[str, dict[str, Any]] = {
    "REMI": {
        "max_bar_embedding": int | None,
        "use_bar_end_tokens": bool,
        "add_trailing_bars": bool,
    },
    "MMM": {
        "base_tokenizer": Literal["REMI", "TSD", "MIDILike"],
        "max_bar_embedding": int | None,
        "use_bar_end_tokens": bool,
        "add_trailing_bars": bool,
    },
    "PerTok": {
        "ticks_per_quarter": int,
        "use_microtiming": bool,
        "max_microtiming_shift": float,
        "num_microtiming_bins": int,
        "use_position_toks": bool,
    },
    "Octuple": {"max_bar_embedding": int},
    "MuMIDI": {"max_bar_embedding": int},
}

#: Defaults we add so that tokenizers which need extra options work with an empty config.
_MIDITOK_EXTRA_DEFAULTS: dict[str, dict[str, Any]] = {
    "MMM": {"base_tokenizer": "REMI"},
    # Bar_0 … Bar_n are tokens of their own: 60 (MidiTok's default) cuts pieces after 60 bars
    "Octuple": {"max_bar_embedding": 256},
    "MuMIDI": {"max_bar_embedding": 256},
    "PerTok": {
        "ticks_per_quarter": 480,  # PerTok's own time grid; 480 is the common MIDI default
        "use_microtiming": False,  # microtiming matters for performances, not for scores
        "max_microtiming_shift": 0.125,  # PerTok reads it even when microtiming is off
        "num_microtiming_bins": 30,
    },
}

_TUPLE_KEY_FIELDS = ("beat_res", "beat_res_rest")


#: Every ``miditok.TokenizerConfig`` argument of MidiTok 3.1 with its type. A literal copy so the
#: API can validate specs without importing MidiTok (heavy); ``test_encodings`` checks it
#: against MidiTok's signature, so an upgrade that changes options fails loudly.
MIDITOK_OPTION_TYPES: dict[str, Any] = {
    "pitch_range": tuple[int, int],
    "beat_res": dict[tuple[int, int], int],
    "num_velocities": int,
    "special_tokens": cabc.Sequence[str],
    "encode_ids_split": Literal["bar", "beat", "no"],
    "use_velocities": bool,
    "use_note_duration_programs": cabc.Sequence[int],
    "use_chords": bool,
    "use_rests": bool,
    "use_tempos": bool,
    "use_time_signatures": bool,
    "use_key_signatures": bool,
    "use_sustain_pedals": bool,
    "use_pitch_bends": bool,
    "use_control_changes": bool,
    "control_change_numbers": cabc.Sequence[int],
    "control_change_n_bins": int,
    "use_programs": bool,
    "use_pitch_intervals": bool,
    "use_pitchdrum_tokens": bool,
    "default_note_duration": float,
    "beat_res_rest": dict[tuple[int, int], int],
    "chord_maps": dict[str, tuple],
    "chord_tokens_with_root_note": bool,
    "chord_unknown": tuple[int, int],
    "num_tempos": int,
    "tempo_range": tuple[int, int],
    "log_tempos": bool,
    "remove_duplicated_notes": bool,
    "delete_equal_successive_tempo_changes": bool,
    "time_signature_range": cabc.Mapping[int, list[int] | tuple[int, int]],
    "sustain_pedal_duration": bool,
    "pitch_bend_range": tuple[int, int, int],
    "delete_equal_successive_time_sig_changes": bool,
    "programs": cabc.Sequence[int],
    "one_token_stream_for_programs": bool,
    "program_changes": bool,
    "max_pitch_interval": int,
    "pitch_intervals_max_time_dist": float,
    "drums_pitch_range": tuple[int, int],
    "ac_polyphony_track": bool,
    "ac_polyphony_bar": bool,
    "ac_polyphony_min": int,
    "ac_polyphony_max": int,
    "ac_pitch_class_bar": bool,
    "ac_note_density_track": bool,
    "ac_note_density_track_min": int,
    "ac_note_density_track_max": int,
    "ac_note_density_bar": bool,
    "ac_note_density_bar_max": int,
    "ac_note_duration_bar": bool,
    "ac_note_duration_track": bool,
    "ac_repetition_track": bool,
    "ac_repetition_track_num_bins": int,
    "ac_repetition_track_num_consec_bars": int,
}


def _tuple_key(key: Any) -> tuple[int, int]:
    """Accept ``(0, 4)``, ``"0_4"``, ``"0-4"`` or ``"0,4"`` as a beat range key."""
    if isinstance(key, tuple | list) and len(key) == 2:
        return int(key[0]), int(key[1])
    if isinstance(key, str):
        for sep in ("_", "-", ","):
            if sep in key:
                a, b = key.strip("()[] ").split(sep)
                return int(a), int(b)
    raise ValueError(f"beat range {key!r} must look like '0_4' (start and end beat)")


def _normalize_beat_res(value: Any) -> dict[tuple[int, int], int]:
    """A beat resolution map from JSON (string keys or [start, end, res] triples)."""
    if isinstance(value, list):
        return {(int(a), int(b)): int(r) for a, b, r in value}
    if isinstance(value, dict):
        out = {_tuple_key(k): int(v) for k, v in value.items()}
        for (a, b), r in out.items():
            if not 0 <= a < b or r < 1:
                raise ValueError(f"beat range {(a, b)} -> {r} needs 0 <= start < end and res >= 1")
        return out
    raise ValueError("must be a mapping like {'0_4': 8, '4_12': 4}")


def validate_miditok_config(
    name: str, config: dict[str, Any], *, deep: bool = False
) -> dict[str, Any]:
    """Check ``config`` against MidiTok's options; return it JSON-ready and canonical.

    Raises ValueError naming the offending key. Types are checked without importing MidiTok;
    ``deep=True`` also builds the tokenizer to run MidiTok's cross-field checks (e.g. a rest
    resolution finer than ``beat_res``), which :func:`build_tokenizer` always does.
    """
    types = MIDITOK_OPTION_TYPES
    extra_types = _MIDITOK_EXTRA_PARAMS.get(name, {})
    out: dict[str, Any] = dict(_MIDITOK_EXTRA_DEFAULTS.get(name, {}))
    for key, value in config.items():
        if key in _TUPLE_KEY_FIELDS:
            try:
                beat = _normalize_beat_res(value)
            except (ValueError, TypeError) as e:
                raise ValueError(f"config.{key}: {e}") from None
            out[key] = {f"{a}_{b}": r for (a, b), r in sorted(beat.items())}
            continue
        if key in types:
            typ = types[key]
        elif key in extra_types:
            typ = extra_types[key]
        else:
            known = sorted(set(types) | set(extra_types))
            raise ValueError(
                f"config.{key}: not an option of the {name} tokenizer; known options: "
                + ", ".join(known)
            )
        try:
            val = TypeAdapter(typ).validate_python(value)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise ValueError(f"config.{key}: {msg} (got {value!r})") from None
        dumped = TypeAdapter(typ).dump_python(val, mode="json")
        # MidiTok numbers tokens in the order of these dicts; sort them so that a spec that went
        # through a key-reordering store (e.g. PostgreSQL JSONB) builds the same vocabulary.
        if key == "time_signature_range":
            dumped = {str(k): sorted(v) for k, v in sorted(dumped.items(), key=lambda x: int(x[0]))}
        elif key == "chord_maps":
            dumped = dict(sorted(dumped.items()))
        elif key in ("programs", "use_note_duration_programs", "control_change_numbers"):
            dumped = sorted(set(dumped))
        out[key] = dumped
    if deep:
        make_miditok(name, out)
    return out


def make_miditok(name: str, config: dict[str, Any]) -> Any:
    """Build the MidiTok tokenizer; MidiTok's own refusals become ValueError("config: ...")."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MidiTok warns about options it adjusts itself
            return miditok_class(name)(miditok_config(name, config))
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        raise ValueError(f"config: MidiTok refused these options for {name}: {e}") from None


def import_miditok() -> Any:
    """``import miditok`` without the 2.4 s (and ~300 MB) of torch it pulls in.

    MidiTok's ``__init__`` imports its optional ``pytorch_data`` module, which imports torch;
    tokenizing never needs it. While importing MidiTok we mark that one submodule as missing
    (``sys.modules[name] = None``, which MidiTok's own ``try/except ImportError`` tolerates) and
    then remove the mark, so ``import miditok.pytorch_data`` still works for whoever needs it.
    """
    import sys

    if "miditok" in sys.modules:
        return sys.modules["miditok"]
    blocked = "torch" not in sys.modules and "miditok.pytorch_data" not in sys.modules
    if blocked:
        sys.modules["miditok.pytorch_data"] = None  # type: ignore[assignment]
    try:
        import miditok
    finally:
        if blocked and sys.modules.get("miditok.pytorch_data", 0) is None:
            del sys.modules["miditok.pytorch_data"]
    return miditok


def miditok_class(name: str) -> type:
    """The MidiTok tokenizer class for ``name`` (imports MidiTok)."""
    cls: type = getattr(import_miditok(), name)
    return cls


def miditok_config(name: str, config: dict[str, Any]) -> Any:
    """A ``miditok.TokenizerConfig`` from a validated, JSON-form config dict."""
    miditok = import_miditok()

    kwargs = dict(_MIDITOK_EXTRA_DEFAULTS.get(name, {}))
    kwargs.update(config)
    for key in _TUPLE_KEY_FIELDS:
        if key in kwargs:
            kwargs[key] = _normalize_beat_res(kwargs[key])
    for key in ("pitch_range", "chord_unknown", "tempo_range", "drums_pitch_range"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    if "pitch_bend_range" in kwargs:
        kwargs["pitch_bend_range"] = tuple(kwargs["pitch_bend_range"])
    if "time_signature_range" in kwargs:
        kwargs["time_signature_range"] = {
            int(k): v for k, v in kwargs["time_signature_range"].items()
        }
    if "chord_maps" in kwargs:
        kwargs["chord_maps"] = {k: tuple(v) for k, v in kwargs["chord_maps"].items()}
    return miditok.TokenizerConfig(**kwargs)


class BPESpec(BaseModel):
    """Learned merges on top of the base tokens (Hugging Face ``tokenizers`` models)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(ge=8, le=1_000_000, description="final vocabulary size")
    model: Literal["BPE", "Unigram", "WordPiece"] = "BPE"


class AugmentSpec(BaseModel):
    """Copies of each *training* file shifted in pitch, velocity or duration (MidiTok's offsets).

    Validation and test files are never augmented, so the metrics measure real music.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    pitch_offsets: list[int] = Field(default_factory=list, description="semitones, e.g. [-2, 2]")
    octaves: int = Field(default=0, ge=0, le=4, description="adds ±12, ±24, … semitones up to this")
    velocity_offsets: list[int] = Field(default_factory=list, description="MIDI velocity units")
    duration_offsets: list[float] = Field(default_factory=list, description="in quarter notes")
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
        return self

    def all_pitch_offsets(self) -> list[int]:
        """Semitone offsets including the octave ones, sorted and without duplicates."""
        octs = [12 * k * s for k in range(1, self.octaves + 1) for s in (-1, 1)]
        return sorted(set(self.pitch_offsets) | set(octs))

    @property
    def enabled(self) -> bool:
        """True when at least one offset would produce a copy."""
        return bool(self.all_pitch_offsets() or self.velocity_offsets or self.duration_offsets)


#: Largest mixed-radix value that maps to a Unicode scalar (code points minus surrogates),
#: leaving the first 256 code points unused so that no symbol is whitespace or a control char.
MAX_CHAR_SYMBOLS = 0x110000 - 0x800 - 0x100


class MidiCharConfig(BaseModel):
    """Options of the "midichar" encoding (system B, without its ≥1.29 s duration flaw).

    One character per note packs (pitch, velocity level, onset step since the previous note,
    duration bin) in mixed radix. Onsets are quantized on an absolute grid first, so rounding
    never accumulates; gaps longer than ``max_step`` become extra "rest" characters instead of
    being clamped; durations use bins that are exact below 16 steps and 4 % apart above.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_per_second: int = Field(default=63, ge=8, le=1000)  # B: round(63·Δs): ~16 ms onset grid
    max_step: int = Field(default=63, ge=1, le=4095)  # B: 6 bits, so onset gaps up to 1 s per char
    velocity_levels: int = Field(default=3, ge=1, le=32)  # B: clamp(round(3v/127), 1, 3)
    # B had 32 duration bins of 0.31 s each; 64 bins keep the error ≤ 4 %
    duration_bins: int = Field(default=64, ge=2, le=1024)
    max_duration_s: float = Field(default=8.0, gt=0.0, le=120.0)  # longer notes are held this long
    pitch_range: tuple[int, int] = (21, 108)  # inclusive; 88 keys keep the radix in Unicode
    word_seconds: float = Field(default=2.0, gt=0.0, le=60.0)  # BPE merges never cross these marks

    @model_validator(mode="after")
    def _check(self) -> MidiCharConfig:
        lo, hi = self.pitch_range
        if not 0 <= lo <= hi <= 127:
            raise ValueError("pitch_range must satisfy 0 <= low <= high <= 127")
        n = (hi - lo + 2) * self.velocity_levels * (self.max_step + 1) * self.duration_bins
        if n > MAX_CHAR_SYMBOLS:
            raise ValueError(
                f"(pitches + 1) × velocity_levels × (max_step + 1) × duration_bins = {n:,} "
                f"does not fit in one Unicode character ({MAX_CHAR_SYMBOLS:,}); lower one"
            )
        if self.max_duration_s * self.steps_per_second < self.duration_bins:
            raise ValueError("max_duration_s × steps_per_second must be ≥ duration_bins")
        return self


class ChordDurationConfig(BaseModel):
    """Options of the "chord-duration" encoding (system C, without split leakage)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    steps_per_quarter: int = Field(default=4, ge=1, le=48)  # C: a 16th-note grid
    max_duration: int = Field(default=128, ge=1, le=1024)  # C: durations capped at 128 steps
    max_shift: int = Field(default=128, ge=1, le=1024)  # longer gaps use several separator groups
    pitch_range: tuple[int, int] = (21, 108)  # inclusive (C's vocabulary had room for 21-108)
    num_tempos: int = Field(default=10, ge=0, le=64)  # C: 10 tempo tokens; 0 = no tempo tokens
    tempo_range: tuple[float, float] = (40.0, 250.0)  # quarter notes per minute, log-spaced
    # the encoding has no velocity; decoded notes get this one
    velocity: int = Field(default=80, ge=1, le=127)
    word_steps: int = Field(default=16, ge=1, le=4096)  # BPE merges never cross these (one 4/4 bar)

    @model_validator(mode="after")
    def _check(self) -> ChordDurationConfig:
        lo, hi = self.pitch_range
        if not 0 <= lo <= hi <= 127:
            raise ValueError("pitch_range must satisfy 0 <= low <= high <= 127")
        if not 0 < self.tempo_range[0] < self.tempo_range[1]:
            raise ValueError("tempo_range must satisfy 0 < low < high")
        return self


#: Codes per quarter note in a quarter-vq stream: the VQ-VAE encoder's 8 × 2 grid. Here, not in
#: quarter_vq, so that the API can use it without importing symusic or numpy's MIDI code.
CODES_PER_QUARTER = 16


class QuarterVQConfig(BaseModel):
    """Options of the "quarter-vq" tokenizer: system E's VQ-VAE over quarter-note rolls.

    Each quarter note of the merged, non-drum tracks is an 88 × 32 binary roll (pitches 21-108,
    32 columns per quarter at the score's own ticks per quarter); the VQ-VAE trained by ``fit``
    turns it into 8 × 2 = 16 code ids. E's network was convs 1→32→64→128→128, 128-d codes,
    batch 512 (preset ``bachsformer-vq``); the defaults halve the widths and train 1500 steps
    of batch 32, so that ``fit`` takes about a minute on 2 CPU cores (tokenizing runs on the CPU
    worker) and still reconstructs better than E's sizes do in the same time.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    channels: tuple[int, int, int, int] = (16, 32, 64, 64)  # E: convs 1→32→64→128→128
    residual_blocks: int = Field(default=2, ge=0, le=8)  # E: 2
    codebook_size: int = Field(default=16, ge=2, le=4096)  # E: 16 codes
    code_dim: int = Field(default=64, ge=1, le=1024)  # E: 128 dims
    decay: float = Field(default=0.99, gt=0.0, lt=1.0)  # E: EMA codebook decay 0.99
    commitment: float = Field(default=0.25, ge=0.0, le=10.0)  # E: 0.25
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)  # E: Adam 1e-3
    batch_size: int = Field(default=32, ge=1, le=4096)  # E: 512
    steps: int = Field(default=1500, ge=0, le=1_000_000)  # optimizer steps of fit()
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    holdout_fraction: float = Field(default=0.1, ge=0.0, le=0.5)  # quarters kept out of fit
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)  # E: sigmoid > 0.5 is a note cell
    velocity: int = Field(default=100, ge=1, le=127)  # E: decoded notes have velocity 100
    qpm: float = Field(default=120.0, gt=0.0, le=1000.0)  # tempo written into decoded MIDI

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, v: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        if any(not 1 <= c <= 1024 for c in v):
            raise ValueError("channels must be four integers between 1 and 1024")
        return v


class TokenizerSpec(BaseModel):
    """Tokenizer name, its options and optional BPE: everything needed to rebuild it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: TokenizerName
    config: dict[str, Any] = Field(default_factory=dict)
    bpe: BPESpec | None = None

    @model_validator(mode="after")
    def _validate_config(self) -> TokenizerSpec:
        if self.name in MIDITOK_MULTI_VOCAB and self.bpe is not None:
            raise ValueError(
                f"bpe: {self.name} tokens are tuples (one id per sub-vocabulary), flattened into "
                "the stream one field after another; subword merges are not defined for them. "
                "Leave bpe empty, or use REMI, TSD, MIDILike, Structured, PerTok, MMM or BEAT."
            )
        if self.name in VQ_TOKENIZERS and self.bpe is not None:
            raise ValueError(
                f"bpe: {self.name} ids are codes of a learned VQ-VAE, 16 per quarter note; "
                "subword merges are not defined for them. Leave bpe empty."
            )
        if self.name in OWN_TOKENIZERS or self.name in VQ_TOKENIZERS:
            models: dict[str, type[BaseModel]] = {
                "midichar": MidiCharConfig,
                "chord-duration": ChordDurationConfig,
                "quarter-vq": QuarterVQConfig,
            }
            model = models[self.name]
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


#: Beat resolution of system A: 8 positions per beat in the first 4 beats, 4 up to 12 beats.
_COLAB_BEAT_RES = {"0_4": 8, "4_12": 4}

#: Ready-made specs reproducing the earlier systems (PRIOR_SYSTEMS.md), by name.
PRESETS: dict[str, dict[str, Any]] = {
    # A: REMI as the Colab pipeline configured it. MidiTok 2 gave it 276-279 ids (not the 258
    # A hard-coded); MidiTok 3.1 gives 284 (more chord qualities, a TimeSig token).
    "remi-colab": {
        "name": "REMI",
        "config": {
            "pitch_range": [21, 108],  # inclusive in MidiTok 3
            "use_pitchdrum_tokens": False,  # drums are dropped by cleaning; MidiTok 2 had none
            "time_signature_range": {"4": [4]},  # MidiTok 2 without TimeSig tokens assumed 4/4
            "beat_res": _COLAB_BEAT_RES,
            "num_velocities": 32,
            "use_chords": True,
            "use_rests": True,
            "use_tempos": True,
            "beat_res_rest": {"0_8": 2},  # = old rest_range (2, 8): half-beat rests up to 8
            "num_tempos": 32,
            "tempo_range": [40, 250],
        },
        "bpe": None,
    },
    # B: one character per note, SentencePiece-style unigram over the text.
    "midichar-ideas": {
        "name": "midichar",
        "config": {},
        "bpe": {"vocab_size": 31185, "model": "Unigram"},
    },
    # C: 16th-note grid, separator + steps, (pitch, duration) pairs, durations capped at 128.
    "chord-duration-keras": {"name": "chord-duration", "config": {}, "bpe": None},
    # E: VQ-VAE over quarter-note rolls with E's network (convs 1→32→64→128→128, 16 codes of
    # 128 dims) and batch (512). Slow where tokenizing runs (the CPU worker): about an hour on
    # 2 cores. Pair it with the gpt preset "bachsformer-prior".
    "bachsformer-vq": {
        "name": "quarter-vq",
        "config": {
            "channels": [32, 64, 128, 128],
            "code_dim": 128,
            "codebook_size": 16,
            "batch_size": 512,
            "steps": 2000,
        },
        "bpe": None,
    },
}

#: Augmentation of system A: ±1..2 octaves, ±2 velocity steps (32 bins ≈ 4 units), ±1 duration
#: step (an 8th of a beat at beat_res 8).
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "colab": {
        "octaves": 2,
        "velocity_offsets": [-8, -4, 4, 8],
        "duration_offsets": [-0.125, 0.125],
    }
}


def preset(name: str) -> TokenizerSpec:
    """The TokenizerSpec of a named preset (see :data:`PRESETS`)."""
    try:
        return TokenizerSpec.model_validate(PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None


def augment_preset(name: str) -> AugmentSpec:
    """The AugmentSpec of a named preset (see :data:`AUGMENT_PRESETS`)."""
    try:
        return AugmentSpec.model_validate(AUGMENT_PRESETS[name])
    except KeyError:
        known = ", ".join(AUGMENT_PRESETS)
        raise ValueError(f"unknown augment preset {name!r}; known: {known}") from None


__all__ = [
    "AUGMENT_PRESETS",
    "MIDITOK_MULTI_VOCAB",
    "MIDITOK_SINGLE_STREAM",
    "OWN_TOKENIZERS",
    "PRESETS",
    "VQ_TOKENIZERS",
    "AugmentSpec",
    "BPESpec",
    "ChordDurationConfig",
    "MidiCharConfig",
    "QuarterVQConfig",
    "TokenizerName",
    "TokenizerSpec",
    "augment_preset",
    "miditok_class",
    "miditok_config",
    "preset",
    "validate_miditok_config",
]
