"""Between MIDI bytes and model ids at sampling time: primers in, generated ids out."""

from __future__ import annotations

from collections.abc import Sequence

from symusic.core import ScoreTick as Score
from symusic.core import TempoTick, TimeSignatureTick

from cadenza.midi.clean import CleanOptions, clean_score
from cadenza.midi.load import load_score, time_signature_map
from cadenza.tokenize.base import Tokenizer


def bar_end_tick(score: Score, bars: int) -> int:
    """Tick where bar number ``bars`` ends (bar 1 starts at tick 0), following time signatures.

    A time signature change inside a bar ends that bar early, as MIDI editors display it.
    """
    tpq = int(score.ticks_per_quarter)
    sigs = time_signature_map(score)
    t, idx = 0, 0
    for _ in range(bars):
        while idx + 1 < len(sigs) and sigs[idx + 1][0] <= t:
            idx += 1
        _, num, den = sigs[idx]
        bar = max(1, num * tpq * 4 // max(den, 1))
        nxt = sigs[idx + 1][0] if idx + 1 < len(sigs) else None
        t = t + bar if nxt is None or t + bar <= nxt else nxt
    return t


def seconds_to_tick(score: Score, seconds: float) -> int:
    """The tick reached after ``seconds`` of playback, following the tempo map (120 qpm if none)."""
    tpq = int(score.ticks_per_quarter)
    tempos = sorted(((int(t.time), float(t.qpm)) for t in score.tempos), key=lambda x: x[0])
    if not tempos or tempos[0][0] > 0:
        tempos.insert(0, (0, 120.0))
    elapsed = 0.0
    for i, (start, qpm) in enumerate(tempos):
        sec_per_tick = 60.0 / (max(qpm, 1e-6) * tpq)
        nxt = tempos[i + 1][0] if i + 1 < len(tempos) else None
        if nxt is None or elapsed + (nxt - start) * sec_per_tick >= seconds:
            return start + int(round((seconds - elapsed) / sec_per_tick))
        elapsed += (nxt - start) * sec_per_tick
    raise AssertionError("unreachable")


def crop_score(score: Score, *, bars: int | None = None, seconds: float | None = None) -> Score:
    """Keep the notes that start in the first ``bars`` bars and/or ``seconds`` seconds.

    Notes that start before the cut keep their full duration: a primer's last chord should
    sound as written, and the model continues after its onset anyway.
    """
    end = int(score.end()) + 1
    if bars is not None:
        if bars < 1:
            raise ValueError("bars must be ≥ 1")
        end = min(end, bar_end_tick(score, bars))
    if seconds is not None:
        if seconds <= 0:
            raise ValueError("seconds must be > 0")
        end = min(end, seconds_to_tick(score, seconds))
    return score.clip(0, end, clip_end=False)


def encode_primer(
    tok: Tokenizer,
    midi_bytes: bytes,
    *,
    bars: int | None = None,
    seconds: float | None = None,
    start_bar: int = 1,
    clean: CleanOptions | None = None,
) -> list[int]:
    """Ids of the first ``bars``/``seconds`` of a MIDI file, to continue from.

    ``start_bar`` (1-based) takes the span from that bar on instead of from the beginning: bars
    ``start_bar`` … ``start_bar + bars - 1``, moved to time 0 with the tempo and time signature
    in force there.

    Neither BOS nor EOS: prepend ``tok.bos_id`` to start a sequence the way corpus files start;
    without EOS the model continues instead of ending. Cleaning defaults to the corpus defaults
    (tracks kept apart for MMM) but accepts primers of any length (``min_notes`` 1). Raises
    ValueError when nothing is left (no notes, or none the tokenizer can encode in the span).
    """
    # An MMM (multi-track) tokenizer keeps tracks apart, as its corpora do (the `multitrack`
    # preset's cleaning): a continuation then continues every instrument.
    multitrack = tok.name == "MMM"
    opts = clean or CleanOptions(merge_tracks=not multitrack, drop_drums=not multitrack)
    opts = CleanOptions(**{**opts.__dict__, "min_notes": min(opts.min_notes, 1)})
    score = load_score(midi_bytes)
    cleaned, report = clean_score(score, opts)
    if cleaned is None:
        raise ValueError(f"the primer has no usable notes ({report[-1] if report else 'empty'})")
    if start_bar < 1:
        raise ValueError("start_bar must be ≥ 1")
    if start_bar > 1:
        start = bar_end_tick(cleaned, start_bar - 1)
        if start >= int(cleaned.end()):
            raise ValueError(f"the primer has fewer than {start_bar} bars")
        cleaned = cleaned.clip(start, int(cleaned.end()) + 1, clip_end=False).shift_time(-start)
    if bars is not None or seconds is not None:
        cleaned = crop_score(cleaned, bars=bars, seconds=seconds)
    ids = tok.encode(cleaned)
    while ids and ids[-1] == tok.eos_id:
        ids.pop()
    if not ids:
        raise ValueError("the primer has no notes the tokenizer can encode in the chosen span")
    return ids


def decode_to_midi(tok: Tokenizer, ids: Sequence[int], *, stop_at_eos: bool = True) -> bytes:
    """MIDI file bytes for model output. Specials are stripped and ungrammatical sequences are
    repaired by the tokenizer, so any id list (even with out-of-range ids) gives a valid file.

    With ``stop_at_eos`` the piece ends at the first EOS after the content (what follows is
    the model starting another piece).
    """
    seq = [int(i) for i in ids]
    if stop_at_eos:
        start = 1 if seq and seq[0] == tok.bos_id else 0
        if tok.eos_id in seq[start:]:
            seq = seq[: seq.index(tok.eos_id, start)]
    score = tok.decode(seq)
    if len(score.tempos) == 0:
        score.tempos.append(TempoTick(0, 120.0))
    if len(score.time_signatures) == 0:
        score.time_signatures.append(TimeSignatureTick(0, 4, 4))
    data: bytes = score.dumps_midi()
    return data


__all__ = ["crop_score", "decode_to_midi", "encode_primer", "seconds_to_tick"]
