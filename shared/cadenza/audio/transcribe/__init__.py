"""Audio → MIDI with Spotify's basic-pitch model, run from its bundled ONNX file, or for solo
piano with transkun (velocities and pedals; :mod:`~cadenza.audio.transcribe.piano`).

The model, the windowing and the note decoding are basic-pitch 0.4.0's, so for the same audio
and thresholds we write the same notes as ``basic_pitch.inference.predict`` (tests and
``bench/audio.py`` compare them). What differs is how much work is done and how it is
scheduled, one concern per module:

* :mod:`~cadenza.audio.transcribe.params` — :class:`TranscribeParams`, the knobs (imports only
  pydantic: the API validates requests with it);
* :mod:`~cadenza.audio.transcribe.audio` — decoding and mix-down equal to ``librosa.load``, and
  the model's windows;
* :mod:`~cadenza.audio.transcribe.session` — the ONNX Runtime session, once per process, one
  thread per window;
* :mod:`~cadenza.audio.transcribe.graph` (with :mod:`~cadenza.audio.transcribe.protobuf`) — the
  bundled model rewritten to give the same outputs bit for bit for 40 % of the CPU time
  (24 → 9.5 ms per window on one thread, AVX-512 EPYC);
* :mod:`~cadenza.audio.transcribe.notes` — activations to notes and MIDI, the note search
  6-14× faster than basic-pitch's;
* :mod:`~cadenza.audio.transcribe.pipeline` — :func:`transcribe`: windows of all files run
  concurrently on all cores, overlapped with decoding and note decoding; ``engine="transkun"``
  hands the files to :mod:`~cadenza.audio.transcribe.piano` (torch, its bundled checkpoint).

Importing this package imports only pydantic; the rest loads on first use of a name below, so
the API process never loads numpy, ONNX Runtime or basic-pitch for :class:`TranscribeParams`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cadenza._lazy import lazy_exports
from cadenza.audio.transcribe.params import TranscribeParams

if TYPE_CHECKING:
    from cadenza.audio.transcribe.audio import MODEL_SAMPLE_RATE, decode_for_model
    from cadenza.audio.transcribe.graph import faster_graph
    from cadenza.audio.transcribe.notes import pitch_bends, polyphonic_notes
    from cadenza.audio.transcribe.piano import PIANO_SAMPLE_RATE, transcribe_piano
    from cadenza.audio.transcribe.pipeline import Progress, transcribe

#: The names loaded on first use, by the submodule that defines them.
_SUBMODULE_NAMES: dict[str, tuple[str, ...]] = {
    "audio": ("MODEL_SAMPLE_RATE", "decode_for_model"),
    "graph": ("faster_graph",),
    "notes": ("pitch_bends", "polyphonic_notes"),
    "piano": ("PIANO_SAMPLE_RATE", "transcribe_piano"),
    "pipeline": ("Progress", "transcribe"),
}
_LAZY = {name: f"{__name__}.{sub}" for sub, names in _SUBMODULE_NAMES.items() for name in names}

__getattr__ = lazy_exports(__name__, _LAZY, globals())

__all__ = ["MODEL_SAMPLE_RATE", "Progress", "TranscribeParams", "decode_for_model"]
__all__ += ["faster_graph", "pitch_bends", "polyphonic_notes", "transcribe"]
__all__ += ["PIANO_SAMPLE_RATE", "transcribe_piano"]
