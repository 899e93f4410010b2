"""A MIDI parser that crashes or hangs costs one file, never the worker: every place a worker
parses user MIDI (primers, renders, corpora, single-file ones included) parses in the sandbox
child first. The child's test hook (``CADENZA_TEST_MIDI_PARSER_FAULT``) makes it segfault or
hang on a file carrying a marker, standing in for a parser bug no real file triggers today."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from cadenza.midi._sandbox import FAULT_ENV, FAULT_MARKER, zygote
from cadenza.midi.load import MidiLimits, MidiRejected, load_score, parse_midi
from cadenza.render.pianoroll import pianoroll_png
from cadenza.tokenize import TokenizerSpec, build_tokenizer, encode_primer
from cadenza.tokenize.corpus import CorpusEmpty, build_corpus
from tests.support.music import midi_bytes

GOOD = midi_bytes([(i * 240, 240, 60 + i % 12, 80) for i in range(32)])
# The marker rides in an unknown chunk after the track, which MIDI readers skip.
POISON = GOOD + b"XJnk" + struct.pack(">I", len(FAULT_MARKER)) + FAULT_MARKER


@pytest.fixture
def fault(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A zygote started with the fault hook armed, and a clean one again afterwards."""
    zygote().close()
    monkeypatch.setenv(FAULT_ENV, "crash")
    yield
    zygote().close()


def test_crash_is_a_rejection_of_that_file(fault: None) -> None:
    with pytest.raises(MidiRejected) as exc:
        load_score(POISON)
    assert exc.value.code == "unparseable" and "crashed" in exc.value.message
    with pytest.raises(MidiRejected):
        load_score(POISON, MidiLimits())
    with pytest.raises(ValueError, match="crashed"):
        parse_midi(POISON)
    with pytest.raises(ValueError, match="crashed"):
        pianoroll_png(POISON)  # renders: render_all reports it per format, the job a UserError
    tok = build_tokenizer(TokenizerSpec(name="REMI"))
    with pytest.raises(ValueError, match="crashed"):
        encode_primer(tok, POISON)  # the sample handler turns ValueError into UserError
    assert load_score(GOOD).note_num() == 32  # this process and the sandbox are fine


def test_corpus_skips_and_reports_the_crashing_file(fault: None) -> None:
    spec = TokenizerSpec(name="REMI")
    with pytest.raises(CorpusEmpty) as exc:  # a single-file corpus runs in this process
        build_corpus([("bad", POISON)], spec, workers=1)
    assert "crashed" in str(exc.value)
    build = build_corpus([("bad", POISON), ("good", GOOD)], spec, split=(1, 0, 0), workers=1)
    assert build.file_splits["train"] == ["good"]
    assert "crashed" in build.stats.skipped["bad"]


def test_hang_is_stopped_and_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    zygote().close()
    monkeypatch.setenv(FAULT_ENV, "hang")
    try:
        with pytest.raises(MidiRejected) as exc:
            load_score(POISON, MidiLimits(timeout_s=0.5))
        assert exc.value.code == "timeout"
    finally:
        zygote().close()
