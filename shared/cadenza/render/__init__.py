"""MIDI made audible and visible, on workers: audio, piano rolls, loss curves, and their cache.

The package's face is the cache (:mod:`.cache`): :func:`render_all` renders a MIDI file in
every :data:`RENDER_FORMATS` into the store, :func:`render_key` says where each rendering lives,
and :data:`MEDIA_TYPES` gives the media type of every format Cadenza serves. These import no
synthesizer or plotting library, so the API process can build keys and serve cached renders.
The work itself is done by submodules that load symusic, soundfile or matplotlib and are
imported by name where they are needed:

* :mod:`.audio` — MIDI → WAV/MP3 (:func:`cadenza.render.audio.render_midi`): chooses between
  the synthesizers in :mod:`.symusic` and :mod:`.fluidsynth` and finishes their output;
* :mod:`.soundfont` (with :mod:`.soundfont_builder` and :mod:`.sf2`) — the copy of a soundfont
  that symusic plays in tune;
* :mod:`.pianoroll` and :mod:`.plots` — PNG pictures of a MIDI file and of training losses.
"""

from __future__ import annotations

from cadenza.render.cache import MEDIA_TYPES, RENDER_FORMATS, render_all, render_key

__all__ = ["MEDIA_TYPES", "RENDER_FORMATS", "render_all", "render_key"]
