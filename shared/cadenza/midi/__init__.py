"""MIDI input: bounded loading of untrusted files (:mod:`.load`) and cleaning (:mod:`.clean`).

Only :mod:`.load`'s light names are imported here (no symusic until a file is parsed), so the API
process can sniff and validate uploads cheaply. ``render`` and ``pianoroll`` live beside these.
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
