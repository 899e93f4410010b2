"""MIDI input: bounded loading of untrusted files (:mod:`.load`) and cleaning (:mod:`.clean`).

:mod:`.load` holds the entry points, :mod:`.limits` what a file may be (limits, rejection codes,
the parse that measures a score), and :mod:`._sandbox` the resource-limited child process that
parses uploads. Only light names are imported here (no symusic until a file is parsed), so the
API process can sniff and validate uploads cheaply. Turning MIDI into audio and pictures is
:mod:`cadenza.render`.
"""

from cadenza.midi.load import (
    REJECT_CODES,
    MidiInfo,
    MidiLimits,
    MidiRejected,
    check_structure,
    inspect_midi,
    load_score,
    sniff_midi,
    warm_up,
)

__all__ = [
    "REJECT_CODES",
    "MidiInfo",
    "MidiLimits",
    "MidiRejected",
    "check_structure",
    "inspect_midi",
    "load_score",
    "sniff_midi",
    "warm_up",
]
