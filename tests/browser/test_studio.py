"""The studio in a real browser against a real API and worker (the embedded stack).

One walk through the story a musician takes, each step through the page as a person would
use it: sign in, create a dataset, upload chorales (file picker and drag-and-drop) and a
recording, see a refused file's message from the server, convert the recording, tokenize,
train a tiny model while the loss curve grows, sample, listen (<audio> has a duration), look
at the piano roll, continue a variation, cancel a job on the Jobs page. Then, with a model of
a multitrack corpus: choose bars on a piano roll and regenerate them, add instruments, edit a
dataset's file; with a model of a corpus with controls and tags: steer a sample; with a model
of recordings (audio-vq): the corpus options, the audio sample form, listen, look at the
spectrogram, download the WAV, continue a variation. Every page is
checked with axe-core (no serious or critical violations), at 1280×800 and at phone width, and
screenshotted under the test's tmp folder; no page may log a console error.
"""

from __future__ import annotations

import base64
import io
import math
import re
import struct
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from cadenza.client import Client
from tests.browser.conftest import Console, axe_violations
from tests.support.music import multitrack_chorale
from tests.support.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LONG = 240_000  # ms: a tokenize or training job on a busy 2-core runner


def tone_wav(seconds: float = 1.5, rate: int = 16000) -> bytes:
    """A 440 Hz sine as 16-bit mono WAV: a real recording as far as the API can tell."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        frames = (
            int(8000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(int(seconds * rate))
        )
        w.writeframes(b"".join(struct.pack("<h", f) for f in frames))
    return buf.getvalue()


class Studio:
    """The page, its console, and the checks every page gets."""

    def __init__(self, page: Page, shots: Path) -> None:
        self.page = page
        self.console = Console(page)
        self.shots = shots

    def ready(self) -> None:
        expect(self.page.locator("main[data-ready=true]")).to_be_visible(timeout=60_000)

    def check(self, name: str, *, phone: bool = False) -> None:
        """axe-core on the page as it is, a screenshot; the same at phone width if asked."""
        self.ready()
        bad = axe_violations(self.page)
        assert not bad, f"{name}: {bad}"
        self.page.screenshot(path=str(self.shots / f"{name}.png"))
        if phone:
            self.page.set_viewport_size(PHONE)
            bad = axe_violations(self.page)
            assert not bad, f"{name} (phone): {bad}"
            # Nothing wider than the screen but tables, which scroll inside themselves.
            overflow = self.page.evaluate("() => document.documentElement.scrollWidth")
            wide = self.page.evaluate(
                """w => [...document.querySelectorAll('body *')]
                    .filter(e => e.getBoundingClientRect().right > w + 1 && !e.closest('table'))
                    .slice(0, 5).map(e => e.tagName + '.' + e.className)""",
                PHONE["width"],
            )
            assert overflow <= PHONE["width"] + 1, f"{name}: {overflow}px wide on a phone: {wide}"
            self.page.screenshot(path=str(self.shots / f"{name}-phone.png"))
            self.page.set_viewport_size(DESKTOP)
        assert not self.console.errors, f"{name}: {self.console.errors}"

    def go(self, hash_: str) -> None:
        self.page.evaluate(f"location.hash = {hash_!r}")
        self.ready()


@pytest.fixture
def studio(browser: Browser, embedded_stack: Stack, tmp_path: Path) -> Iterator[Studio]:
    context = browser.new_context(viewport=DESKTOP, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(60_000)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    s = Studio(page, shots)
    yield s
    context.close()


def test_the_studio_story(studio: Studio, embedded_stack: Stack, chorales: list[Path]) -> None:
    page = studio.page
    api = httpx.Client(
        base_url=embedded_stack.api_url,
        headers={"Authorization": f"Bearer {embedded_stack.api_key}"},
        timeout=60,
    )

    # --- sign in ----------------------------------------------------------------------------
    page.goto(f"{embedded_stack.api_url}/studio")
    key_field = page.get_by_label("API key", exact=True)
    expect(key_field).to_be_visible()
    studio.check("signin")
    # By keyboard: the field has focus when the page opens; Enter submits.
    expect(key_field).to_be_focused()
    page.keyboard.type(embedded_stack.api_key)
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("Signed in as alice")
    assert page.evaluate("sessionStorage.getItem('cadenza.apiKey')") == embedded_stack.api_key

    # --- datasets: create, upload (picker and drag-and-drop), a refused file ----------------
    studio.ready()
    page.get_by_label("Name", exact=True).fill("studio chorales")
    page.get_by_role("button", name="Create dataset").click()
    expect(page.get_by_role("heading", name="studio chorales", level=1)).to_be_visible()
    studio.ready()
    wav = tone_wav()
    page.locator("#upload-input").set_input_files(
        [
            *(
                {"name": p.name, "mimeType": "audio/midi", "buffer": p.read_bytes()}
                for p in chorales[:3]
            ),
            {"name": "tone.wav", "mimeType": "audio/wav", "buffer": wav},
        ]
    )
    done = page.locator(".uploads li.ok")
    expect(done).to_have_count(4, timeout=LONG)
    assert page.eval_on_selector_all(".uploads progress", "els => els.map(e => e.value)") == [1] * 4
    # Drag and drop: a real drop event carrying a File, as the browser makes it.
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "audio/midi"}));
            const zone = document.querySelector("[data-testid=dropzone]");
            const init = {dataTransfer: dt, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("dragover", init));
            zone.dispatchEvent(new DragEvent("drop", init));
        }""",
        [chorales[3].name, base64.b64encode(chorales[3].read_bytes()).decode()],
    )
    expect(done).to_have_count(5, timeout=LONG)
    # A file that is not music: the server's own message is shown next to it.
    garbage = b"this is a text file, not a MIDI file\n" * 4
    ds_id = page.evaluate("location.hash.split('/')[2]")
    server = httpx.post(
        f"{embedded_stack.api_url}/v1/datasets/{ds_id}/files",
        headers={"Authorization": f"Bearer {embedded_stack.api_key}"},
        files={"files": ("notes.mid", garbage)},
    )
    assert server.status_code in (415, 422)
    message = server.json()["error"]["message"]
    page.locator("#upload-input").set_input_files(
        [{"name": "notes.mid", "mimeType": "audio/midi", "buffer": garbage}]
    )
    rejected = page.locator(".uploads li.rejected")
    expect(rejected).to_have_count(1)
    expect(rejected.locator(".error")).to_have_text(message)
    # The browser logs the refused request itself; that one console error is expected.
    assert all(f"status of {server.status_code}" in e for e in studio.console.errors)
    studio.console.errors.clear()
    rows = page.locator("table.files tbody tr")
    expect(rows).to_have_count(5)
    # Piano-roll thumbnails drawn from each MIDI file's notes; the recording plays.
    expect(page.locator("canvas.roll[data-notes]")).to_have_count(4)
    assert all(
        int(n) > 0
        for n in page.eval_on_selector_all("canvas.roll", "c => c.map(x => x.dataset.notes)")
    )
    tone_row = rows.filter(has_text="tone.wav")
    expect(tone_row).to_contain_text("0:02")  # 1.5 s rounds to 2
    page.wait_for_function(
        "() => [...document.querySelectorAll('table.files audio')].some(a => a.duration > 0)"
    )
    studio.check("dataset", phone=True)

    # --- audio tools: convert the recording; the new file names its source -------------------
    studio.go("#/audio")
    page.get_by_label("Dataset", exact=True).select_option(label="studio chorales")
    page.get_by_label("Operation", exact=True).select_option("convert")
    page.get_by_label("Sample rate (Hz)", exact=True).fill("8000")
    page.get_by_role("button", name="Start audio job").click()
    expect(page.locator("main")).to_contain_text("from tone.wav", timeout=LONG)
    studio.check("audio")
    # The new file is in the dataset, naming its source; delete it from there.
    studio.go(f"#/datasets/{ds_id}")
    converted = rows.filter(has=page.locator(".hint", has_text="from tone.wav"))
    expect(converted).to_have_count(1)
    expect(rows).to_have_count(6)
    page.once("dialog", lambda d: d.accept())
    converted.get_by_role("button", name=re.compile("^Delete ")).click()
    expect(rows).to_have_count(5)
    assert len(api.get(f"/v1/datasets/{ds_id}/files").json()["files"]) == 5

    studio.go("#/datasets")
    expect(page.get_by_role("link", name="studio chorales")).to_be_visible()
    studio.check("datasets", phone=True)

    # --- corpora and models: tokenize, then train watching the curve --------------------------
    studio.go("#/models")
    form = page.locator(
        "form", has=page.get_by_role("heading", name="New corpus (tokenize a dataset)")
    )
    form.get_by_label("Dataset", exact=True).select_option(label="studio chorales")
    form.get_by_label("Tokenizer preset", exact=True).select_option("remi-chords-tempos")
    form.get_by_role("button", name="Tokenize").click()
    train = page.locator("form", has=page.get_by_role("heading", name="Train a model"))
    expect(train).to_be_visible(timeout=LONG)
    studio.ready()
    studio.check("models", phone=True)
    train.get_by_label("Steps", exact=True).fill("20")
    train.get_by_label("Batch size", exact=True).fill("4")
    train.get_by_label("Sequence length", exact=True).fill("64")
    train.get_by_label("Evaluate every (steps)", exact=True).fill("10")
    train.get_by_label("Log every (steps)", exact=True).fill("5")
    train.get_by_role("button", name="Start training").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Model \w{8}$"), level=1)).to_be_visible()
    model_id = page.evaluate("location.hash.split('/')[2]")
    curve = page.locator("svg.loss")
    # The curve grows while the job runs: at least one point, later more (from the stream).
    page.wait_for_function(
        "() => Number(document.querySelector('svg.loss')?.dataset.points || 0) > 0", timeout=LONG
    )
    first = int(curve.get_attribute("data-points") or 0)
    page.wait_for_function(
        f"() => Number(document.querySelector('svg.loss')?.dataset.points || 0) > {first}",
        timeout=LONG,
    )
    expect(page.locator(".facts")).to_contain_text("ready", timeout=LONG)
    assert int(curve.get_attribute("data-points") or 0) >= 4 + 2  # 20/5 train + 2 val points
    expect(page.locator(".rate")).not_to_have_text("–")
    expect(page.get_by_role("table", name="Checkpoints")).to_be_visible()
    expect(curve).to_have_attribute("aria-label", re.compile("val loss"))
    studio.check("training")

    # --- samples: generate, listen, look, continue ------------------------------------------
    page.get_by_role("link", name="Sample from this model").click()
    studio.ready()
    form = page.locator("form", has=page.get_by_role("heading", name="Sample"))
    form.get_by_label("Primer file", exact=True).select_option(
        label=f"studio chorales / {chorales[0].name}"
    )
    form.get_by_label("Primer bars", exact=True).fill("2")
    form.get_by_label("Variations (n)", exact=True).fill("2")
    form.get_by_label("Max tokens", exact=True).fill("32")
    form.get_by_label("Temperature", exact=True).fill("0.9")
    form.get_by_label("Top-k", exact=True).fill("20")
    form.get_by_label("Seed", exact=True).fill("7")
    form.get_by_label("Max copied fraction", exact=True).fill("1")
    form.get_by_role("button", name="Generate").click()
    cards = page.locator("article.sample")
    expect(cards).to_have_count(2, timeout=LONG)
    page.wait_for_function(
        "() => [...document.querySelectorAll('article.sample audio')].every(a => a.duration > 0)",
        timeout=LONG,
    )
    page.wait_for_function(
        "() => [...document.querySelectorAll('article.sample canvas.roll')]"
        ".every(c => Number(c.dataset.notes) > 0)"
    )
    expect(
        cards.first.get_by_role("table", name="Metrics, this piece beside the corpus")
    ).to_be_visible()
    expect(cards.first.locator(".novelty")).to_contain_text("longest copied run")
    with page.expect_download() as dl:
        cards.first.get_by_role("button", name="Download MIDI").click()
    assert Path(dl.value.path()).read_bytes()[:4] == b"MThd"
    parent = cards.first.get_attribute("data-sample-id")
    assert parent
    # Continue the first variation: two new ones, each showing where it came from.
    cards.first.get_by_role("button", name="Continue this one").click()
    expect(cards).to_have_count(4, timeout=LONG)
    children = page.locator("article.sample", has=page.locator(".lineage", has_text=parent[:8]))
    expect(children).to_have_count(2)
    expect(children.first.locator(".lineage")).to_contain_text(f"Lineage: {parent[:8]} → ")
    child_id = children.first.get_attribute("data-sample-id")
    assert api.get(f"/v1/samples/{child_id}").json()["parent_sample_id"] == parent
    # The parent's name in the lineage takes the keyboard to the parent's card.
    children.first.get_by_role("button", name=f"Show ancestor {parent[:8]}").click()
    expect(page.locator(f"article[data-sample-id='{parent}'] button").first).to_be_focused()
    children.first.scroll_into_view_if_needed()
    studio.check("samples", phone=True)

    # --- jobs: a long job, cancelled from the list ------------------------------------------
    long_r = api.post(
        f"/v1/models/{model_id}/samples",
        json={"max_new_tokens": 60000, "stop_at_eos": False, "seed": 5},
    )
    assert long_r.status_code == 202, long_r.text
    long = long_r.json()
    studio.go("#/jobs")
    row = page.locator(f"tr[data-job-id='{long['id']}']")
    expect(row).to_be_visible()
    row.get_by_role("button", name="Cancel").click()
    expect(page.locator(f"tr[data-job-id='{long['id']}']")).to_have_attribute(
        "data-state", "cancelled", timeout=LONG
    )
    studio.check("jobs", phone=True)

    # --- sign out -----------------------------------------------------------------------------
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key", exact=True)).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('cadenza.apiKey')") is None
    assert not studio.console.errors, studio.console.errors


def test_regenerate_bars_chosen_on_the_piano_roll(
    studio: Studio, embedded_stack: Stack, chorales: list[Path], tmp_path: Path
) -> None:
    """A model that can infill (a `multitrack` corpus, trained a few steps: cheap, the music
    is not the point here); the bars are chosen by dragging across a sample's roll, then by
    keyboard in the From/To fields, and the regenerated variation names its parent."""
    page = studio.page
    with Client(embedded_stack.api_url, embedded_stack.api_key) as client:
        band = []
        for p in chorales[1:3]:
            path = tmp_path / p.name
            path.write_bytes(multitrack_chorale(p.read_bytes()))
            band.append(path)
        ds = client.create_dataset("studio band")
        files = client.upload(ds["id"], band)
        corpus = client.wait(
            client.create_corpus(ds["id"], preset="multitrack", seed=1)["id"], timeout=600
        )
        assert corpus["state"] == "succeeded", corpus
        train = {"max_steps": 4, "eval_interval": 2, "batch_size": 2, "seq_len": 64}
        trained = client.wait(
            client.create_model(corpus["corpus_id"], architecture="gpt", train=train)["id"],
            timeout=600,
        )
        assert trained["state"] == "succeeded", trained
        model_id = trained["model_id"]
        assert "infill" in client.get(f"/v1/models/{model_id}")["capabilities"]["modes"]
        # The piece to edit: a chorale (all its bars) as a sample, through one infilled bar.
        first = client.wait(
            client.sample(
                model_id,
                mode="infill",
                source_file_id=files[0]["id"],
                infill={"bars": [1, 1], "tracks": [0]},
                max_new_tokens=16,
                seed=1,
                n=1,
            )["id"],
            timeout=600,
        )
        assert first["state"] == "succeeded", first
        parent = first["sample_ids"][0]

        page.goto(f"{embedded_stack.api_url}/studio")
        page.get_by_label("API key", exact=True).fill(embedded_stack.api_key)
        page.keyboard.press("Enter")
        expect(page.locator("#who")).to_contain_text("Signed in as")
        studio.go(f"#/samples/{model_id}")
        expect(page.locator("main")).to_contain_text("drag across a piano roll")
        form = page.locator("form", has=page.get_by_role("heading", name="Sample"))
        expect(form.get_by_label("Constrained decoding", exact=True)).to_be_checked()
        form.get_by_label("Variations (n)", exact=True).fill("1")
        form.get_by_label("Max tokens", exact=True).fill("16")
        form.get_by_label("Seed", exact=True).fill("5")
        card = page.locator(f"article[data-sample-id='{parent}']")
        expect(card).to_contain_text("infill")
        expect(card).to_contain_text("invalid token")
        roll = card.locator("canvas.roll")
        expect(roll).to_have_attribute("data-bars", re.compile(r"^\d+$"))
        nbars = int(roll.get_attribute("data-bars") or 0)
        assert nbars >= 4
        expect(card.get_by_label("Track", exact=True).locator("option")).to_have_count(1 + 4)

        # Drag from the middle of bar 2 to the middle of bar 3 (the chorales keep 4/4 and
        # one tempo, so bars are equally wide on the roll).
        roll.scroll_into_view_if_needed()
        box = roll.bounding_box()
        assert box
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] * 1.5 / nbars, y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 2.5 / nbars, y, steps=4)
        page.mouse.up()
        expect(card.get_by_label("From bar", exact=True)).to_have_value("2")
        expect(card.get_by_label("To bar", exact=True)).to_have_value("3")
        expect(roll).to_have_attribute("data-selection", "2-3")
        expect(roll).to_have_attribute("aria-label", re.compile("bars 2–3 selected"))
        # The keyboard way: the fields move the selection on the roll.
        card.get_by_label("To bar", exact=True).fill("2")
        expect(roll).to_have_attribute("data-selection", "2-2")
        card.get_by_label("Track", exact=True).select_option("1")
        card.scroll_into_view_if_needed()
        studio.check("editing")
        card.screenshot(path=str(studio.shots / "editing-card.png"))

        card.get_by_role("button", name="Regenerate bars").click()
        child = page.locator(
            "article.sample", has=page.locator(".lineage", has_text=f"{parent[:8]} → ")
        )
        expect(child).to_have_count(1, timeout=LONG)
        child_id = child.get_attribute("data-sample-id")
        got = client.get(f"/v1/samples/{child_id}")
        assert got["parent_sample_id"] == parent
        assert got["params"]["mode"] == "infill"
        assert got["params"]["infill"] == {"bars": [2, 2], "tracks": [1]}
        assert got["params"]["seed"] == 5
        studio.check("edited", phone=True)

        # Accompany the regenerated variation: a bass line (program 33) and drums.
        child.get_by_label("Programs", exact=True).fill("33")
        child.get_by_label("Drums", exact=True).check()
        child.get_by_role("button", name="Add instruments").click()
        grandchild = page.locator(
            "article.sample", has=page.locator(".lineage", has_text=f"{child_id[:8]} → ")
        )
        expect(grandchild).to_have_count(1, timeout=LONG)
        added = client.get(f"/v1/samples/{grandchild.get_attribute('data-sample-id')}")
        assert added["params"]["mode"] == "accompany"
        assert added["params"]["accompany"] == {"programs": [33], "drums": True}
        expect(grandchild.locator(".lineage")).to_contain_text(f"{parent[:8]} → {child_id[:8]} → ")

        # A dataset's MIDI file is edited the same way, from the "Edit a file" card.
        before = page.locator("article.sample").count()
        editor = page.locator("section", has=page.get_by_role("heading", name="Edit a file"))
        editor.get_by_label("MIDI file", exact=True).select_option(
            label=f"studio band / {band[1].name}"
        )
        expect(editor.locator("canvas.roll")).to_have_attribute("data-bars", re.compile(r"^\d+$"))
        editor.get_by_label("From bar", exact=True).fill("3")
        editor.get_by_label("To bar", exact=True).fill("3")
        expect(editor.locator("canvas.roll")).to_have_attribute("data-selection", "3-3")
        editor.get_by_role("button", name="Regenerate bars").click()
        expect(page.locator("article.sample")).to_have_count(before + 1, timeout=LONG)
        newest = page.locator("article.sample").first.get_attribute("data-sample-id")
        edited = client.get(f"/v1/samples/{newest}")
        assert edited["params"]["mode"] == "infill"
        assert edited["params"]["source_file_id"] == files[1]["id"]
        assert edited["params"]["infill"]["bars"] == [3, 3]
        assert not studio.console.errors, studio.console.errors


def test_steer_with_attribute_controls_and_style_tags(
    studio: Studio, embedded_stack: Stack, chorales: list[Path]
) -> None:
    """A model of a corpus with controls and tags (REMI; trained a few steps: the music is not
    the point here): the sample form grows a field per control, from the model's capabilities,
    and what is set there is what the sample request carries."""
    page = studio.page
    with Client(embedded_stack.api_url, embedded_stack.api_key) as client:
        ds = client.post("/v1/datasets", {"name": "studio steer", "tags": ["baroque"]})
        client.upload(ds["id"], chorales[1:3])
        corpus = client.wait(
            client.create_corpus(
                ds["id"],
                tokenizer="REMI",
                controls=["key", "note_density", "pitch_range"],
                learn_tags=True,
                seed=1,
            )["id"],
            timeout=600,
        )
        assert corpus["state"] == "succeeded", corpus
        train = {"max_steps": 4, "eval_interval": 2, "batch_size": 2, "seq_len": 64}
        trained = client.wait(
            client.create_model(corpus["corpus_id"], architecture="gpt", train=train)["id"],
            timeout=600,
        )
        assert trained["state"] == "succeeded", trained
        model_id = trained["model_id"]
        caps = client.get(f"/v1/models/{model_id}")["capabilities"]
        assert set(caps["controls"]) == {"key", "note_density", "pitch_range"}

        page.goto(f"{embedded_stack.api_url}/studio")
        page.get_by_label("API key", exact=True).fill(embedded_stack.api_key)
        page.keyboard.press("Enter")
        expect(page.locator("#who")).to_contain_text("Signed in as")
        studio.go(f"#/samples/{model_id}")
        expect(page.locator("main")).to_contain_text("cannot rewrite bars")
        form = page.locator("form", has=page.get_by_role("heading", name="Sample"))
        steer = form.locator("fieldset.steer")
        steer.get_by_label("key", exact=True).select_option(caps["controls"]["key"]["values"][1])
        steer.get_by_label("note density", exact=True).fill("6")
        steer.get_by_label("Lowest", exact=True).fill("55")
        steer.get_by_label("Highest", exact=True).fill("79")
        steer.get_by_label("baroque", exact=True).check()
        form.get_by_label("Variations (n)", exact=True).fill("1")
        form.get_by_label("Max tokens", exact=True).fill("16")
        form.get_by_label("Constrained decoding", exact=True).uncheck()
        studio.check("steer", phone=True)
        form.get_by_role("button", name="Generate").click()
        cards = page.locator("article.sample")
        expect(cards).to_have_count(1, timeout=LONG)
        sample = client.get(f"/v1/samples/{cards.first.get_attribute('data-sample-id')}")
        assert sample["params"]["controls"] == {
            "key": caps["controls"]["key"]["values"][1],
            "note_density": 6,
            "pitch_range": [55, 79],
        }
        assert sample["params"]["tags"] == ["baroque"]
        assert sample["params"]["constrained"] is False
        expect(cards.first).to_contain_text("invalid token")
        assert not studio.console.errors, studio.console.errors


def melody_wav(seed: int, seconds: float = 6.0, rate: int = 16000) -> bytes:
    """A plucked melody (random notes of a scale, decaying partials) as 16-bit mono WAV."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(seed)
    note = int(0.25 * rate)
    t = np.arange(note) / rate
    scale = [0, 2, 4, 5, 7, 9, 11, 12]
    out = []
    for _ in range(int(seconds / 0.25)):
        f = 220.0 * 2 ** (scale[int(rng.integers(len(scale)))] / 12)
        tone = sum(np.sin(2 * np.pi * f * k * t) / k for k in (1, 2, 3))
        out.append(0.3 * tone * np.exp(-6 * t))
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(out).astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_audio_model_tokenize_sample_listen_continue(
    studio: Studio, embedded_stack: Stack, tmp_path: Path
) -> None:
    """A model of recordings, end to end in the page: the corpus form offers audio-vq and its
    options (a VQ-VAE of a few steps, a prior of two: the sound is not the point here), and the
    sample form of its model asks for a recording and seconds, not bars or tokens; each
    variation plays, shows its spectrogram, downloads as WAV and continues (co-composition)."""
    page = studio.page
    with Client(embedded_stack.api_url, embedded_stack.api_key) as client:
        ds = client.create_dataset("studio takes")
        paths = []
        for i in range(3):
            path = tmp_path / f"take{i + 1}.wav"
            path.write_bytes(melody_wav(i))
            paths.append(path)
        files = client.upload(ds["id"], paths)
        assert {f["kind"] for f in files} == {"audio"}

        page.goto(f"{embedded_stack.api_url}/studio")
        page.get_by_label("API key", exact=True).fill(embedded_stack.api_key)
        page.keyboard.press("Enter")
        expect(page.locator("#who")).to_contain_text("Signed in as")
        studio.go("#/models")
        form = page.locator(
            "form", has=page.get_by_role("heading", name="New corpus (tokenize a dataset)")
        )
        options = form.locator("fieldset.audio-vq")
        expect(options).to_be_hidden()
        form.get_by_label("Dataset", exact=True).select_option(label="studio takes")
        form.get_by_label("Tokenizer", exact=True).select_option("audio-vq")
        # audio-vq takes no preset: choosing it clears the preset and shows its options.
        expect(form.get_by_label("Tokenizer preset", exact=True)).to_have_value("")
        expect(options).to_be_visible()
        options.get_by_label("VQ-VAE steps", exact=True).fill("10")
        options.get_by_label("Channels", exact=True).fill("16")
        options.get_by_label("Coarse codebook", exact=True).fill("16")
        options.get_by_label("Fine codebook", exact=True).fill("16")
        studio.check("audio-corpus")
        form.get_by_role("button", name="Tokenize").click()
        expect(page.get_by_role("table", name="Corpora")).to_contain_text("audio-vq", timeout=LONG)
        corpus = next(
            c
            for c in client.get("/v1/corpora")
            if c["params"]["tokenizer_spec"]["name"] == "audio-vq"
        )
        assert corpus["vocab_size"] == 3 + 16 + 16
        assert corpus["params"]["tokenizer_spec"]["config"]["steps"] == 10
        train = {"max_steps": 2, "eval_interval": 2, "batch_size": 2, "seq_len": 40}
        trained = client.wait(
            client.create_model(corpus["id"], architecture="gpt", train=train)["id"], timeout=600
        )
        assert trained["state"] == "succeeded", trained
        model_id = trained["model_id"]
        assert client.get(f"/v1/models/{model_id}")["capabilities"]["output"] == "audio"

        studio.go(f"#/samples/{model_id}")
        form = page.locator("form", has=page.get_by_role("heading", name="Sample"))
        # The audio form: a recording and seconds; nothing MIDI-only.
        for midi_only in ("Primer bars", "Max tokens", "Constrained decoding", "Min-p"):
            expect(form.get_by_label(midi_only, exact=True)).to_have_count(0)
        form.get_by_label("Primer recording", exact=True).select_option(
            label="studio takes / take1.wav"
        )
        form.get_by_label("Primer seconds", exact=True).fill("2")
        form.get_by_label("Max seconds", exact=True).fill("1")
        form.get_by_label("Variations (n)", exact=True).fill("1")
        form.get_by_label("Temperature", exact=True).fill("0.9")
        form.get_by_label("Top-k", exact=True).fill("8")
        form.get_by_label("Top-p", exact=True).fill("0.95")
        form.get_by_label("Seed", exact=True).fill("3")
        form.get_by_role("button", name="Generate").click()
        cards = page.locator("article.sample")
        expect(cards).to_have_count(1, timeout=LONG)
        card = cards.first
        sample_id = card.get_attribute("data-sample-id")
        sample = client.get(f"/v1/samples/{sample_id}")
        assert sample["meta"]["kind"] == "audio"
        assert sample["params"]["primer_file_id"] == files[0]["id"]
        assert sample["params"]["primer_seconds"] == 2
        assert sample["params"]["max_seconds"] == 1
        assert (sample["params"]["top_k"], sample["params"]["top_p"]) == (8, 0.95)
        assert sample["params"]["seed"] == 3
        # Listen (a blob: URL of /audio), look (the spectrogram), no piano roll or MIDI.
        page.wait_for_function(
            "() => [...document.querySelectorAll('article.sample audio')]"
            ".every(a => a.src.startsWith('blob:') && a.duration > 2.5)",
            timeout=LONG,
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('article.sample img.spectrogram')]"
            ".every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)"
        )
        expect(card.locator("img.spectrogram")).to_have_attribute(
            "alt", re.compile("^Spectrogram of Variation 1")
        )
        expect(card.locator("canvas.roll")).to_have_count(0)
        expect(card.get_by_role("button", name="Download MIDI")).to_have_count(0)
        with page.expect_download() as dl:
            card.get_by_role("button", name="Download WAV").click()
        assert dl.value.suggested_filename == f"sample-{sample_id}.wav"
        wav = Path(dl.value.path()).read_bytes()
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
        # Co-composition: continue it; the new variation names its parent.
        card.get_by_role("button", name="Continue this one").click()
        expect(cards).to_have_count(2, timeout=LONG)
        child = page.locator(
            "article.sample", has=page.locator(".lineage", has_text=f"{sample_id[:8]} → ")
        )
        expect(child).to_have_count(1)
        got = client.get(f"/v1/samples/{child.get_attribute('data-sample-id')}")
        assert got["parent_sample_id"] == sample_id
        assert got["params"]["primer_sample_id"] == sample_id
        assert got["meta"]["kind"] == "audio"
        child.scroll_into_view_if_needed()
        studio.check("audio-samples", phone=True)
