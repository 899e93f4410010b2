"""Cadenza: music-generation models from your own audio and MIDI."""

__version__ = "0.1.0"
