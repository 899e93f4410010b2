"""The studio's pure front-end logic (logic.js), run in Chromium on known input.

No server: the page and its modules are answered from the package's static folder by a
Playwright route, so these tests are as fast as unit tests. MIDI bytes come from real
chorales (music21's corpus) and are checked against symusic's reading of the same file.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import symusic
from playwright.sync_api import Browser, Page, Route

from tests.browser.conftest import STATIC, Console

ORIGIN = "http://studio.test"


def _serve(route: Route) -> None:
    name = route.request.url.removeprefix(ORIGIN + "/").split("?")[0] or "index.html"
    path = STATIC / name
    if not path.is_file() or STATIC not in path.resolve().parents:
        route.fulfill(status=404, body="")
        return
    types = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
    route.fulfill(status=200, body=path.read_bytes(), content_type=types[path.suffix])


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    context.route(f"{ORIGIN}/**", _serve)
    # All other requests (the page would call /v1 once signed in) are refused.
    pg = context.new_page()
    console = Console(pg)
    pg.goto(f"{ORIGIN}/index.html")
    pg.wait_for_selector("input[name=key]")
    pg.evaluate("async () => { window.logic = await import('/logic.js'); }")
    yield pg
    assert not console.errors, console.errors
    context.close()


def js(page: Page, body: str, arg: Any = None) -> Any:
    return page.evaluate(f"(arg) => {{ const L = window.logic; {body} }}", arg)


def test_parse_midi_matches_symusic_on_real_chorales(page: Page, chorales: list[Path]) -> None:
    for path in chorales[:3]:
        data = path.read_bytes()
        parsed = js(
            page,
            "const b = Uint8Array.from(atob(arg), c => c.charCodeAt(0));"
            "const m = L.parseMidi(b);"
            "return {n: m.notes.length, tracks: m.tracks, duration: m.duration,"
            " first: m.notes.slice(0, 20).map(x => [x.pitch, x.start, x.end])};",
            base64.b64encode(data).decode(),
        )
        score = symusic.Score.from_midi(data, ttype="second")
        notes = sorted(
            ((n.time, n.pitch, n.time + n.duration) for t in score.tracks for n in t.notes),
            key=lambda x: (x[0], x[1]),
        )
        assert parsed["n"] == len(notes)
        assert parsed["tracks"] == sum(1 for t in score.tracks if len(t.notes))
        assert parsed["duration"] == pytest.approx(max(n[2] for n in notes), abs=1e-3)
        for (pitch, start, end), (s_start, s_pitch, s_end) in zip(
            parsed["first"], notes[:20], strict=True
        ):
            assert (pitch, start, end) == (
                s_pitch,
                pytest.approx(s_start, abs=1e-3),
                pytest.approx(s_end, abs=1e-3),
            )


def test_parse_midi_applies_tempo_changes_and_refuses_garbage(page: Page) -> None:
    # One track, 480 ticks per quarter: a note at 0 (1 quarter), tempo → 60 bpm at tick 480,
    # then a note of 1 quarter at 480: it starts at 0.5 s and lasts 1 s.
    track = bytes(
        [0x00, 0x90, 60, 100, 0x83, 0x60, 0x80, 60, 0]  # on at 0, off at 480
        + [0x00, 0xFF, 0x51, 0x03, 0x0F, 0x42, 0x40]  # tempo 1,000,000 µs per quarter at 480
        + [0x00, 0x90, 64, 90, 0x83, 0x60, 64, 0]  # running status: note-on vel 0 = off
        + [0x00, 0xFF, 0x2F, 0x00]
    )
    smf = (
        b"MThd"
        + (6).to_bytes(4, "big")
        + (0).to_bytes(2, "big")
        + (1).to_bytes(2, "big")
        + (480).to_bytes(2, "big")
        + b"MTrk"
        + len(track).to_bytes(4, "big")
        + track
    )
    out = js(
        page,
        "return L.parseMidi(Uint8Array.from(arg)).notes"
        ".map(n => [n.pitch, n.start, n.end, n.velocity]);",
        list(smf),
    )
    assert out == [[60, 0, 0.5, 100], [64, 0.5, 1.5, 90]]
    err = js(
        page,
        "try { L.parseMidi(new TextEncoder().encode('not midi at all')); }"
        " catch (e) { return [e.name, e instanceof L.MidiError, e.message]; }",
    )
    assert err[1] is True and "not a MIDI file" in err[2]


def test_roll_geometry_spans_the_box_and_keeps_notes_visible(page: Page) -> None:
    notes = [
        {"pitch": 60, "start": 0, "end": 1, "velocity": 80},
        {"pitch": 72, "start": 1, "end": 2, "velocity": 80},
        {"pitch": 66, "start": 1.999, "end": 2, "velocity": 80},  # 1 ms: still 1 px wide
    ]
    g = js(page, "return L.rollGeometry(arg, 200, 130, 0);", notes)
    assert (g["low"], g["high"]) == (60, 72)
    a, b, c = g["rects"]
    assert a["x"] == 0 and a["w"] == 100 and a["y"] == 120  # lowest pitch in the bottom row
    assert b["x"] == 100 and b["y"] == 0 and b["x"] + b["w"] == 200
    assert c["w"] == 1 and a["h"] == pytest.approx(10)
    # A single pitch is padded to an octave, so one note is not a full-height bar.
    one = js(page, "return L.rollGeometry(arg, 100, 120, 4);", notes[:1])
    assert one["high"] - one["low"] == 11 and one["rects"][0]["w"] == 25
    assert js(page, "return L.rollGeometry([], 100, 100, 0).rects.length;") == 0


def test_sse_parser_handles_split_frames_comments_and_crlf(page: Page) -> None:
    chunks = [
        'id: 7\nevent: progress\ndata: {"progress"',
        ": 0.5}\n\n: keep-alive\n\n",
        "event: metrics\r\ndata: a\r\ndata: b\r",
        "\n\r\nevent: end\ndata: {}\n",
        "\n",
    ]
    events = js(
        page,
        "const p = new L.SSEParser(); return arg.map(c => p.push(c));",
        chunks,
    )
    assert events == [
        [],
        [{"id": "7", "event": "progress", "data": '{"progress": 0.5}'}],
        [],
        [{"id": "7", "event": "metrics", "data": "a\nb"}],
        [{"id": "7", "event": "end", "data": "{}"}],
    ]


def test_loss_series_maps_steps_and_losses_into_the_box(page: Page) -> None:
    rows = [
        {"step": 10, "split": "train", "loss": 4.0},
        {"step": 20, "split": "train", "loss": 3.0},
        {"step": 20, "split": "val", "loss": 3.5},
        {"step": 30, "split": "train", "loss": 2.0},
        {"step": 30, "split": "train", "loss": 2.5},  # a resumed run replays a step: last wins
    ]
    out = js(page, "return L.lossSeries(arg, 100, 30, 0);", rows)
    assert out["bounds"] == {"minStep": 10, "maxStep": 30, "minLoss": 2.5, "maxLoss": 4.0}
    assert out["series"]["train"] == [[0, 0], [50, 20], [100, 30]]
    assert out["series"]["val"] == [[50, 10]]
    assert js(page, "return L.lossSeries([], 10, 10).bounds;") is None


def test_form_values_become_the_api_requests(page: Page) -> None:
    base = {
        "primer_file_id": "f1",
        "primer_bars": "2",
        "n": "3",
        "length": "tokens",
        "max_new_tokens": "64",
        "max_bars": "8",
        "temperature": "0.9",
        "top_k": "20",
        "top_p": "",
        "min_p": "0.05",
        "seed": "",
    }
    body = js(page, "return L.sampleRequest(arg);", base)
    assert body == {
        "primer_file_id": "f1",
        "primer_bars": 2,
        "n": 3,
        "max_new_tokens": 64,
        "temperature": 0.9,
        "top_k": 20,
        "min_p": 0.05,
    }
    bars = js(page, "return L.sampleRequest(arg);", base | {"length": "bars", "primer_file_id": ""})
    assert bars["max_bars"] == 8 and "primer_bars" not in bars and "primer_file_id" not in bars
    cont = js(page, "return L.sampleRequest(arg);", base | {"primer_sample_id": "s1"})
    assert cont["primer_sample_id"] == "s1" and "primer_file_id" not in cont
    # A malformed number is sent as null so the API names the field (422).
    assert js(page, "return L.sampleRequest({top_k: 'abc'});") == {"top_k": None}
    train = js(
        page,
        "return L.trainRequest(arg);",
        {
            "corpus_id": "c",
            "architecture": "gpt",
            "preset": "tiny",
            "max_steps": "30",
            "lr": "0.001",
            "seq_len": "",
        },
    )
    assert train == {
        "corpus_id": "c",
        "architecture": "gpt",
        "preset": "tiny",
        "train": {"max_steps": 30, "lr": 0.001},
    }
    assert js(
        page,
        "return L.corpusRequest(arg);",
        {"dataset_id": "d", "preset": "", "tokenizer": "TSD", "seed": "3"},
    ) == {
        "dataset_id": "d",
        "tokenizer": "TSD",
        "seed": 3,
    }


def test_metric_rows_lineage_and_durations(page: Page) -> None:
    meta = {
        "metrics": {
            "pitch_range": {"sample": 20, "corpus_mean": 24.5, "corpus_std": 3, "z": -1.5},
            "x": 3,
        }
    }
    assert js(page, "return L.metricRows(arg);", meta) == [
        {"name": "pitch_range", "sample": 20, "mean": 24.5, "std": 3, "z": -1.5}
    ]
    chain = js(
        page,
        "return L.lineageChain(arg[0], arg[1]).map(s => s.id);",
        [[{"id": "a"}, {"id": "b"}, {"id": "c"}], {"id": "c"}],
    )
    assert chain == ["a", "b", "c"]
    assert js(
        page, "return [L.formatDuration(65.2), L.formatDuration(null), L.formatDuration(5)];"
    ) == ["1:05", "", "0:05"]


def test_the_copy_check_in_words(page: Page) -> None:
    novelty = {"copied_fraction": 0.125, "longest_copied_run": 9}
    text = js(page, "return L.noveltyText({novelty: arg});", novelty)
    assert text.startswith("13% of its 8-note phrases") and "longest copied run 9 notes" in text
    over = novelty | {"max_copied_fraction": 0.1, "resampled": 3, "over_limit": True}
    assert "still over the 0.1 limit after 3 re-samples" in js(
        page, "return L.noveltyText({novelty: arg});", over
    )
    under = over | {"over_limit": False, "resampled": 1}
    said = js(page, "return L.noveltyText({novelty: arg});", under)
    assert "re-sampled 1× to get under 0.1" in said
    assert js(page, "return [L.noveltyText({}), L.noveltyText({novelty: null})];") == ["", ""]
    body = js(page, "return L.sampleRequest(arg);", {"max_copied_fraction": "0.2"})
    assert body == {"max_copied_fraction": 0.2}


def test_error_answers_become_messages_naming_the_fields(page: Page) -> None:
    body = {
        "error": {
            "code": "invalid_request",
            "message": "the request is invalid",
            "details": [{"field": "train.seq_len", "message": "must be at least 8"}],
        }
    }
    out = page.evaluate(
        """async (body) => {
            const api = await import('/api.js');
            const e = api.errorFrom(422, body);
            const bare = api.errorFrom(502, null);
            return [e.status, e.code, e.message, bare.code, bare.message];
        }""",
        body,
    )
    assert out == [
        422,
        "invalid_request",
        "the request is invalid: train.seq_len: must be at least 8",
        "http_502",
        "the server answered 502",
    ]


def _bars_score() -> symusic.Score:
    """3/4 for three bars then 4/4; 120 bpm, then 60 bpm from bar 3; a bass track and drums."""
    from symusic import Note, Score, Tempo, TimeSignature, Track

    score = Score(480)
    score.time_signatures.append(TimeSignature(0, 3, 4))
    score.time_signatures.append(TimeSignature(4320, 4, 4))
    score.tempos.append(Tempo(0, 120.0))
    score.tempos.append(Tempo(2880, 60.0))
    bass = Track("bass", 33, False)
    bass.notes.append(Note(0, 480, 40, 90))
    drums = Track("drums", 0, True)
    drums.notes.append(Note(6240, 480, 36, 100))  # bar 5 (4/4 from tick 4320: 4320, 6240, …)
    score.tracks.append(bass)
    score.tracks.append(drums)
    return score


def test_bar_times_follow_time_signatures_and_tempo_and_count_as_the_api(page: Page) -> None:
    from cadenza.tokenize.base import count_bars

    score = _bars_score()
    data = score.dumps_midi()
    got = js(
        page,
        "const m = L.parseMidi(Uint8Array.from(arg)); const bars = L.barTimes(m);"
        "return {bars, parts: m.parts.map(p => [p.program, p.drums]),"
        " at: [-5, 10, 35, 139, 200].map(x => L.barAt(x, 140, 14, bars)),"
        " span: L.barSpan(2, 3, 140, 14, bars), clamp: L.barSpan(4, 9, 140, 14, bars)};",
        list(data),
    )
    # Bar starts in ticks 0, 1440, 2880 (3/4 at 0.5 s a quarter, then 1 s), 4320, 6240 (4/4).
    assert got["bars"] == pytest.approx([0, 1.5, 3.0, 6.0, 10.0, 14.0])
    assert len(got["bars"]) - 1 == count_bars(symusic.Score.from_midi(data)) == 5
    assert got["parts"] == [[33, False], [0, True]]
    assert got["at"] == [1, 1, 3, 5, 5]
    assert got["span"] == pytest.approx([15, 60])
    assert got["clamp"] == pytest.approx([60, 140])  # bars past the end stop at the last one
    # No time signature: 4/4; a file without notes still has one bar to show.
    plain = js(
        page,
        "return L.barTimes({ticksPerQuarter: 480, tempos: [], timeSigs: [],"
        " endTick: 3840, duration: 4});",
    )
    assert plain == pytest.approx([0, 2, 4])
    assert js(page, "return L.barTimes({ticksPerQuarter: 480, endTick: 0, duration: 0});") == [0, 2]


def test_edit_requests_and_constrained_decoding(page: Page) -> None:
    values = {
        "primer_file_id": "f1",
        "primer_bars": "2",
        "n": "2",
        "length": "bars",
        "max_new_tokens": "64",
        "max_bars": "8",
        "temperature": "0.9",
        "seed": "7",
        "max_copied_fraction": "0.5",
        "constrained": "on",
    }
    infill = js(
        page,
        "return L.editRequest(arg, 'infill', 's1', {from: '2', to: ' 3', tracks: '1'});",
        values,
    )
    assert infill == {
        "mode": "infill",
        "source_sample_id": "s1",
        "infill": {"bars": [2, 3], "tracks": [1]},
        "n": 2,
        "max_new_tokens": 64,
        "temperature": 0.9,
        "seed": 7,
        "constrained": True,
    }
    every = js(page, "return L.editRequest(arg, 'infill', 's1', {from: 4, to: 4, tracks: ''});", {})
    assert every == {"mode": "infill", "source_sample_id": "s1", "infill": {"bars": [4, 4]}}
    acc = js(
        page, "return L.editRequest(arg, 'accompany', 's2', {programs: '33, 0', drums: true});", {}
    )
    assert acc == {
        "mode": "accompany",
        "source_sample_id": "s2",
        "accompany": {"programs": [33, 0], "drums": True},
    }
    from_file = js(
        page, "return L.editRequest({}, 'infill', {source_file_id: 'f9'}, {from: 1, to: 2});"
    )
    assert from_file == {"mode": "infill", "source_file_id": "f9", "infill": {"bars": [1, 2]}}
    # A malformed number goes as null, for the API to name the field.
    bad = js(page, "return L.editRequest({}, 'accompany', 's2', {programs: 'bass'});")
    assert bad["accompany"] == {"programs": [None], "drums": False}
    assert js(page, "return L.sampleRequest({constrained: 'off'});") == {"constrained": False}
    assert js(page, "return L.sampleRequest({constrained: 'on'});") == {"constrained": True}
    assert js(page, "return L.sampleRequest({});") == {}
    assert js(page, "return L.sampleRequest({quantize: 'on'});") == {"quantize": "int8"}
    assert js(page, "return [L.programName(33), L.programName(0, true), L.programName(200)];") == [
        "program 33 (bass)",
        "drums",
        "program 200",
    ]


def test_attribute_controls_and_tags_become_fields_and_request_values(page: Page) -> None:
    caps = {
        "modes": ["continue"],
        "controls": {
            "tempo": {"per": "piece", "range": [40, 240], "unit": "bpm"},
            "key": {"per": "piece", "values": ["C", "Dm"]},
            "time_signature": {"per": "piece", "values": ["3/4", "4/4"]},
            "note_density": {"per": "bar", "range": [0, 32], "unit": "notes per bar"},
            "pitch_range": {
                "per": "bar",
                "range": [0, 127],
                "unit": "[lowest, highest] MIDI pitch",
            },
            "duration": {"per": "bar", "range": [0.125, 8], "unit": "mean note length in beats"},
        },
        "tags": ["baroque"],
    }
    fields = js(page, "return L.controlFields(arg);", caps)
    assert [(f["name"], f["kind"]) for f in fields] == [
        ("control.tempo", "number"),
        ("control.key", "select"),
        ("control.time_signature", "select"),
        ("control.note_density", "number"),
        ("control.pitch_range", "pair"),
        ("control.duration", "number"),
    ]
    assert fields[0] | {} == {
        "name": "control.tempo",
        "label": "tempo",
        "hint": "bpm, the piece",
        "kind": "number",
        "min": 40,
        "max": 240,
        "step": "1",
    }
    assert fields[1]["options"] == ["C", "Dm"] and fields[5]["step"] == "any"
    assert fields[3]["hint"] == "notes per bar, every bar"
    assert js(page, "return L.controlFields({modes: ['continue']});") == []
    values = {
        "control.tempo": "90",
        "control.key": "Dm",
        "control.time_signature": "3/4",
        "control.note_density": "",
        "control.pitch_range.lo": "55",
        "control.pitch_range.hi": "79",
        "control.duration": "0.5",
        "tag.baroque": "on",
    }
    body = js(page, "return L.sampleRequest(arg);", values)
    assert body == {
        "controls": {
            "tempo": 90,
            "key": "Dm",
            "time_signature": "3/4",
            "pitch_range": [55, 79],
            "duration": 0.5,
        },
        "tags": ["baroque"],
    }
    # Half a pitch range is left out (the model samples it); edits take no controls.
    half = js(page, "return L.sampleRequest(arg);", {"control.pitch_range.lo": "55"})
    assert half == {}
    edit = js(page, "return L.editRequest(arg, 'infill', 's', {from: 1, to: 1});", values)
    assert "controls" not in edit and "tags" not in edit


def test_per_track_controls_become_fields_and_controls_tracks(page: Page) -> None:
    """A multitrack model's `capabilities.tracks`: its per-bar controls again for each track
    (at most the model's `max`), read back as `controls.tracks`, {} for a track left free."""
    caps = {
        "controls": {
            "key": {"per": "piece", "values": ["C", "Dm"]},
            "note_density": {"per": "bar", "range": [0, 32], "unit": "notes per bar"},
            "pitch_range": {"per": "bar", "range": [0, 127], "unit": "MIDI pitch"},
        },
        "tracks": {"max": 3, "controls": ["note_density", "pitch_range"], "select": ["index"]},
    }
    tracks = js(page, "return L.trackControlFields(arg);", caps)
    assert [[(f["name"], f["kind"]) for f in t] for t in tracks] == [
        [(f"track.{i}.note_density", "number"), (f"track.{i}.pitch_range", "pair")]
        for i in range(3)
    ]
    assert tracks[1][0]["hint"] == "notes per bar, every bar of track 2"
    assert js(page, "return L.trackControlFields(arg);", caps | {"tracks": None}) == []
    values = {
        "control.key": "Dm",
        "track.0.note_density": "4",
        "track.1.note_density": "",
        "track.2.pitch_range.lo": "40",
        "track.2.pitch_range.hi": "55",
    }
    body = js(page, "return L.sampleRequest(arg);", values)
    assert body == {
        "controls": {"key": "Dm", "tracks": [{"note_density": 4}, {}, {"pitch_range": [40, 55]}]}
    }
    # trailing tracks left free are not sent; nothing set per track sends no `tracks`
    short = js(
        page,
        "return L.sampleRequest(arg);",
        {"track.0.note_density": "9"} | {"track.3.pitch_range.lo": "40"},
    )
    assert short == {"controls": {"tracks": [{"note_density": 9}]}}
    assert js(page, "return L.sampleRequest(arg);", {"track.1.note_density": ""}) == {}


def test_audio_forms_become_audio_requests_and_corpora_say_their_kind(page: Page) -> None:
    # audio-vq: its options (`vq.*`, only those set) go as tokenizer_config; a preset wins.
    values = {"dataset_id": "d", "preset": "", "tokenizer": "audio-vq", "seed": "1"}
    vq = {"vq.steps": "20", "vq.channels": "16", "vq.sample_rate": "", "vq.lr": "x"}
    assert js(page, "return L.corpusRequest(arg);", values | vq) == {
        "dataset_id": "d",
        "tokenizer": "audio-vq",
        "seed": 1,
        "tokenizer_config": {"steps": 20, "channels": 16, "lr": None},
    }
    assert js(page, "return L.corpusRequest(arg);", values) == {
        "dataset_id": "d",
        "tokenizer": "audio-vq",
        "seed": 1,
    }
    # The vq fields mean nothing to a MIDI tokenizer and are not sent.
    assert "tokenizer_config" not in js(
        page, "return L.corpusRequest(arg);", values | vq | {"tokenizer": "REMI"}
    )
    form = {
        "primer_file_id": "f1",
        "primer_seconds": "4",
        "n": "2",
        "max_seconds": "3.5",
        "temperature": "0.9",
        "top_k": "32",
        "top_p": "",
        "seed": "7",
        # MIDI-only fields, should a form carry them, are never sent to an audio model.
        "primer_bars": "2",
        "max_new_tokens": "64",
        "constrained": "on",
    }
    assert js(page, "return L.audioSampleRequest(arg);", form) == {
        "primer_file_id": "f1",
        "primer_seconds": 4,
        "n": 2,
        "max_seconds": 3.5,
        "temperature": 0.9,
        "top_k": 32,
        "seed": 7,
    }
    cont = js(
        page,
        "return L.audioSampleRequest(arg);",
        {"primer_sample_id": "s1", "max_seconds": "2", "primer_file_id": "f1"},
    )
    assert cont == {"primer_sample_id": "s1", "max_seconds": 2}
    # No primer: primer_seconds has nothing to cut, so it is left out.
    assert (
        js(page, "return L.audioSampleRequest(arg);", {"primer_file_id": "", "primer_seconds": "4"})
        == {}
    )
    assert js(page, "return L.audioSampleRequest({seed: 'abc'});") == {"seed": None}
    audio = {"capabilities": {"modes": ["continue"], "output": "audio"}}
    midi = {"capabilities": {"modes": ["continue"], "output": "midi"}}
    assert js(page, "return [arg.map(L.isAudioModel)];", [audio, midi, None, {}]) == [
        [True, False, False, False]
    ]
    samples = [{"meta": {"kind": "audio"}}, {"meta": {}}, {}]
    assert js(page, "return [arg.map(L.isAudioSample)];", samples) == [[True, False, False]]
