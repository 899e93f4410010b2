"""Loading MIDI files that strangers uploaded, without letting one of them take the server down.

Two entry points with different trust levels:

* :func:`inspect_midi` is for upload time. It first runs cheap structural checks in this process
  (size, magic bytes, chunk lengths), then parses the file with symusic in a *separate* process
  whose address space and CPU time are capped by ``setrlimit`` and whose wall time is capped by
  the parent (it is killed when over). symusic is C++: a crafted file can make it allocate
  gigabytes (we measured a 2 MB file that expands to ~1 GB of tracks), and a crash or
  ``bad_alloc`` there would take the API process with it. The child is forked from a small
  zygote process that has symusic imported, so each file costs a fork, not a Python start-up.
* :func:`load_score` and :func:`parse_midi` are for workers (corpus builds, primers, renders),
  which need the parsed score itself. A stored file passed :func:`inspect_midi` once, but with
  the parser of that day: a parser that crashes on it now would kill the worker. So the file
  is parsed in a sandbox child first, and only bytes the child parsed within its limits are
  parsed again in-process (the parse is deterministic, so what crashes, hangs or balloons does
  so in the child). A crash there is a :class:`MidiRejected` for that one file.
"""

from __future__ import annotations

import struct
from dataclasses import asdict
from typing import TYPE_CHECKING, Final

from cadenza.midi.limits import (
    REJECT_CODES,
    MidiInfo,
    MidiLimits,
    MidiRejected,
    parse_smf,
    summarize,
)

if TYPE_CHECKING:  # symusic is imported where a file is parsed, not by the API's sniffing
    from symusic.core import ScoreTick

_SMF_MAGIC: Final = b"MThd"
_RIFF_MAGIC: Final = b"RIFF"


def sniff_midi(head: bytes) -> bool:
    """True when ``head`` (the first ≥ 12 bytes of a file) starts a Standard MIDI File or RMID.

    Used by the upload route to pick a handler by content rather than by the client's file name.
    """
    if head.startswith(_SMF_MAGIC):
        return True
    return len(head) >= 12 and head.startswith(_RIFF_MAGIC) and head[8:12] == b"RMID"


def _unwrap_rmid(data: bytes) -> bytes:
    """Return the SMF inside a RIFF RMID container (the ``data`` chunk), or raise not_midi."""
    pos = 12
    while pos + 8 <= len(data):
        cid = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"data":
            if len(body) < size:
                raise MidiRejected(
                    "truncated", "The RMID file ends inside its MIDI data; upload it again."
                )
            return body
        pos += 8 + size + (size & 1)  # RIFF chunks are word aligned
    raise MidiRejected(
        "not_midi", "The RIFF RMID file has no 'data' chunk, so it holds no MIDI to read."
    )


def check_structure(data: bytes, limits: MidiLimits = MidiLimits()) -> bytes:
    """Cheap in-process checks before any parser sees the file; returns the bare SMF bytes.

    Walks the chunk headers only (O(number of chunks)), so a truncated or foreign file gets a
    precise message instead of the parser's generic one, and the child is never forked for it.
    """
    if len(data) == 0:
        raise MidiRejected("empty", "The file is empty (0 bytes); choose a MIDI file.")
    if len(data) > limits.max_bytes:
        raise MidiRejected(
            "too_large",
            f"The file has {len(data):,} bytes; the limit is {limits.max_bytes:,}. "
            "Split the piece or remove tracks you do not need.",
        )
    if not sniff_midi(data[:12]):
        raise MidiRejected(
            "not_midi",
            "This is not a MIDI file (it does not start with 'MThd'). "
            "Upload .mid/.midi files here; audio goes through transcription.",
        )
    if data.startswith(_RIFF_MAGIC):
        data = _unwrap_rmid(data)
        if not data.startswith(_SMF_MAGIC):
            raise MidiRejected("not_midi", "The RMID container does not hold a MIDI file.")
    if len(data) < 14:
        raise MidiRejected("truncated", "The file ends inside the MIDI header; upload it again.")
    hlen, fmt, ntrks, division = struct.unpack_from(">IHHH", data, 4)
    if hlen < 6:
        raise MidiRejected("unparseable", f"The MIDI header length is {hlen}, expected 6.")
    if fmt > 2:
        raise MidiRejected("unparseable", f"Unknown MIDI format {fmt}; only 0, 1 and 2 exist.")
    if division & 0x8000:
        raise MidiRejected(
            "unparseable",
            "The file uses SMPTE time division, which is not supported; "
            "re-export it with ticks per quarter note.",
        )
    if division == 0:
        raise MidiRejected("unparseable", "The file declares 0 ticks per quarter note.")
    if ntrks == 0:
        raise MidiRejected("empty", "The MIDI header declares no tracks.")
    pos = 8 + hlen
    chunks = 0
    while pos + 8 <= len(data) and chunks < ntrks:
        (size,) = struct.unpack_from(">I", data, pos + 4)
        if pos + 8 + size > len(data):
            raise MidiRejected(
                "truncated",
                f"The file ends inside track chunk {chunks + 1} of {ntrks} "
                f"({len(data) - pos - 8:,} of {size:,} bytes present); "
                "it was probably cut off, upload it again.",
            )
        if data[pos : pos + 4] == b"MTrk":
            chunks += 1
        pos += 8 + size
    if chunks == 0:
        raise MidiRejected("truncated", "The file has a header but no complete track chunk.")
    return data


def load_score(data: bytes, limits: MidiLimits | None = None) -> ScoreTick:
    """Parse a stored file for a worker: in the sandbox first, then in-process.

    With ``limits`` it also re-checks sizes and content; without, only the structure, because a
    stored file was validated at upload and re-measuring costs a seconds conversion.
    """
    smf = check_structure(data, limits or MidiLimits(max_bytes=max(len(data), 1)))
    if limits is not None:
        _sandboxed(smf, limits, "inspect")
    else:
        _sandboxed(smf, MidiLimits(max_bytes=max(len(smf), 1)), "parse")
    score = parse_smf(smf)
    if limits is not None:
        summarize(score, limits)
    return score


def parse_midi(data: bytes) -> ScoreTick:
    """symusic's parse for rendering, with no structure checks or content limits (a render takes
    any file symusic reads), run in the sandbox first like :func:`load_score`; symusic's errors
    and a crashed parse become ValueError, which callers map to "bad input", not "server
    fault"."""
    from symusic.core import ScoreTick

    try:
        _sandboxed(data, MidiLimits(max_bytes=max(len(data), 1)), "parse")
    except MidiRejected as exc:
        raise ValueError(f"not a readable MIDI file: {exc.message}") from exc
    try:
        return ScoreTick.from_midi(data)
    except RuntimeError as exc:
        raise ValueError(f"not a readable MIDI file: {exc}") from exc


# --------------------------------------------------------------------------------------------
# the bounded child


def inspect_midi(data: bytes, limits: MidiLimits = MidiLimits()) -> MidiInfo:
    """Validate and measure an uploaded MIDI file in a bounded child process.

    Raises :class:`MidiRejected` with a code from :data:`REJECT_CODES`. The child's address space
    may grow by ``limits.memory_bytes``, it gets ``ceil(timeout_s) + 1`` CPU seconds and is killed
    after ``limits.timeout_s`` of wall time. Thread-safe; each call forks a fresh child from a
    zygote process started on first use (see :mod:`cadenza.midi._sandbox`).
    """
    info = _sandboxed(check_structure(data, limits), limits, "inspect")
    assert info is not None
    return info


def _sandboxed(smf: bytes, limits: MidiLimits, mode: str) -> MidiInfo | None:
    """Parse ``smf`` in a bounded sandbox child; its summary in "inspect" mode, else None.

    Raises :class:`MidiRejected` for a refused file, a crashed parser and a timeout alike.
    """
    from cadenza.midi._sandbox import SandboxCrashed, SandboxTimeout, zygote

    try:
        answer = zygote().run({**asdict(limits), "mode": mode}, smf, limits.timeout_s)
    except SandboxTimeout:
        raise MidiRejected(
            "timeout",
            f"Reading the file took more than {limits.timeout_s:g} s, so it was stopped. "
            "The file is unusually complex; simplify or split it.",
        ) from None
    except SandboxCrashed:
        raise MidiRejected(
            "unparseable",
            "The MIDI parser crashed on this file (or hit its CPU limit); "
            "re-save it in a MIDI editor and upload it again.",
        ) from None
    if "ok" not in answer:
        raise MidiRejected(answer["code"], answer["message"])
    if answer["ok"] is None:
        return None
    d = answer["ok"]
    d["programs"] = tuple(d["programs"])
    return MidiInfo(**d)


def warm_up() -> None:
    """Start the sandbox zygote now (≈0.2 s) so the first upload does not pay for it."""
    from cadenza.midi._sandbox import zygote

    zygote().path()


__all__ = [
    "REJECT_CODES",
    "MidiInfo",
    "MidiLimits",
    "MidiRejected",
    "check_structure",
    "inspect_midi",
    "load_score",
    "parse_midi",
    "parse_smf",
    "sniff_midi",
    "summarize",
    "time_signature_map",
    "warm_up",
]


def time_signature_map(score: ScoreTick) -> list[tuple[int, int, int]]:
    """(tick, numerator, denominator) of each time signature in time order, starting at tick 0
    with 4/4 when the file sets none there (the MIDI default); signatures with a zero field,
    which no bar length can follow, are skipped. Bars, primers and piano rolls all use this."""
    sigs = sorted(
        (
            (int(ts.time), int(ts.numerator), int(ts.denominator))
            for ts in score.time_signatures
            if ts.numerator > 0 and ts.denominator > 0
        ),
        key=lambda sig: sig[0],  # stable: signatures at the same tick keep the file's order
    )
    if not sigs or sigs[0][0] > 0:
        sigs.insert(0, (0, 4, 4))
    return sigs
