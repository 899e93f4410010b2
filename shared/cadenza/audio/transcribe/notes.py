"""From the model's frame, onset and contour activations to notes, pitch bends and MIDI bytes.

This is basic-pitch 0.4.0's post-processing (its ``note_creation`` functions and
``unwrap_output``), with two of its functions reimplemented to give the same values much faster:
the note search (:func:`polyphonic_notes`, 6-14× faster) and the pitch bends
(:func:`pitch_bends`).
"""

from __future__ import annotations

import io
from typing import Any, Final

import numpy as np

from cadenza.audio.transcribe.audio import FFT_HOP, MODEL_SAMPLE_RATE, OVERLAP_FRAMES
from cadenza.audio.transcribe.params import TranscribeParams
from cadenza.audio.transcribe.quiet import quiet_imports

_ENERGY_TOL: Final[int] = 11  # frames below threshold that end a note (basic-pitch's default)
_MIDI_OFFSET: Final[int] = 21  # model bin 0 is A0
_MAX_FREQ_IDX: Final[int] = 87
_BEND_BINS: Final[int] = 25  # get_pitch_bends' n_bins_tolerance
_N_CONTOUR_BINS: Final[int] = 264


def notes_to_midi(output: dict[str, np.ndarray], n_samples: int, params: TranscribeParams) -> bytes:
    """basic-pitch's own post-processing, from stacked window outputs to MIDI bytes."""
    with quiet_imports():
        from basic_pitch import note_creation
        from basic_pitch.inference import unwrap_output

    frames_per_s = MODEL_SAMPLE_RATE / FFT_HOP
    unwrapped = {k: unwrap_output(v, n_samples, OVERLAP_FRAMES) for k, v in output.items()}
    if unwrapped["note"].shape[0] == 0:  # shorter than one model frame: nothing to find
        return _midi_bytes(note_creation.note_events_to_midi([], midi_tempo=params.midi_tempo))
    # Exactly basic-pitch's model_output_to_notes (infer_onsets, melodia trick and pitch bends
    # on, one instrument), except that the note search is the faster equivalent below.
    # On silence basic-pitch divides 0 by 0 once (and copes with the NaNs); keep logs quiet.
    with np.errstate(divide="ignore", invalid="ignore"):
        notes = polyphonic_notes(
            unwrapped["note"],
            unwrapped["onset"],
            onset_thresh=params.onset_threshold,
            frame_thresh=params.frame_threshold,
            min_note_len=int(np.round(params.minimum_note_length_ms / 1000 * frames_per_s)),
            min_freq=params.minimum_frequency,
            max_freq=params.maximum_frequency,
        )
    with_bends = pitch_bends(unwrapped["contour"], notes)
    times = note_creation.model_frames_to_time(unwrapped["contour"].shape[0])
    events = [(times[a], times[b], pitch, amp, bends) for a, b, pitch, amp, bends in with_bends]
    midi = note_creation.note_events_to_midi(events, False, params.midi_tempo)
    return _midi_bytes(midi)


def polyphonic_notes(
    frames: np.ndarray,
    onsets: np.ndarray,
    *,
    onset_thresh: float,
    frame_thresh: float,
    min_note_len: int,
    min_freq: float | None,
    max_freq: float | None,
) -> list[tuple[int, int, int, float]]:
    """basic-pitch's ``output_to_notes_polyphonic`` (infer_onsets and melodia_trick on), giving
    the same notes in the same order, in a fraction of the time.

    basic-pitch's "melodia trick" repeats ``argmax`` over the whole remaining-energy matrix
    once per note it finds (O(frames × 88) each; 60 % of all post-processing on a 2-minute
    piano piece). Energies there only ever drop to zero, so the successive maxima are simply
    the above-threshold cells in descending order (ties by flat index, as ``argmax`` breaks
    them), skipping cells zeroed meanwhile: one sort instead of thousands of scans.
    """
    from basic_pitch import note_creation
    from scipy.signal import argrelmax

    n_frames = frames.shape[0]
    onsets, frames = note_creation.constrain_frequency(onsets, frames, max_freq, min_freq)
    onsets = note_creation.get_infered_onsets(onsets, frames)

    peak_thresh_mat = np.zeros(onsets.shape)
    peaks = argrelmax(onsets, axis=0)
    peak_thresh_mat[peaks] = onsets[peaks]
    onset_idx = np.where(peak_thresh_mat >= onset_thresh)
    energy = np.array(frames, dtype=np.float64)  # remaining energy; basic-pitch's is float64 too

    notes: list[tuple[int, int, int, float]] = []
    for start, freq in zip(onset_idx[0][::-1].tolist(), onset_idx[1][::-1].tolist(), strict=True):
        if start >= n_frames - 1:
            continue
        i, k = start + 1, 0
        while i < n_frames - 1 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            i += 1
        i -= k
        if i - start <= min_note_len:
            continue
        _clear(energy, start, i, freq)
        notes.append((start, i, freq + _MIDI_OFFSET, np.mean(frames[start:i, freq])))

    flat = energy.ravel()
    candidates = np.flatnonzero(flat > frame_thresh)
    # Descending energy; lexsort is stable, so equal energies keep ascending flat order.
    order = candidates[np.lexsort((candidates, -flat[candidates]))]
    n_bins = energy.shape[1]
    for cell in order.tolist():
        if flat[cell] == 0:  # cleared by an earlier note: no longer the maximum
            continue
        mid, freq = divmod(cell, n_bins)
        energy[mid, freq] = 0
        lo, hi = max(freq - 1, 0), min(freq + 1, _MAX_FREQ_IDX)  # the bin and its neighbours
        i, k = mid + 1, 0  # forward
        while i < n_frames - 1 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            energy[i, lo] = energy[i, freq] = energy[i, hi] = 0  # scalar writes: fastest here
            i += 1
        end = i - 1 - k
        i, k = mid - 1, 0  # backward
        while i > 0 and k < _ENERGY_TOL:
            k = k + 1 if energy[i, freq] < frame_thresh else 0
            energy[i, lo] = energy[i, freq] = energy[i, hi] = 0
            i -= 1
        begin = i + 1 + k
        if end - begin <= min_note_len:
            continue
        notes.append((begin, end, freq + _MIDI_OFFSET, np.mean(frames[begin:end, freq])))
    return notes


def pitch_bends(
    contours: np.ndarray, notes: list[tuple[int, int, int, float]]
) -> list[tuple[int, int, int, float, list[Any]]]:
    """basic-pitch's ``get_pitch_bends`` (default tolerance), the same values and types: per
    note, the argmax of its contour rows under a Gaussian centred on its pitch. The window
    geometry depends only on the pitch, so it is worked out once per pitch rather than with
    a dozen small numpy calls per note (14 → 2 ms for a 45-second piano piece)."""
    geometry: dict[int, tuple[int, int, np.ndarray, Any]] = {}
    out: list[tuple[int, int, int, float, list[Any]]] = []
    for start, end, pitch, amplitude in notes:
        if pitch not in geometry:
            geometry[pitch] = _bend_geometry(pitch)
        lo, hi, weights, shift = geometry[pitch]
        bends = list(np.argmax(contours[start:end, lo:hi] * weights, axis=1) - shift)
        out.append((start, end, pitch, amplitude, bends))
    return out


def _bend_geometry(pitch: int) -> tuple[int, int, np.ndarray, Any]:
    """Contour bins ``[lo, hi)`` around a pitch, their Gaussian weights and the argmax offset,
    computed exactly as in ``get_pitch_bends``."""
    from basic_pitch import note_creation
    from scipy.signal.windows import gaussian

    tol, width = _BEND_BINS, 2 * _BEND_BINS + 1
    centre = int(np.round(note_creation.midi_pitch_to_contour_bin(pitch)))
    lo = max(centre - tol, 0)
    hi = min(_N_CONTOUR_BINS, centre + tol + 1)
    weights = gaussian(width, std=5)[
        max(0, tol - centre) : width - max(0, centre - (_N_CONTOUR_BINS - tol - 1))
    ]
    shift = tol - np.max([0, tol - centre])  # an np.int64, as there: bends are np.int64
    return lo, hi, weights, shift


def _clear(energy: np.ndarray, start: int, stop: int, freq: int) -> None:
    """Zero a note's frames in its own bin and both neighbours (basic-pitch's suppression)."""
    energy[start:stop, max(freq - 1, 0) : min(freq + 2, _MAX_FREQ_IDX + 1)] = 0


def _midi_bytes(midi: Any) -> bytes:
    """A ``pretty_midi.PrettyMIDI`` (what basic-pitch builds) as Standard MIDI File bytes."""
    buffer = io.BytesIO()
    midi.write(buffer)
    return buffer.getvalue()
