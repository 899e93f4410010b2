"""What an uploaded MIDI file may be, and the parse that measures it against that.

The limits, the rejection codes and the measured summary are shared by the two places a file is
parsed: this process (:func:`cadenza.midi.load.load_score`) and the bounded child that
:mod:`cadenza.midi._sandbox` forks for uploads. They live here, below both, so that the loader
imports the sandbox and the sandbox imports this module, never the other way round.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final, cast

if TYPE_CHECKING:  # symusic is imported where a file is parsed, not by the API's sniffing
    from symusic.core import ScoreSecond, ScoreTick

#: Every ``MidiRejected.code`` that loading a MIDI file raises, with what it means for the uploader.
REJECT_CODES: Final[dict[str, str]] = {
    "empty": "the file has no bytes, no tracks or no notes",
    "too_large": "the file is bigger than the upload limit",
    "not_midi": "the bytes are not a Standard MIDI File (nor RIFF RMID)",
    "truncated": "the file ends in the middle of a chunk (cut off during transfer?)",
    "unparseable": "the MIDI parser refused the file (corrupt or unsupported variant)",
    "too_many_tracks": "more tracks than the limit after splitting by channel and program",
    "too_many_notes": "more notes than the limit",
    "too_long": "the last event lies beyond the tick or duration limit",
    "too_complex": "parsing needed more memory than the limit allows",
    "timeout": "parsing took longer than the time limit",
}


@dataclass(frozen=True)
class MidiLimits:
    """Upper bounds for one uploaded MIDI file; defaults fit any real piece we have seen."""

    max_bytes: int = 20 * 1024 * 1024  # the largest real MIDI files (orchestral) are ~5 MB
    max_tracks: int = 128  # symusic splits by (chunk, channel, program); real files have < 64
    max_notes: int = 500_000  # a dense 1-hour piano performance has ~100k notes
    max_ticks: int = 1 << 30  # ticks depend on tpq: music21 writes 10080 tpq, 1 h ≈ 7e7 ticks
    max_seconds: float = 3 * 3600.0  # longer than any single piece; keeps renders bounded
    timeout_s: float = 10.0  # wall clock for the parse child; symusic parses 3M notes in 0.2 s
    memory_bytes: int = 1 << 30  # address space the parse may add on top of the child's own


class MidiRejected(ValueError):
    """A MIDI file we refuse: ``code`` is from :data:`REJECT_CODES`, the message says what to do."""

    def __init__(self, code: str, message: str) -> None:
        if code not in REJECT_CODES:
            raise ValueError(f"unknown MidiRejected code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        """The ``{"code", "message"}`` body the API returns for a rejected file."""
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class MidiInfo:
    """What an upload page shows about a MIDI file, measured by the sandboxed parse."""

    tracks: int  # non-empty tracks, as symusic splits them
    notes: int
    ticks_per_quarter: int
    end_tick: int
    duration_s: float
    programs: tuple[int, ...]  # sorted General MIDI programs of the non-drum tracks
    has_drums: bool
    bars: int = 0  # bars from tick 0 to the end, by the time signatures (what infill counts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (programs as a list) for storing beside the file row."""
        d = asdict(self)
        d["programs"] = list(self.programs)
        return d


def summarize(score: ScoreTick, limits: MidiLimits = MidiLimits()) -> MidiInfo:
    """Measure a parsed score and enforce the content limits (tracks, notes, length)."""
    tracks = [t for t in score.tracks if len(t.notes) > 0]
    notes = sum(len(t.notes) for t in tracks)
    if len(tracks) > limits.max_tracks:
        raise MidiRejected(
            "too_many_tracks",
            f"The file has {len(tracks)} tracks with notes; the limit is {limits.max_tracks}. "
            "Merge or delete tracks in a MIDI editor.",
        )
    if notes > limits.max_notes:
        raise MidiRejected(
            "too_many_notes",
            f"The file has {notes:,} notes; the limit is {limits.max_notes:,}. Split the piece.",
        )
    if notes == 0:
        raise MidiRejected("empty", "The file parses but contains no notes.")
    end_tick = int(score.end())
    if end_tick > limits.max_ticks:
        raise MidiRejected(
            "too_long",
            f"The last event is at tick {end_tick:,}; the limit is {limits.max_ticks:,}.",
        )
    duration_s = float(cast("ScoreSecond", score.to("second")).end())
    if not math.isfinite(duration_s) or duration_s > limits.max_seconds:
        raise MidiRejected(
            "too_long",
            f"The file lasts {duration_s:,.0f} s; the limit is {limits.max_seconds:,.0f} s. "
            "Split the piece, or check for a stray event far after the music ends.",
        )
    return MidiInfo(
        tracks=len(tracks),
        notes=notes,
        ticks_per_quarter=int(score.ticks_per_quarter),
        end_tick=end_tick,
        duration_s=duration_s,
        programs=tuple(sorted({int(t.program) for t in tracks if not t.is_drum})),
        has_drums=any(t.is_drum for t in tracks),
        bars=_count_bars(score),
    )


def _count_bars(score: ScoreTick) -> int:
    """`cadenza.tokenize.base.count_bars` (imported here, inside the parsing sandbox)."""
    from cadenza.tokenize.base import count_bars

    return count_bars(score)


def parse_smf(smf: bytes) -> ScoreTick:
    """symusic parse with its errors translated; ``smf`` must have passed check_structure."""
    from symusic.core import ScoreTick

    try:
        return ScoreTick.from_midi(smf)
    except MemoryError as e:
        raise MidiRejected(
            "too_complex", "Parsing the file ran out of memory; it expands to too much data."
        ) from e
    except (RuntimeError, ValueError, IndexError, OverflowError) as e:
        raise MidiRejected(
            "unparseable",
            f"The MIDI parser refused the file ({str(e).strip()[:200]}). "
            "Open and re-save it in a MIDI editor, then upload it again.",
        ) from e
