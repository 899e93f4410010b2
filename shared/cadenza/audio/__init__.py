"""Audio in Cadenza: probe untrusted uploads, convert and crop them, transcribe them to MIDI.

* :mod:`cadenza.audio.probe` — magic-byte sniffing and ffprobe checks before any decoding
  (cheap; safe to import in the API process);
* :mod:`cadenza.audio.positions` — cut positions parsed from user text (pure Python);
* :mod:`cadenza.audio.convert` — WAV conversion and sample-accurate cropping (ffmpeg, soundfile);
* :mod:`cadenza.audio.transcribe` — basic-pitch's ONNX model, batched across files (worker only;
  its ``TranscribeParams`` imports only pydantic, so the API validates with it).

Submodules are imported explicitly so the API never pays for the worker's dependencies.
"""
