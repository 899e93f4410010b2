"""MidiTok's tokenizer options, checked without importing MidiTok, and MidiTok built from them.

The API validates a request's options here (MidiTok and the torch it pulls in are too heavy for
the API process); the workers use the same tables to build the ``miditok.TokenizerConfig``.
"""

from __future__ import annotations

import collections.abc as cabc
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

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


__all__ = [
    "MIDITOK_OPTION_TYPES",
    "import_miditok",
    "make_miditok",
    "miditok_class",
    "miditok_config",
    "validate_miditok_config",
]
