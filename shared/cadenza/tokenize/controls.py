"""Attribute controls and style tags: conditioning tokens a model learns and a sample request sets.

A corpus built with ``controls`` puts, into every sequence, tokens that state what the music
that follows is like: per piece (after BOS: tempo, time signature, key, program, then the
file's style tags) and per bar (right after each ``Bar`` token: notes in the bar, most notes
sounding at once, lowest and highest pitch, mean note length). The model learns to write music
that fits them; the sampler then *forces* the tokens a request asks for at the same points, so
the request steers the music (``cadenza.sample.steer``).

Why Cadenza's own tokens rather than MidiTok 3.1's attribute controls (``ac_*`` options):
MidiTok turns them off for ``use_programs`` (one token stream) and multi-vocabulary
tokenizers, has no pitch-range control, states durations as presence flags per note value, and
places bar tokens where its event sort puts them; these tokens come in one fixed order right
after each ``Bar`` token, which is where the sampler forces them, in the units a request uses
(notes, simultaneous notes, MIDI pitches, beats).

Layout: control ids follow MidiTok's vocabulary (``V …``), one block per control in
:data:`CONTROL_ORDER`, then one id per learned tag (sorted). Every block is contiguous, so the
sampler can restrict a slot to "any value of this control" with one id range.

This module is torch- and MidiTok-free: the API validates sample requests with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ControlName = Literal[
    "tempo",
    "time_signature",
    "key",
    "program",
    "note_density",
    "polyphony",
    "pitch_range",
    "duration",
]
#: Canonical order: the per-piece controls, then the per-bar ones; also the token order.
CONTROL_ORDER: tuple[str, ...] = (
    "tempo",
    "time_signature",
    "key",
    "program",
    "note_density",
    "polyphony",
    "pitch_range",
    "duration",
)
PIECE_CONTROLS = ("tempo", "time_signature", "key", "program")
BAR_CONTROLS = ("note_density", "polyphony", "pitch_range", "duration")

#: Tokenizers that take per-piece controls and tags (a conditioning prefix after BOS).
PIECE_CONTROL_TOKENIZERS = ("REMI", "TSD", "MIDILike", "Structured", "PerTok", "MMM", "BEAT")
#: Tokenizers that take style tags only (no attribute controls): audio-vq, whose tags fill a
#: fixed conditioning prefix that every training window starts with (``AudioVQTokenizer``).
TAG_ONLY_TOKENIZERS = ("audio-vq",)
#: Tokenizers that take per-bar controls: one ``Bar`` token opens every bar (empty ones too) and
#: the note events carry their ends. REMI has one stream; MMM (over REMI) restarts bars in every
#: track, so its per-bar controls are per track too (measured on that track's notes). PerTok,
#: TSD, MIDILike and Structured have no bar token in their default vocabulary, BEAT's notes do
#: not carry ends: per-bar controls are refused for them.
BAR_CONTROL_TOKENIZERS = ("REMI", "MMM")
#: Tokenizers whose per-bar controls a request may set track by track (``controls.tracks``).
PER_TRACK_TOKENIZERS = ("MMM",)
#: At most this many entries in a request's ``controls.tracks``.
MAX_TRACK_ENTRIES = 64

NOTE_DENSITY_MAX = 32  # notes per bar; a denser bar states 32
POLYPHONY_MAX = 12  # notes sounding at once; more states 12
#: Tempo bins (quarter notes per minute), a request snaps to the nearest (in log).
TEMPO_BINS: tuple[int, ...] = (
    40, 46, 52, 58, 64, 70, 76, 84, 92, 100, 108, 116, 126, 138, 152, 168, 184, 200, 220, 240,
)  # fmt: skip
TIME_SIGNATURES: tuple[str, ...] = (
    "2/2", "2/4", "3/4", "4/4", "5/4", "6/4", "3/8", "6/8", "9/8", "12/8", "other",
)  # fmt: skip
_PC = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEYS: tuple[str, ...] = (*_PC, *(f"{p}m" for p in _PC))
#: Mean note length in a bar, in beats (quarter notes); a request snaps to the nearest (in log).
DURATION_BINS: tuple[float, ...] = (
    0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0,
)  # fmt: skip
NONE = "none"  # value of pitch and duration controls in a bar without notes

MAX_TAGS = 16
TAG_RE = re.compile(r"^[a-z0-9_-]{1,40}$")


def check_tags(tags: Sequence[str], field: str = "tags") -> list[str]:
    """Sorted, de-duplicated tags, or ValueError naming ``field`` (≤ 16, [a-z0-9_-]{1,40})."""
    if not isinstance(tags, list | tuple):
        raise ValueError(f"{field}: must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{field}: at most {MAX_TAGS} tags (got {len(tags)})")
    for t in tags:
        if not isinstance(t, str) or not TAG_RE.match(t):
            raise ValueError(
                f"{field}: {t!r} is not a tag: 1-40 characters of lowercase a-z, 0-9, - and _"
            )
    return sorted(set(tags))


def _values(name: str) -> list[str]:
    """The token values of one control's block (a pitch range is two sub-blocks)."""
    if name == "tempo":
        return [str(t) for t in TEMPO_BINS]
    if name == "time_signature":
        return list(TIME_SIGNATURES)
    if name == "key":
        return list(KEYS)
    if name == "program":
        return [str(p) for p in range(128)]
    if name == "note_density":
        return [str(n) for n in range(NOTE_DENSITY_MAX + 1)]
    if name == "polyphony":
        return [str(n) for n in range(POLYPHONY_MAX + 1)]
    if name == "pitch_range":
        vals = [*(str(p) for p in range(128)), NONE]
        return [f"low_{v}" for v in vals] + [f"high_{v}" for v in vals]
    if name == "duration":
        return [*(f"{d:g}" for d in DURATION_BINS), NONE]
    raise ValueError(f"unknown control {name!r}")


def check_controls_spec(
    name: str,
    controls: Sequence[str],
    learn_tags: bool,
    bpe: bool,
    config: Mapping[str, Any] | None = None,
) -> None:
    """ValueError naming ``controls`` when tokenizer ``name`` (with options ``config``) cannot
    carry them. Subwords (``bpe``) are fine: control ids and ``Bar`` ids (and MMM's track
    marks and programs) are words of their own, never merged."""
    if not controls and not learn_tags:
        return
    field = "controls" if controls else "learn_tags"
    if name in TAG_ONLY_TOKENIZERS and not controls:
        if bpe:
            raise ValueError("learn_tags: not with bpe; leave bpe empty")
        return
    if name in TAG_ONLY_TOKENIZERS:
        raise ValueError(
            f"controls: the {name} tokenizer takes style tags (learn_tags) but no attribute "
            "controls; leave controls empty"
        )
    if name not in PIECE_CONTROL_TOKENIZERS:
        raise ValueError(
            f"{field}: the {name} tokenizer cannot carry attribute controls or tags; use one "
            f"of {', '.join(PIECE_CONTROL_TOKENIZERS)} (per-bar controls: REMI)"
        )
    unknown = [c for c in controls if c not in CONTROL_ORDER]
    if unknown:
        raise ValueError(f"controls: unknown {unknown}; known: {', '.join(CONTROL_ORDER)}")
    bar = [c for c in controls if c in BAR_CONTROLS]
    if bar and name not in BAR_CONTROL_TOKENIZERS:
        raise ValueError(
            f"controls: {bar} are per bar, which only {', '.join(BAR_CONTROL_TOKENIZERS)} "
            f"carry (a Bar token opens every bar); {name} takes "
            f"{', '.join(PIECE_CONTROLS)} and tags"
        )
    base = (config or {}).get("base_tokenizer", "REMI")
    if bar and name == "MMM" and base != "REMI":
        raise ValueError(
            f"controls: {bar} are per bar, which MMM carries over REMI only (its Bar token); "
            f"this MMM is over {base}: set base_tokenizer to REMI or drop them"
        )


@dataclass(frozen=True)
class Slot:
    """One conditioning token position: which control (and part), and its id block."""

    control: str
    part: str  # "" or "low"/"high" for pitch_range
    lo: int  # first id of the block
    size: int  # ids in the block

    @property
    def hi(self) -> int:
        return self.lo + self.size


class ControlVocab:
    """Ids and names of the conditioning tokens placed after a tokenizer's own ``offset`` ids."""

    def __init__(
        self, controls: Sequence[str], tags: Sequence[str], offset: int, *, per_track: bool = False
    ) -> None:
        self.controls = [c for c in CONTROL_ORDER if c in set(controls)]
        self.per_track = per_track
        self.tags = sorted(set(tags))
        self.offset = offset
        self.names: list[str] = []
        self.piece_slots: list[Slot] = []
        self.bar_slots: list[Slot] = []
        for c in self.controls:
            vals = _values(c)
            parts = [("low", vals[: len(vals) // 2]), ("high", vals[len(vals) // 2 :])]
            for part, pv in parts if c == "pitch_range" else [("", vals)]:
                slot = Slot(c, part, offset + len(self.names), len(pv))
                (self.piece_slots if c in PIECE_CONTROLS else self.bar_slots).append(slot)
                self.names += [f"Ctl_{c}_{v}" for v in pv]
        self.tag_lo = offset + len(self.names)
        self.names += [f"Tag_{t}" for t in self.tags]
        self._ids = {n: offset + i for i, n in enumerate(self.names)}

    @property
    def size(self) -> int:
        return len(self.names)

    def id_of(self, name: str) -> int:
        return self._ids[name]

    def tag_id(self, tag: str) -> int | None:
        return self._ids.get(f"Tag_{tag}")

    def slot_id(self, slot: Slot, value: str) -> int:
        prefix = f"{slot.part}_" if slot.part else ""
        return self._ids[f"Ctl_{slot.control}_{prefix}{value}"]

    def capabilities(self) -> dict[str, Any]:
        """What ``GET /v1/models/{id}`` shows: each control's unit, scope and allowed values."""
        return capabilities(self.controls, self.tags, per_track=self.per_track)


def capabilities(
    controls: Sequence[str], tags: Sequence[str], *, per_track: bool = False
) -> dict[str, Any]:
    """``{"modes": ["continue"], "controls": {name: {...}}, "tags": [...]}``, plus, when the
    per-bar controls are per track (MMM), ``"tracks": {"max": 64, "controls": [...],
    "select": [...]}``: what ``controls.tracks`` of a request may set."""
    out: dict[str, Any] = {}
    for c in CONTROL_ORDER:
        if c not in controls:
            continue
        per = "piece" if c in PIECE_CONTROLS else "bar"
        if c == "tempo":
            out[c] = {"per": per, "range": [TEMPO_BINS[0], TEMPO_BINS[-1]], "unit": "bpm"}
        elif c == "time_signature":
            out[c] = {"per": per, "values": [t for t in TIME_SIGNATURES if t != "other"]}
        elif c == "key":
            out[c] = {"per": per, "values": list(KEYS)}
        elif c == "program":
            out[c] = {"per": per, "range": [0, 127], "unit": "General MIDI program"}
        elif c == "note_density":
            out[c] = {"per": per, "range": [0, NOTE_DENSITY_MAX], "unit": "notes per bar"}
        elif c == "polyphony":
            out[c] = {"per": per, "range": [0, POLYPHONY_MAX], "unit": "notes sounding at once"}
        elif c == "pitch_range":
            out[c] = {"per": per, "range": [0, 127], "unit": "[lowest, highest] MIDI pitch"}
        elif c == "duration":
            out[c] = {
                "per": per,
                "range": [DURATION_BINS[0], DURATION_BINS[-1]],
                "unit": "mean note length in beats",
            }
    caps: dict[str, Any] = {"modes": ["continue"], "controls": out, "tags": sorted(tags)}
    bar = [c for c in CONTROL_ORDER if c in controls and c in BAR_CONTROLS]
    if per_track and bar:
        caps["tracks"] = {"max": MAX_TRACK_ENTRIES, "controls": bar, "select": ["index", "program"]}
    return caps


def default_capabilities() -> dict[str, Any]:
    """A model trained without controls or tags."""
    return capabilities([], [])


# ---------------------------------------------------------------------------------- values


def _nearest(bins: Sequence[float], x: float) -> int:
    """Index of the bin nearest to x on a log scale (x > 0)."""
    lx = math.log(max(x, 1e-9))
    return min(range(len(bins)), key=lambda i: abs(math.log(bins[i]) - lx))


def tempo_value(qpm: float) -> str:
    return str(TEMPO_BINS[_nearest(TEMPO_BINS, qpm)])


def time_signature_value(num: int, den: int) -> str:
    ts = f"{num}/{den}"
    return ts if ts in TIME_SIGNATURES else "other"


def key_value(sharps: int, minor: bool) -> str:
    """Key name from a key signature (sharps > 0, flats < 0) and its mode."""
    tonic = (7 * sharps + (9 if minor else 0)) % 12
    return f"{_PC[tonic]}{'m' if minor else ''}"


# Krumhansl-Kessler key profiles (probe-tone ratings), for files without a key signature.
_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)


def estimate_key(pitch_class_weights: Sequence[float]) -> str:
    """The major or minor key whose profile correlates best with the pitch-class histogram."""
    best, best_r = "C", -2.0
    h = list(pitch_class_weights)
    mh = sum(h) / 12
    for minor, prof in ((False, _MAJOR), (True, _MINOR)):
        mp = sum(prof) / 12
        for tonic in range(12):
            p = [prof[(i - tonic) % 12] for i in range(12)]
            num = sum((a - mh) * (b - mp) for a, b in zip(h, p, strict=True))
            den = math.sqrt(sum((a - mh) ** 2 for a in h) * sum((b - mp) ** 2 for b in p))
            r = num / den if den else -1.0
            if r > best_r:
                best, best_r = f"{_PC[tonic]}{'m' if minor else ''}", r
    return best


def duration_value(beats: float | None) -> str:
    return NONE if beats is None else f"{DURATION_BINS[_nearest(DURATION_BINS, beats)]:g}"


@dataclass
class BarFacts:
    """What one bar's control tokens state, in musical units."""

    notes: int
    polyphony: int
    low: int | None
    high: int | None
    mean_beats: float | None


def bar_facts(
    onsets: Sequence[int], ends: Sequence[int], pitches: Sequence[int], ticks_per_beat: int
) -> BarFacts:
    """Facts of one bar's notes (those that start in it); polyphony counts, at each onset, the
    notes sounding there (started at or before it and not yet ended), and takes the largest."""
    n = len(onsets)
    if n == 0:
        return BarFacts(0, 0, None, None, None)
    poly = 0
    for t in set(onsets):
        poly = max(
            poly, sum(1 for s, e in zip(onsets, ends, strict=True) if s <= t < max(e, s + 1))
        )
    mean = sum(max(e - s, 0) for s, e in zip(onsets, ends, strict=True)) / n / ticks_per_beat
    return BarFacts(n, poly, min(pitches), max(pitches), mean)


def bar_values(facts: BarFacts) -> dict[str, str | tuple[str, str]]:
    """Token values of a bar's facts (clamped to each control's range)."""
    return {
        "note_density": str(min(facts.notes, NOTE_DENSITY_MAX)),
        "polyphony": str(min(facts.polyphony, POLYPHONY_MAX)),
        "pitch_range": (
            NONE if facts.low is None else str(facts.low),
            NONE if facts.high is None else str(facts.high),
        ),
        "duration": duration_value(facts.mean_beats),
    }


# ---------------------------------------------------------------------------------- requests


def _num(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{field}: must be a number (got {v!r})")
    return float(v)


def _in_range(v: float, lo: float, hi: float, field: str, unit: str) -> None:
    if not lo <= v <= hi:
        raise ValueError(f"{field}: {v:g} is outside this model's range [{lo:g}, {hi:g}] ({unit})")


def _bar_value(name: str, v: Any, field: str, cap: Mapping[str, Any]) -> Any:
    """Check one bar's requested value; returns it in token-value form."""
    lo, hi = cap["range"]
    if name == "pitch_range":
        if not isinstance(v, list | tuple) or len(v) != 2:
            raise ValueError(f"{field}: must be [lowest, highest] MIDI pitches (got {v!r})")
        a, b = _num(v[0], field), _num(v[1], field)
        _in_range(a, lo, hi, field, cap["unit"])
        _in_range(b, lo, hi, field, cap["unit"])
        if a > b or a != int(a) or b != int(b):
            raise ValueError(f"{field}: needs two whole pitches, lowest ≤ highest (got {v!r})")
        return (str(int(a)), str(int(b)))
    x = _num(v, field)
    _in_range(x, lo, hi, field, cap["unit"])
    if name == "duration":
        return duration_value(x)
    if x != int(x):
        raise ValueError(f"{field}: must be a whole number (got {v!r})")
    return str(int(x))


BarRequest = dict[str, tuple[list[Any], bool]]


@dataclass(frozen=True)
class TrackRequest:
    """A request's ``controls.tracks``: per-bar values for single tracks, over the piece-wide
    ones. ``entries[k]`` applies to the k-th track written (``programs`` None) or to every
    track whose program is ``programs[k]``; a control an entry leaves out keeps its
    piece-wide value."""

    entries: list[BarRequest]
    programs: list[int] | None = None


def _per_bar(name: str, v: Any, field: str, cap: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """One per-bar control's request: (values, every_bar), see :func:`resolve_controls`."""
    per_bar = isinstance(v, list) and (
        name != "pitch_range" or any(isinstance(x, list | tuple) or x is None for x in v)
    )
    if not per_bar:
        return ([_bar_value(name, v, field, cap)], True)
    if not 1 <= len(v) <= 4096:
        raise ValueError(f"{field}: a per-bar list needs 1 to 4096 entries")
    values = [
        None if x is None else _bar_value(name, x, f"{field}[{i}]", cap) for i, x in enumerate(v)
    ]
    return (values, False)


def _tracks(v: Any, known: Mapping[str, Any], caps: Mapping[str, Any]) -> TrackRequest:
    """Check ``controls.tracks`` (a list of per-track objects) against the capabilities."""
    field = "controls.tracks"
    spec = caps.get("tracks")
    if not spec:
        raise ValueError(
            f"{field}: this model has no per-track controls (a multitrack MMM corpus with "
            "per-bar controls has them)"
        )
    allowed = list(spec["controls"])
    if not isinstance(v, list) or not 1 <= len(v) <= spec["max"]:
        raise ValueError(
            f"{field}: must be a list of 1 to {spec['max']} objects, one per track in the order "
            f'the tracks are written (e.g. [{{"note_density": 4}}, {{"note_density": 12}}])'
        )
    entries: list[BarRequest] = []
    programs: list[int] = []
    for k, entry in enumerate(v):
        where = f"{field}[{k}]"
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: must be an object of per-bar controls or null")
        bars: BarRequest = {}
        for name, value in entry.items():
            if name == "program":
                if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= 127:
                    raise ValueError(
                        f"{where}.program: a General MIDI program 0-127 (-1 = drums) selects "
                        f"the tracks this entry applies to (got {value!r})"
                    )
                programs.append(value)
                continue
            if name not in allowed:
                raise ValueError(
                    f"{where}.{name}: not a per-track control of this model; per track: "
                    f"{', '.join(allowed)} (and program, to select tracks by program)"
                )
            bars[name] = _per_bar(name, value, f"{where}.{name}", known[name])
        entries.append(bars)
    if programs and len(programs) != len(entries):
        raise ValueError(
            f"{field}: give a program in every entry (tracks chosen by program) or in none "
            "(tracks chosen by their order)"
        )
    if len(set(programs)) != len(programs):
        raise ValueError(f"{field}: each program at most once (got {programs})")
    return TrackRequest(entries, programs or None)


def resolve_controls(
    controls: Mapping[str, Any] | None,
    tags: Sequence[str] | None,
    caps: Mapping[str, Any],
) -> tuple[dict[str, str], BarRequest, list[str], TrackRequest | None]:
    """A request's ``controls`` and ``tags`` checked against a model's capabilities.

    Returns (per-piece token values; per-bar token values by control as (values, every_bar):
    one value for every bar, or one entry per bar from the piece's first, None = free; tags;
    per-track values from ``controls.tracks``, None when not given). ValueError names the
    field (``controls.note_density[2]``, ``controls.tracks[1].polyphony``) and the allowed
    range or values.
    """
    known: Mapping[str, Any] = caps.get("controls") or {}
    piece: dict[str, str] = {}
    bars: BarRequest = {}
    tracks: TrackRequest | None = None
    for name, v in (controls or {}).items():
        field = f"controls.{name}"
        if name == "tracks":
            tracks = _tracks(v, known, caps)
            continue
        cap = known.get(name)
        if cap is None:
            have = ", ".join(known) or "none: it was trained without controls"
            raise ValueError(f"{field}: this model has no such control (it has: {have})")
        if cap["per"] == "piece":
            if "values" in cap:
                if v not in cap["values"]:
                    raise ValueError(f"{field}: {v!r} is not one of {cap['values']}")
                piece[name] = str(v)
            else:
                x = _num(v, field)
                lo, hi = cap["range"]
                _in_range(x, lo, hi, field, cap["unit"])
                if name == "tempo":
                    piece[name] = tempo_value(x)
                else:
                    if x != int(x):
                        raise ValueError(f"{field}: must be a whole number (got {v!r})")
                    piece[name] = str(int(x))
            continue
        bars[name] = _per_bar(name, v, field, cap)
    wanted: list[str] = []
    if tags:
        wanted = check_tags(list(tags))
        model_tags = set(caps.get("tags") or [])
        unknown = [t for t in wanted if t not in model_tags]
        if unknown:
            have = ", ".join(sorted(model_tags)) or "none: it was trained without learn_tags"
            raise ValueError(
                f"tags: {unknown[0]!r} is not a tag this model knows (it knows: {have})"
            )
    return piece, bars, wanted, tracks


__all__ = [
    "BAR_CONTROLS",
    "BAR_CONTROL_TOKENIZERS",
    "CONTROL_ORDER",
    "MAX_TRACK_ENTRIES",
    "PER_TRACK_TOKENIZERS",
    "PIECE_CONTROLS",
    "PIECE_CONTROL_TOKENIZERS",
    "TAG_ONLY_TOKENIZERS",
    "BarFacts",
    "BarRequest",
    "ControlName",
    "ControlVocab",
    "Slot",
    "TrackRequest",
    "bar_facts",
    "bar_values",
    "capabilities",
    "check_controls_spec",
    "check_tags",
    "default_capabilities",
    "estimate_key",
    "key_value",
    "resolve_controls",
    "tempo_value",
    "time_signature_value",
]
