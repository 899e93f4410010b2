// The studio's pages. Each page is a function that fills <main> and registers what to stop
// (streams, timers) on an AbortSignal that is aborted when the user leaves the page.
import * as api from "./api.js";
import {
  barAt,
  barSpan,
  barTimes,
  controlFields,
  trackControlFields,
  corpusRequest,
  editRequest,
  formatDuration,
  lineageChain,
  AUDIO_TOKENIZER,
  audioSampleRequest,
  isAudioModel,
  isAudioSample,
  lossSeries,
  metricRows,
  noveltyText,
  parseMidi,
  programName,
  rollGeometry,
  sampleRequest,
  TERMINAL_STATES,
  trainRequest,
} from "./logic.js";

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** h("tag", {class, text, on<event>, attribute…}, …children): an element. */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  // Tables scroll sideways on a phone; a scrolling region must be reachable by keyboard.
  if (tag === "table") el.tabIndex = 0;
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

let uid = 0;
/** A labelled form field: label + control (input, select or textarea), ids wired. */
function field(labelText, control, hint) {
  const id = control.id || `f${++uid}`;
  control.id = id;
  const parts = [h("label", { for: id, text: labelText }), control];
  if (hint) {
    const hintId = `${id}-hint`;
    control.setAttribute("aria-describedby", hintId);
    parts.push(h("small", { id: hintId, class: "hint", text: hint }));
  }
  return h("div", { class: "field" }, parts);
}

function select(name, options, value) {
  return h(
    "select",
    { name },
    options.map(([v, label]) => h("option", { value: v, selected: v === value, text: label })),
  );
}

function announce(text) {
  const el = document.getElementById("status");
  el.textContent = "";
  setTimeout(() => (el.textContent = text), 50);
}

function errorBox(err) {
  return h("p", { class: "error", role: "alert", text: err.message || String(err) });
}

function formValues(form) {
  const out = {};
  for (const [k, v] of new FormData(form).entries()) if (typeof v === "string") out[k] = v.trim();
  return out;
}

function short(id) {
  return id ? id.slice(0, 8) : "";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

function progressBar(fraction, label) {
  return h("progress", { max: 1, value: fraction || 0, "aria-label": label });
}

/** Run an async action from a button: disable it meanwhile, show an error next to it. */
async function busy(button, where, action) {
  button.disabled = true;
  where.querySelectorAll(":scope > .error").forEach((e) => e.remove());
  try {
    await action();
  } catch (err) {
    if (err.name !== "AbortError") where.append(errorBox(err));
  } finally {
    button.disabled = false;
  }
}

// ---------------------------------------------------------------------------------------------
// Piano rolls and audio

/**
 * Paint a parsed piece on a canvas piano roll, described for screen readers. With `bars`
 * (barTimes) the roll spans whole bars and draws their lines; `selection` [first, last] shades
 * those bars (the ones an infill would rewrite).
 */
function paintRoll(canvas, midi, bars = null, selection = null) {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const span = bars ? Math.max(midi.duration, bars[bars.length - 1]) : midi.duration;
  ctx.fillStyle = "#10151f";
  ctx.fillRect(0, 0, width, height);
  if (bars && selection) {
    const [x0, x1] = barSpan(selection[0], selection[1], width, span, bars);
    ctx.fillStyle = "rgba(240, 165, 0, 0.28)";
    ctx.fillRect(x0, 0, x1 - x0, height);
  }
  const { low, high, rects } = rollGeometry(midi.notes, width, height, span);
  for (const r of rects) {
    ctx.fillStyle = `hsl(${200 - r.velocity}, 80%, ${45 + r.velocity / 8}%)`;
    ctx.fillRect(r.x, r.y, r.w, r.h);
  }
  if (bars) {
    ctx.fillStyle = "rgba(255, 255, 255, 0.35)";
    for (const t of bars.slice(1, -1)) ctx.fillRect(Math.round((t / span) * width), 0, 1, height);
  }
  if (bars && selection) {
    const [x0, x1] = barSpan(selection[0], selection[1], width, span, bars);
    ctx.strokeStyle = "#f0a500";
    ctx.lineWidth = 2;
    ctx.strokeRect(x0 + 1, 1, Math.max(1, x1 - x0 - 2), height - 2);
  }
  const barText = bars ? `, ${bars.length - 1} bars` : "";
  const selText = bars && selection ? `, bars ${selection[0]}–${selection[1]} selected` : "";
  canvas.setAttribute(
    "aria-label",
    `Piano roll: ${midi.notes.length} notes over ${formatDuration(midi.duration)}${barText}, MIDI pitches ${low}–${high}${selText}`,
  );
  canvas.dataset.notes = String(midi.notes.length);
  if (bars) canvas.dataset.bars = String(bars.length - 1);
  return midi;
}

/** A canvas piano roll of MIDI bytes. */
function drawRoll(canvas, midiBytes) {
  return paintRoll(canvas, parseMidi(midiBytes));
}

function rollCanvas(width, height) {
  return h("canvas", { width, height, role: "img", class: "roll", "aria-label": "Piano roll (loading)" });
}

function loadRoll(canvas, path, signal) {
  api
    .bytes(path, signal)
    .then((b) => drawRoll(canvas, b))
    .catch((err) => {
      if (err.name === "AbortError") return;
      canvas.replaceWith(h("span", { class: "error", text: `no piano roll: ${err.message}` }));
    });
}

function audioPlayer(path, label, signal) {
  const audio = h("audio", { controls: true, preload: "metadata", "aria-label": label });
  const wrap = h("div", { class: "player" }, audio);
  api
    .blobUrl(path, signal)
    .then((url) => {
      audio.src = url;
      signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
    })
    .catch((err) => {
      if (err.name !== "AbortError") wrap.append(errorBox(err));
    });
  return wrap;
}

/** Follow a job live into a small panel (progress bar + message); resolves to its final row. */
/** Submit a sample request for `model`, follow its job in `panel`, then show its variations
 * (the MIDI and the audio sample forms both end this way). */
function sampleJob(model, panel, signal, showSamples) {
  return async (body) => {
    const job = await api.post(`/v1/models/${model.id}/samples`, body);
    const final = await watchJob(job, panel, signal);
    if (final.state === "succeeded") {
      announce(`${final.sample_ids.length} variation(s) ready`);
      await showSamples(final.sample_ids[0]);
    }
  };
}

async function watchJob(job, panel, signal, onEvent) {
  const bar = progressBar(job.progress, `Progress of ${job.type} job ${short(job.id)}`);
  const msg = h("span", { class: "msg", text: job.message || job.state });
  panel.replaceChildren(h("div", { class: "job-live" }, h("span", { text: `${job.type} job ${short(job.id)}: ` }), bar, msg));
  try {
    await api.followJob(
      job.id,
      (ev) => {
        if (ev.event === "progress") {
          bar.value = ev.data.progress;
          msg.textContent = ev.data.message || "";
        } else if (ev.event === "state") {
          msg.textContent = ev.data.message || ev.data.state;
        }
        if (onEvent) onEvent(ev);
      },
      signal,
    );
  } catch (err) {
    if (err.name !== "AbortError") panel.append(errorBox(err));
  }
  if (signal.aborted) return job;
  const final = await api.get(`/v1/jobs/${job.id}`);
  bar.value = final.progress;
  msg.textContent = final.state === "succeeded" ? "done" : `${final.state}${final.error ? ": " + final.error : ""}`;
  if (final.state === "failed") panel.append(errorBox(new Error(final.error || "the job failed")));
  return final;
}

// ---------------------------------------------------------------------------------------------
// Pages

async function datasetsPage(main, signal) {
  const list = h("div");
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "new-ds" },
    h("h2", { id: "new-ds", text: "New dataset" }),
    field("Name", h("input", { name: "name", required: true, maxlength: "200", autocomplete: "off" })),
    field("Description", h("input", { name: "description", maxlength: "5000", autocomplete: "off" })),
    h("button", { type: "submit", text: "Create dataset" }),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form.querySelector("button"), form, async () => {
      const ds = await api.post("/v1/datasets", formValues(form));
      announce(`Dataset ${ds.name} created`);
      location.hash = `#/datasets/${ds.id}`;
    });
  });
  main.replaceChildren(h("h1", { text: "Datasets" }), form, h("h2", { text: "Your datasets" }), list);
  const rows = await api.get("/v1/datasets", { signal });
  list.replaceChildren(
    rows.length
      ? h(
          "table",
          {},
          h("caption", { class: "visually-hidden", text: "Your datasets" }),
          h("thead", {}, h("tr", {}, ["Name", "Files", "Created"].map((t) => h("th", { scope: "col", text: t })))),
          h(
            "tbody",
            {},
            rows.map((ds) =>
              h(
                "tr",
                {},
                h("td", {}, h("a", { href: `#/datasets/${ds.id}`, text: ds.name })),
                h("td", { text: ds.file_count }),
                h("td", { text: when(ds.created_at) }),
              ),
            ),
          ),
        )
      : h("p", { text: "No datasets yet: create one above." }),
  );
}

function fileRow(f, byId, signal) {
  const preview = h("td", { class: "preview" });
  if (f.kind === "midi") {
    const c = rollCanvas(240, 60);
    preview.append(c);
    loadRoll(c, `/v1/files/${f.id}/content`, signal);
  } else {
    preview.append(audioPlayer(`/v1/files/${f.id}/content`, `Play ${f.name}`, signal));
  }
  const source = f.source_file_id ? byId.get(f.source_file_id) : null;
  const del = h("button", { type: "button", class: "danger", text: "Delete", "aria-label": `Delete ${f.name}` });
  const row = h(
    "tr",
    { "data-file-id": f.id },
    h("td", {}, f.name, source ? h("div", { class: "hint" }, "from ", h("a", { href: `#/datasets/${f.dataset_id}`, text: source.name })) : null),
    h("td", { text: `${f.kind} (${f.format})` }),
    h("td", { text: formatDuration(f.meta.duration_s) }),
    h("td", { text: f.kind === "midi" ? `${f.meta.tracks} tracks, ${f.meta.notes} notes` : `${f.meta.channels || "?"} ch, ${f.meta.sample_rate || "?"} Hz` }),
    preview,
    h("td", {}, del),
  );
  del.addEventListener("click", () =>
    busy(del, row.cells[5], async () => {
      if (!confirm(`Delete ${f.name}?`)) return;
      await api.del(`/v1/files/${f.id}`);
      announce(`${f.name} deleted`);
      row.remove();
    }),
  );
  return row;
}

async function datasetPage(main, signal, id) {
  const ds = await api.get(`/v1/datasets/${id}`, { signal });
  const filesBox = h("div");
  const uploads = h("ul", { class: "uploads", "aria-label": "Uploads" });
  const input = h("input", { type: "file", multiple: true, id: "upload-input", accept: ".mid,.midi,.kar,.zip,audio/*" });
  const drop = h(
    "div",
    { class: "drop", "data-testid": "dropzone" },
    h("p", {}, "Drop MIDI, audio or zip files here, or "),
    input,
    h("label", { for: "upload-input", class: "button", text: "Choose files to upload" }),
  );
  const refresh = async () => {
    const { files } = await api.get(`/v1/datasets/${id}/files`, { signal });
    const byId = new Map(files.map((f) => [f.id, f]));
    filesBox.replaceChildren(
      files.length
        ? h(
            "table",
            { class: "files" },
            h("caption", { class: "visually-hidden", text: `Files of ${ds.name}` }),
            h("thead", {}, h("tr", {}, ["Name", "Kind", "Duration", "Tracks", "Preview", "Actions"].map((t) => h("th", { scope: "col", text: t })))),
            h("tbody", {}, files.slice(0, 200).map((f) => fileRow(f, byId, signal))),
          )
        : h("p", { text: "No files yet: upload some above." }),
    );
  };
  const upload = async (fileList) => {
    for (const file of fileList) {
      const bar = progressBar(0, `Upload of ${file.name}`);
      const status = h("span", { class: "msg", text: "uploading" });
      const li = h("li", {}, h("span", { class: "name", text: file.name }), bar, status);
      uploads.append(li);
      try {
        const stored = await api.uploadFile(id, file, (p) => (bar.value = p));
        bar.value = 1;
        status.textContent = `stored (${stored.length} file${stored.length === 1 ? "" : "s"})`;
        li.classList.add("ok");
      } catch (err) {
        status.textContent = "";
        li.classList.add("rejected");
        li.append(h("span", { class: "error", role: "alert", text: err.message }));
      }
    }
    await refresh();
  };
  input.addEventListener("change", () => {
    upload([...input.files]);
    input.value = "";
  });
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    upload([...e.dataTransfer.files]);
  });
  const delDs = h("button", { type: "button", class: "danger", text: "Delete dataset" });
  const head = h("div", { class: "row" }, ds.description ? h("p", { text: ds.description }) : null, delDs);
  delDs.addEventListener("click", () =>
    busy(delDs, head, async () => {
      if (!confirm(`Delete dataset ${ds.name} and its files?`)) return;
      await api.del(`/v1/datasets/${id}`);
      announce(`Dataset ${ds.name} deleted`);
      location.hash = "#/datasets";
    }),
  );
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/datasets", text: "← Datasets" })),
    h("h1", { text: ds.name }),
    head,
    h("section", { class: "card", "aria-labelledby": "up-h" }, h("h2", { id: "up-h", text: "Upload" }), drop, uploads),
    h("h2", { text: "Files" }),
    filesBox,
  );
  await refresh();
}

async function audioPage(main, signal) {
  const datasets = await api.get("/v1/datasets", { signal });
  const panel = h("div", { class: "job-panel" });
  const results = h("div");
  const opSelect = select("operation", [["transcribe", "Transcribe to MIDI"], ["convert", "Convert to WAV"], ["crop", "Crop into pieces"]], "transcribe");
  const opts = {
    convert: h(
      "fieldset",
      {},
      h("legend", { text: "Convert options" }),
      field("Sample rate (Hz)", h("input", { name: "convert.sample_rate", type: "number", min: "4000", max: "192000", value: "16000" })),
      h("div", { class: "field check" }, h("input", { type: "checkbox", name: "convert.mono", id: "conv-mono", checked: true }), h("label", { for: "conv-mono", text: "Mix to mono" })),
    ),
    crop: h(
      "fieldset",
      {},
      h("legend", { text: "Crop options" }),
      field("Piece length (s)", h("input", { name: "crop.interval_s", type: "number", min: "1", step: "any", value: "30" })),
      field("Shortest last piece (s)", h("input", { name: "crop.min_tail_s", type: "number", min: "0", step: "any", value: "0" })),
      field("Cut positions (s)", h("input", { name: "crop.positions_text", placeholder: "e.g. 179,500,748" }), "Comma-separated; overrides the piece length"),
    ),
    transcribe: h(
      "fieldset",
      {},
      h("legend", { text: "Transcribe options" }),
      field("Engine", select("transcribe.engine", [["basic-pitch", "basic-pitch (any instrument)"], ["transkun", "transkun (solo piano: velocities, pedal)"]], "basic-pitch"), "transkun is slow on CPU; it takes no thresholds"),
      field("Onset threshold", h("input", { name: "transcribe.onset_threshold", type: "number", min: "0", max: "1", step: "0.05", value: "0.5" })),
      field("Frame threshold", h("input", { name: "transcribe.frame_threshold", type: "number", min: "0", max: "1", step: "0.05", value: "0.3" })),
      field("Shortest note (ms)", h("input", { name: "transcribe.minimum_note_length_ms", type: "number", min: "0", step: "any", value: "127.7" })),
    ),
  };
  const showOpts = () => Object.entries(opts).forEach(([k, el]) => (el.hidden = k !== opSelect.value));
  opSelect.addEventListener("change", showOpts);
  showOpts();
  const dsSelect = select("dataset_id", datasets.map((d) => [d.id, d.name]));
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "audio-h" },
    h("h2", { id: "audio-h", text: "Run an audio job" }),
    field("Dataset", dsSelect, "Every audio file of the dataset is processed"),
    field("Operation", opSelect),
    Object.values(opts),
    h("button", { type: "submit", text: "Start audio job" }),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form.querySelector("button[type=submit]"), form, async () => {
      const op = opSelect.value;
      const body = { operation: op, [op]: {} };
      for (const el of opts[op].querySelectorAll("input, select")) {
        const key = el.name.split(".")[1];
        if (el.type === "checkbox") body[op][key] = el.checked;
        else if (el.value !== "") body[op][key] = el.type === "number" ? Number(el.value) : el.value;
      }
      const job = await api.post(`/v1/datasets/${dsSelect.value}/audio-jobs`, body);
      const final = await watchJob(job, panel, signal);
      if (final.state === "succeeded") {
        const made = await Promise.all(final.file_ids.map((fid) => api.get(`/v1/files/${fid}`)));
        const sources = new Map();
        for (const f of made) {
          if (f.source_file_id && !sources.has(f.source_file_id)) sources.set(f.source_file_id, await api.get(`/v1/files/${f.source_file_id}`));
        }
        results.replaceChildren(
          h("h2", { text: "New files" }),
          h(
            "ul",
            {},
            made.map((f) =>
              h(
                "li",
                {},
                h("a", { href: `#/datasets/${f.dataset_id}`, text: f.name }),
                ` (${f.kind}, ${formatDuration(f.meta.duration_s)})`,
                sources.get(f.source_file_id) ? ` from ${sources.get(f.source_file_id).name}` : "",
              ),
            ),
          ),
        );
        announce(`${made.length} new file(s)`);
      }
    });
  });
  main.replaceChildren(h("h1", { text: "Audio tools" }), datasets.length ? form : h("p", { text: "Create a dataset and upload audio first." }), panel, results);
}

const PRESETS = ["remi-chords-tempos", "remi-colab", "midichar-sentencepiece", "chord-duration-16th", "quarter-vq-large", "multitrack"];
const TOKENIZERS = ["REMI", "TSD", "MIDILike", "Structured", "PerTok", "MMM", "BEAT", "CPWord", "Octuple", "MuMIDI", "midichar", "chord-duration", "quarter-vq", AUDIO_TOKENIZER];
const ARCHITECTURES = ["music-transformer", "gpt", "gru", "lstm"];

async function modelsPage(main, signal) {
  const [datasets, corpora, models] = await Promise.all([
    api.get("/v1/datasets", { signal }),
    api.get("/v1/corpora", { signal }),
    api.get("/v1/models", { signal }),
  ]);
  const dsName = new Map(datasets.map((d) => [d.id, d.name]));
  const corpusPanel = h("div", { class: "job-panel" });
  const vq = (name, attrs) => h("input", { name: `vq.${name}`, type: "number", ...attrs });
  const audioOptions = h(
    "fieldset",
    { class: "audio-vq" },
    h("legend", { text: "audio-vq options (recordings)" }),
    h(
      "div",
      { class: "grid" },
      field("VQ-VAE steps", vq("steps", { min: "0", step: "1", placeholder: "600" })),
      field("Sample rate (Hz)", vq("sample_rate", { min: "8000", max: "48000", step: "1", placeholder: "16000" })),
      field("Coarse codebook", vq("coarse_codebook", { min: "2", max: "4096", step: "1", placeholder: "256" })),
      field("Fine codebook", vq("fine_codebook", { min: "2", max: "4096", step: "1", placeholder: "256" })),
      field("Channels", vq("channels", { min: "8", max: "1024", step: "1", placeholder: "128" })),
      field("Max seconds per file", vq("max_file_seconds", { min: "1", max: "7200", step: "any", placeholder: "900" })),
    ),
  );
  const corpusForm = h(
    "form",
    { class: "card", "aria-labelledby": "corpus-h" },
    h("h2", { id: "corpus-h", text: "New corpus (tokenize a dataset)" }),
    field("Dataset", select("dataset_id", datasets.map((d) => [d.id, d.name]))),
    field("Tokenizer preset", select("preset", [["", "(none: use the tokenizer below)"], ...PRESETS.map((p) => [p, p])], "remi-chords-tempos")),
    field("Tokenizer", select("tokenizer", TOKENIZERS.map((t) => [t, t]), "REMI"), "Used when no preset is chosen; audio-vq learns from the dataset's recordings"),
    field("Seed", h("input", { name: "seed", type: "number", min: "0", value: "0" })),
    audioOptions,
    h("button", { type: "submit", text: "Tokenize" }),
    corpusPanel,
  );
  // audio-vq takes no preset; its options show only while it is the tokenizer.
  const presetSelect = corpusForm.querySelector("select[name=preset]");
  const tokenizerSelect = corpusForm.querySelector("select[name=tokenizer]");
  const syncAudio = () => {
    const audio = !presetSelect.value && tokenizerSelect.value === AUDIO_TOKENIZER;
    audioOptions.hidden = !audio;
    audioOptions.disabled = !audio;
  };
  tokenizerSelect.addEventListener("change", () => {
    if (tokenizerSelect.value === AUDIO_TOKENIZER) presetSelect.value = "";
    syncAudio();
  });
  presetSelect.addEventListener("change", syncAudio);
  syncAudio();
  corpusForm.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(corpusForm.querySelector("button"), corpusForm, async () => {
      const job = await api.post("/v1/corpora", corpusRequest(formValues(corpusForm)));
      const final = await watchJob(job, corpusPanel, signal);
      if (final.state === "succeeded") {
        announce("Corpus ready");
        route();
      }
    });
  });
  const trainForm = h(
    "form",
    { class: "card", "aria-labelledby": "train-h" },
    h("h2", { id: "train-h", text: "Train a model" }),
    field("Corpus", select("corpus_id", corpora.map((c) => [c.id, `${short(c.id)} · ${dsName.get(c.dataset_id) || "deleted dataset"} · ${c.params.tokenizer_spec?.name || ""} · vocab ${c.vocab_size}`]))),
    field("Architecture", select("architecture", ARCHITECTURES.map((a) => [a, a]), "music-transformer")),
    field("Preset", h("input", { name: "preset", value: "tiny", list: "model-presets", autocomplete: "off" })),
    h("datalist", { id: "model-presets" }, ["tiny", "small", "base", "wide"].map((p) => h("option", { value: p }))),
    h(
      "div",
      { class: "grid" },
      field("Steps", h("input", { name: "max_steps", type: "number", min: "1", value: "200" })),
      field("Batch size", h("input", { name: "batch_size", type: "number", min: "1", value: "8" })),
      field("Sequence length", h("input", { name: "seq_len", type: "number", min: "8", value: "128" })),
      field("Learning rate", h("input", { name: "lr", type: "number", step: "any", min: "0", placeholder: "preset's" })),
      field("Evaluate every (steps)", h("input", { name: "eval_interval", type: "number", min: "1", value: "50" })),
      field("Log every (steps)", h("input", { name: "log_interval", type: "number", min: "1", value: "10" })),
    ),
    h("button", { type: "submit", text: "Start training" }),
  );
  trainForm.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(trainForm.querySelector("button"), trainForm, async () => {
      const job = await api.post("/v1/models", trainRequest(formValues(trainForm)));
      location.hash = `#/models/${job.model_id}`;
    });
  });
  const table = (caption, cols, rows) =>
    h("table", {}, h("caption", { text: caption }), h("thead", {}, h("tr", {}, cols.map((t) => h("th", { scope: "col", text: t })))), h("tbody", {}, rows));
  main.replaceChildren(
    h("h1", { text: "Corpora and models" }),
    h("div", { class: "two" }, corpusForm, corpora.length ? trainForm : h("p", { class: "card", text: "Tokenize a dataset to train a model." })),
    table(
      "Corpora",
      ["Corpus", "Dataset", "Tokenizer", "Vocabulary", "Files"],
      corpora.map((c) =>
        h("tr", {}, h("td", { text: short(c.id) }), h("td", { text: dsName.get(c.dataset_id) || "(deleted)" }), h("td", { text: c.params.tokenizer_spec?.name || "" }), h("td", { text: c.vocab_size }), h("td", { text: c.stats.n_files ?? "" })),
      ),
    ),
    table(
      "Models",
      ["Model", "Architecture", "State", "Checkpoints", "Created"],
      models.map((m) =>
        h(
          "tr",
          {},
          h("td", {}, h("a", { href: `#/models/${m.id}`, text: `${short(m.id)} (${m.preset || "custom"})` })),
          h("td", { text: m.architecture }),
          h("td", { text: m.state }),
          h("td", { text: m.checkpoints.length }),
          h("td", { text: when(m.created_at) }),
        ),
      ),
    ),
  );
}

/** An SVG loss curve (train and val lines), redrawn from the metric rows so far. */
function drawLoss(svg, metrics) {
  const W = 600;
  const H = 240;
  const { series, bounds } = lossSeries(metrics, W, H, 28);
  svg.replaceChildren(s("title", {}, "Loss curve"));
  svg.append(s("rect", { x: 0, y: 0, width: W, height: H, class: "plot-bg" }));
  let points = 0;
  for (const [split, pts] of Object.entries(series)) {
    points += pts.length;
    svg.append(s("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: `line ${split}` }));
    for (const [x, y] of pts.length < 60 ? pts : []) svg.append(s("circle", { cx: x, cy: y, r: 2.5, class: `dot ${split}` }));
  }
  if (bounds) {
    svg.append(s("text", { x: 30, y: 18, class: "axis" }, `loss ${bounds.maxLoss.toFixed(2)}`));
    svg.append(s("text", { x: 30, y: H - 6, class: "axis" }, `${bounds.minLoss.toFixed(2)} · steps ${bounds.minStep}–${bounds.maxStep}`));
  }
  svg.dataset.points = String(points);
  const last = (split) => metrics.filter((m) => m.split === split).at(-1);
  const t = last("train");
  const v = last("val");
  svg.setAttribute(
    "aria-label",
    bounds ? `Loss curve: ${points} points${t ? `, train loss ${t.loss.toFixed(3)} at step ${t.step}` : ""}${v ? `, val loss ${v.loss.toFixed(3)} at step ${v.step}` : ""}` : "Loss curve: no points yet",
  );
}

async function modelPage(main, signal, id) {
  const model = await api.get(`/v1/models/${id}`, { signal });
  const job = await api.get(`/v1/jobs/${model.job_id}`, { signal });
  const metrics = model.metrics.map((m) => ({ step: m.step, split: m.split, loss: m.loss }));
  const stateEl = h("span", { text: job.state });
  const bar = progressBar(job.progress, "Training progress");
  const msg = h("span", { class: "msg", text: job.message });
  const rate = h("span", { text: "–" });
  const svg = s("svg", { viewBox: "0 0 600 240", role: "img", class: "loss" });
  const ckpts = h("div");
  const cancel = h("button", { type: "button", class: "danger", text: "Cancel training" });
  const controls = h("div", { class: "row" }, cancel, h("a", { href: `#/samples/${id}`, class: "button", text: "Sample from this model" }));
  cancel.hidden = TERMINAL_STATES.includes(job.state);
  cancel.addEventListener("click", () =>
    busy(cancel, controls, async () => {
      const j = await api.post(`/v1/jobs/${job.id}/cancel`);
      stateEl.textContent = j.state;
      announce("Cancel requested");
    }),
  );
  const showCkpts = (m) =>
    ckpts.replaceChildren(
      m.checkpoints.length
        ? h(
            "table",
            {},
            h("caption", { text: "Checkpoints" }),
            h("thead", {}, h("tr", {}, ["Step", "Val loss", "Best", "Size"].map((t) => h("th", { scope: "col", text: t })))),
            h("tbody", {}, m.checkpoints.map((c) => h("tr", {}, h("td", { text: c.step }), h("td", { text: c.val_loss?.toFixed(4) ?? "" }), h("td", { text: c.is_best ? "best" : "" }), h("td", { text: `${(c.size / 1e6).toFixed(1)} MB` })))),
          )
        : h("p", { text: "No checkpoint yet." }),
    );
  drawLoss(svg, metrics);
  showCkpts(model);
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/models", text: "← Corpora and models" })),
    h("h1", { text: `Model ${short(model.id)}` }),
    h(
      "dl",
      { class: "facts" },
      h("dt", { text: "Architecture" }), h("dd", { text: `${model.architecture} (${model.preset || "custom"})` }),
      h("dt", { text: "State" }), h("dd", {}, stateEl),
      h("dt", { text: "Progress" }), h("dd", {}, bar, " ", msg),
      h("dt", { text: "Tokens/s" }), h("dd", { class: "rate" }, rate),
    ),
    controls,
    h("figure", { class: "card" }, svg, h("figcaption", {}, h("span", { class: "key train", text: "train" }), " ", h("span", { class: "key val", text: "validation" }))),
    ckpts,
  );
  if (TERMINAL_STATES.includes(job.state)) return;
  let refreshing = false;
  const refreshModel = async () => {
    if (refreshing) return;
    refreshing = true;
    try {
      showCkpts(await api.get(`/v1/models/${id}`, { signal }));
    } finally {
      refreshing = false;
    }
  };
  // The stream replays every event from the start, so the curve is rebuilt from it.
  metrics.length = 0;
  await api.followJob(
    job.id,
    (ev) => {
      if (ev.event === "metrics") {
        metrics.push({ step: ev.data.step, split: ev.data.split, loss: ev.data.loss });
        drawLoss(svg, metrics);
        if (ev.data.tokens_per_s) rate.textContent = Math.round(ev.data.tokens_per_s).toLocaleString();
        if (ev.data.split === "val") refreshModel();
      } else if (ev.event === "progress") {
        bar.value = ev.data.progress;
        msg.textContent = ev.data.message || "";
      } else if (ev.event === "state") {
        stateEl.textContent = ev.data.state;
      } else if (ev.event === "end") {
        stateEl.textContent = ev.data.state;
        cancel.hidden = true;
      }
    },
    signal,
  );
  if (!signal.aborted) {
    const final = await api.get(`/v1/models/${id}`, { signal });
    stateEl.textContent = final.state;
    cancel.hidden = true;
    showCkpts(final);
    announce(`Training ${final.state}`);
  }
}

function metricsTable(sample) {
  const rows = metricRows(sample.meta);
  if (!rows.length) return null;
  const fmt = (x) => (typeof x === "number" ? x.toFixed(3) : "");
  return h(
    "table",
    { class: "metrics" },
    h("caption", { text: "Metrics, this piece beside the corpus" }),
    h("thead", {}, h("tr", {}, ["Metric", "This piece", "Corpus mean ± sd"].map((t) => h("th", { scope: "col", text: t })))),
    h("tbody", {}, rows.map((r) => h("tr", {}, h("th", { scope: "row", text: r.name.replaceAll("_", " ") }), h("td", { text: fmt(r.sample) }), h("td", { text: `${fmt(r.mean)} ± ${fmt(r.std)}` })))),
  );
}

/** An ancestor in a lineage: scrolls to its card when it is on the page (no hash change). */
function ancestorLink(x) {
  const b = h("button", { type: "button", class: "link", text: short(x.id), "aria-label": `Show ancestor ${short(x.id)}` });
  b.addEventListener("click", () => {
    const card = document.getElementById(`sample-${x.id}`);
    if (card) {
      card.scrollIntoView({ block: "nearest" });
      card.querySelector("button")?.focus();
    } else {
      announce(`Sample ${short(x.id)} is not among the newest shown`);
    }
  });
  return b;
}

/**
 * A sample's editing controls (what its model can do, `capabilities.modes`): choose bars on
 * the roll (drag across it, or the From/To bar fields) and an optional track, then regenerate
 * them (mode infill); or add instruments (mode accompany). `onEdit(mode, edit)` sends it.
 */
function editControls(sample, roll, modes, onEdit) {
  const canInfill = modes.includes("infill");
  const canAccompany = modes.includes("accompany");
  if (!canInfill && !canAccompany) return null;
  const box = h("div", { class: "edit" });
  let midi = null;
  let bars = null;
  let sel = null;
  const repaint = () => midi && paintRoll(roll, midi, bars, canInfill ? sel : null);
  if (canInfill) {
    const from = h("input", { name: "from_bar", type: "number", min: "1", step: "1", value: "1", inputmode: "numeric" });
    const to = h("input", { name: "to_bar", type: "number", min: "1", step: "1", value: "1", inputmode: "numeric" });
    const track = select("track", [["", "All tracks"]], "");
    const regen = h("button", { type: "button", text: "Regenerate bars" });
    const fromInputs = () => {
      const n = bars ? bars.length - 1 : 1;
      const clamp = (v) => Math.min(Math.max(Number.parseInt(v, 10) || 1, 1), n);
      const a = clamp(from.value);
      const b = clamp(to.value);
      sel = [Math.min(a, b), Math.max(a, b)];
      roll.dataset.selection = `${sel[0]}-${sel[1]}`;
      repaint();
    };
    const setSel = (a, b) => {
      from.value = String(Math.min(a, b));
      to.value = String(Math.max(a, b));
      fromInputs();
    };
    from.addEventListener("input", fromInputs);
    to.addEventListener("input", fromInputs);
    // Drag across the roll to choose bars (a click chooses one bar).
    let anchor = null;
    const barOf = (e) => {
      const r = roll.getBoundingClientRect();
      const x = ((e.clientX - r.left) * roll.width) / r.width;
      const span = Math.max(midi.duration, bars[bars.length - 1]);
      return barAt(x, roll.width, span, bars);
    };
    roll.addEventListener("pointerdown", (e) => {
      if (!bars) return;
      anchor = barOf(e);
      roll.setPointerCapture?.(e.pointerId);
      setSel(anchor, anchor);
    });
    roll.addEventListener("pointermove", (e) => {
      if (anchor !== null && bars) setSel(anchor, barOf(e));
    });
    const release = () => {
      if (anchor !== null) announce(`Bars ${from.value} to ${to.value} selected`);
      anchor = null;
    };
    roll.addEventListener("pointerup", release);
    roll.addEventListener("pointercancel", release);
    regen.addEventListener("click", () =>
      busy(regen, box, () => onEdit(sample, "infill", { from: from.value, to: to.value, tracks: track.value })),
    );
    box.append(
      h(
        "fieldset",
        { class: "inline infill" },
        h("legend", { text: "Regenerate bars" }),
        h("span", { class: "hint", text: "Drag across the roll, or:" }),
        field("From bar", from),
        field("To bar", to),
        field("Track", track),
        regen,
      ),
    );
    box.onMidi = (m) => {
      midi = m;
      bars = barTimes(m);
      const n = bars.length - 1;
      from.max = to.max = String(n);
      track.replaceChildren(
        h("option", { value: "", text: "All tracks" }),
        ...m.parts.map((p, i) => h("option", { value: String(i), text: `${i}: ${programName(p.program, p.drums)}` })),
      );
      setSel(1, Math.min(2, n));
    };
  }
  if (canAccompany) {
    const programs = h("input", { name: "programs", value: "33", autocomplete: "off", inputmode: "numeric" });
    const drums = h("input", { type: "checkbox", name: "drums" });
    drums.id = `f${++uid}`;
    const add = h("button", { type: "button", text: "Add instruments" });
    add.addEventListener("click", () =>
      busy(add, box, () => onEdit(sample, "accompany", { programs: programs.value, drums: drums.checked })),
    );
    box.append(
      h(
        "fieldset",
        { class: "inline accompany" },
        h("legend", { text: "Accompany" }),
        field("Programs", programs, "General MIDI numbers, comma-separated: 0 piano, 33 bass, 40 violin, 73 flute"),
        h("div", { class: "field check" }, drums, h("label", { for: drums.id, text: "Drums" })),
        add,
      ),
    );
  }
  return box;
}

function sampleCard(sample, signal, onContinue, modes = ["continue"], onEdit = null) {
  const title = `Variation ${sample.index + 1} · ${short(sample.id)}`;
  const roll = rollCanvas(560, 120);
  const lineage = h("p", { class: "lineage" });
  // The buttons' names are short; the card (an article named by its title) gives the context.
  const dl = h("button", { type: "button", text: "Download MIDI" });
  const cont = h("button", { type: "button", text: "Continue this one" });
  const edit = onEdit ? editControls(sample, roll, modes, onEdit) : null;
  const invalid = sample.meta && typeof sample.meta.invalid_tokens === "number" ? sample.meta.invalid_tokens : null;
  const mode = sample.params && sample.params.mode && sample.params.mode !== "continue" ? ` · ${sample.params.mode}` : "";
  const card = h(
    "article",
    { class: "card sample", "data-sample-id": sample.id, "aria-label": title },
    h("h3", { text: title }),
    h("p", { class: "hint facts-line", text: `${sample.num_notes} notes · ${formatDuration(sample.duration_s)} · ${sample.num_tokens} tokens${mode}${invalid !== null ? ` · ${invalid} invalid token${invalid === 1 ? "" : "s"}` : ""}${sample.partial ? " · partial" : ""}` }),
    noveltyText(sample.meta) ? h("p", { class: "hint novelty", text: `Copy check: ${noveltyText(sample.meta)}` }) : null,
    lineage,
    audioPlayer(`/v1/samples/${sample.id}/audio`, `Play ${title}`, signal),
    roll,
    edit,
    metricsTable(sample),
    h("div", { class: "row" }, dl, cont),
  );
  if (edit && edit.onMidi) {
    api
      .bytes(`/v1/samples/${sample.id}/midi`, signal)
      .then((b) => edit.onMidi(parseMidi(b)))
      .catch((err) => {
        if (err.name === "AbortError") return;
        roll.replaceWith(h("span", { class: "error", text: `no piano roll: ${err.message}` }));
      });
  } else {
    loadRoll(roll, `/v1/samples/${sample.id}/midi`, signal);
  }
  dl.addEventListener("click", () => busy(dl, card, () => download(`/v1/samples/${sample.id}/midi`, `sample-${sample.id}.mid`, signal)));
  cont.addEventListener("click", () => busy(cont, card, () => onContinue(sample)));
  showLineage(sample, lineage, signal);
  card.id = `sample-${sample.id}`;
  return card;
}

/** Save what an API path answers as a file named `name` (a blob: URL behind a download link). */
async function download(path, name, signal) {
  const url = await api.blobUrl(path, signal);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** An image from an API path (the key goes in a header, so through a blob: URL). */
function apiImage(path, alt, signal) {
  const img = h("img", { class: "spectrogram", alt, width: 640, height: 160 });
  api
    .blobUrl(path, signal)
    .then((url) => {
      img.src = url;
      signal.addEventListener("abort", () => URL.revokeObjectURL(url), { once: true });
    })
    .catch((err) => {
      if (err.name !== "AbortError") img.replaceWith(h("span", { class: "error", text: `no spectrogram: ${err.message}` }));
    });
  return img;
}

/**
 * An audio model's variation: the player, its spectrogram (the seam with the primer marked),
 * a WAV download and "Continue this one" (the co-composition loop); it has no MIDI to show.
 */
function audioSampleCard(sample, signal, onContinue) {
  const title = `Variation ${sample.index + 1} · ${short(sample.id)}`;
  const meta = sample.meta || {};
  const lineage = h("p", { class: "lineage" });
  const wav = h("button", { type: "button", text: "Download WAV" });
  const cont = h("button", { type: "button", text: "Continue this one" });
  const facts = [
    formatDuration(sample.duration_s),
    typeof meta.seam_s === "number" && meta.seam_s > 0 ? `primer ${meta.seam_s.toFixed(1)} s` : "no primer",
    typeof meta.new_seconds === "number" ? `${meta.new_seconds.toFixed(1)} s new` : null,
    typeof meta.real_time_factor === "number" ? `${meta.real_time_factor.toFixed(2)}× real time to make` : null,
    meta.audio && typeof meta.audio.rms_dbfs === "number" ? `${meta.audio.rms_dbfs.toFixed(1)} dBFS` : null,
    sample.partial ? "partial" : null,
  ].filter(Boolean);
  const card = h(
    "article",
    { class: "card sample audio-sample", "data-sample-id": sample.id, "aria-label": title },
    h("h3", { text: title }),
    h("p", { class: "hint facts-line", text: facts.join(" · ") }),
    lineage,
    audioPlayer(`/v1/samples/${sample.id}/audio`, `Play ${title}`, signal),
    apiImage(`/v1/samples/${sample.id}/pianoroll.png`, `Spectrogram of ${title}${meta.seam_s ? `, the primer's end marked at ${meta.seam_s.toFixed(1)} s` : ""}`, signal),
    h("div", { class: "row" }, wav, cont),
  );
  wav.addEventListener("click", () => busy(wav, card, () => download(`/v1/samples/${sample.id}/audio?format=wav`, `sample-${sample.id}.wav`, signal)));
  cont.addEventListener("click", () => busy(cont, card, () => onContinue(sample)));
  showLineage(sample, lineage, signal);
  card.id = `sample-${sample.id}`;
  return card;
}

/** Fill a card's lineage line (ancestors oldest first, each a link to its card) if it has any. */
function showLineage(sample, lineage, signal) {
  if (!sample.parent_sample_id) return;
  api
    .get(`/v1/samples/${sample.id}/lineage`, { signal })
    .then((answer) => {
      // The answer lists the ancestors oldest first, then the sample itself.
      const chain = lineageChain(answer.samples, sample);
      lineage.replaceChildren(
        h("span", { text: "Lineage: " }),
        answer.truncated ? "… → " : "",
        ...chain.flatMap((x, i) => [i ? " → " : "", x.id === sample.id ? h("strong", { text: short(x.id) }) : ancestorLink(x)]),
      );
    })
    .catch((err) => {
      if (err.name !== "AbortError") lineage.replaceChildren(errorBox(err));
    });
}

/** The form's attribute controls and style tags, when the model learned any (its capabilities). */
function steerFields(capabilities) {
  const fields = controlFields(capabilities);
  const tags = (capabilities && capabilities.tags) || [];
  if (!fields.length && !tags.length) return null;
  const bound = (f) => ({ type: "number", min: f.min !== undefined ? String(f.min) : undefined, max: f.max !== undefined ? String(f.max) : undefined, step: f.step, placeholder: "free" });
  const input = (f) => {
    if (f.kind === "select") return field(f.label, select(f.name, [["", "(free)"], ...f.options.map((v) => [v, v])], ""), f.hint);
    if (f.kind === "number") return field(f.label, h("input", { name: f.name, ...bound(f) }), f.hint);
    return h(
      "fieldset",
      { class: "inline pair" },
      h("legend", { text: f.label }),
      field("Lowest", h("input", { name: `${f.name}.lo`, ...bound(f) })),
      field("Highest", h("input", { name: `${f.name}.hi`, ...bound(f) })),
      h("small", { class: "hint", text: f.hint }),
    );
  };
  const controls = fields.map(input);
  // A multitrack model: the per-bar controls again, track by track (left empty: the piece's).
  const perTrack = trackControlFields(capabilities).map((trackFields, i) =>
    h("fieldset", { class: "track-controls" }, h("legend", { text: `Track ${i + 1}` }), h("div", { class: "grid" }, trackFields.map(input))),
  );
  const tagBoxes = tags.map((t) => {
    const id = `f${++uid}`;
    return h("span", { class: "tag" }, h("input", { type: "checkbox", name: `tag.${t}`, id }), h("label", { for: id, text: t }));
  });
  return h(
    "fieldset",
    { class: "steer" },
    h("legend", { text: "Steer (what the model learned)" }),
    controls.length ? h("div", { class: "grid" }, controls) : null,
    perTrack.length ? h("details", {}, h("summary", { text: "Per track (multitrack model)" }), ...perTrack) : null,
    tagBoxes.length ? h("fieldset", { class: "inline" }, h("legend", { text: "Style tags" }), tagBoxes) : null,
  );
}

async function samplesPage(main, signal, modelId) {
  const models = (await api.get("/v1/models", { signal })).filter((m) => m.checkpoints.length);
  if (!models.length) {
    main.replaceChildren(h("h1", { text: "Samples" }), h("p", {}, "No model has a checkpoint yet: ", h("a", { href: "#/models", text: "train one" }), "."));
    return;
  }
  const model = models.find((m) => m.id === modelId) || models[0];
  const datasets = await api.get("/v1/datasets", { signal });
  const modelSelect = select("model", models.map((m) => [m.id, `${short(m.id)} · ${m.architecture} (${m.preset || "custom"})`]), model.id);
  modelSelect.addEventListener("change", () => (location.hash = `#/samples/${modelSelect.value}`));
  if (isAudioModel(model)) {
    await audioSamples(main, signal, model, modelSelect, datasets);
    return;
  }
  const midiFiles = (
    await Promise.all(datasets.slice(0, 20).map((d) => api.get(`/v1/datasets/${d.id}/files?kind=midi&limit=200`, { signal }).then((r) => r.files.map((f) => [f.id, `${d.name} / ${f.name}`]))))
  ).flat();
  const panel = h("div", { class: "job-panel" });
  const list = h("div", { class: "samples" });
  const num = (name, attrs) => h("input", { name, type: "number", step: "any", ...attrs });
  const lengthMode = h(
    "fieldset",
    { class: "inline" },
    h("legend", { text: "Length in" }),
    h("input", { type: "radio", name: "length", id: "len-tokens", value: "tokens", checked: true }),
    h("label", { for: "len-tokens", text: "tokens" }),
    h("input", { type: "radio", name: "length", id: "len-bars", value: "bars" }),
    h("label", { for: "len-bars", text: "bars" }),
  );
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "sample-h" },
    h("h2", { id: "sample-h", text: "Sample" }),
    field("Model", modelSelect),
    h(
      "div",
      { class: "grid" },
      field("Primer file", select("primer_file_id", [["", "(none: start from nothing)"], ...midiFiles])),
      field("Primer bars", num("primer_bars", { min: "1", step: "1", value: "2" })),
      field("Variations (n)", num("n", { min: "1", max: "64", step: "1", value: "2" })),
      lengthMode,
      field("Max tokens", num("max_new_tokens", { min: "1", step: "1", value: "128" })),
      field("Max bars", num("max_bars", { min: "1", step: "1", value: "8" })),
      field("Temperature", num("temperature", { min: "0", value: "1.0" }), "0 = greedy"),
      field("Top-k", num("top_k", { min: "1", step: "1", placeholder: "off" })),
      field("Top-p", num("top_p", { min: "0", max: "1", placeholder: "off" })),
      field("Min-p", num("min_p", { min: "0", max: "1", placeholder: "off" })),
      field("Seed", num("seed", { min: "0", step: "1", placeholder: "random" })),
      field("Max copied fraction", num("max_copied_fraction", { min: "0", max: "1", placeholder: "no limit" }), "re-sample a variation whose 8-note phrases are more copied from training than this"),
      h(
        "div",
        { class: "field check wide" },
        // The hidden "off" comes first: an unchecked box then still says so (the last value wins).
        h("input", { type: "hidden", name: "constrained", value: "off" }),
        h("input", { type: "checkbox", name: "constrained", id: "constrained", value: "on", checked: true, "aria-describedby": "constrained-hint" }),
        h("label", { for: "constrained", text: "Constrained decoding" }),
        h("small", { id: "constrained-hint", class: "hint", text: "sample only the tokens the grammar allows" }),
      ),
      h(
        "div",
        { class: "field check wide" },
        h("input", { type: "checkbox", name: "quantize", id: "quantize", value: "on", "aria-describedby": "quantize-hint" }),
        h("label", { for: "quantize", text: "Fast decoding (int8 weights)" }),
        h("small", { id: "quantize-hint", class: "hint", text: "about twice the speed on a CPU; the probabilities change slightly" }),
      ),
    ),
    steerFields(model.capabilities),
    h("button", { type: "submit", text: "Generate" }),
    panel,
  );
  const run = sampleJob(model, panel, signal, (id) => showSamples(id));
  const modes = (model.capabilities && model.capabilities.modes) || ["continue"];
  const onEdit = async (sample, mode, edit) => {
    await run(editRequest(formValues(form), mode, sample.fileId ? { source_file_id: sample.fileId } : sample.id, edit));
  };
  const onContinue = async (sample) => {
    const values = formValues(form);
    delete values.primer_file_id;
    delete values.primer_bars;
    await run(sampleRequest({ ...values, primer_sample_id: sample.id }));
  };
  const showSamples = async (focusId) => {
    const { samples } = await api.get(`/v1/models/${model.id}/samples?limit=12`, { signal });
    sampleOrder(samples);
    list.replaceChildren(...(samples.length ? samples.map((x) => (isAudioSample(x) ? audioSampleCard(x, signal, onContinue) : sampleCard(x, signal, onContinue, modes, onEdit))) : [h("p", { text: "No samples yet." })]));
    if (focusId) document.getElementById(`sample-${focusId}`)?.scrollIntoView({ block: "nearest" });
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form.querySelector("button[type=submit]"), form, () => run(sampleRequest(formValues(form))));
  });
  const editHint = modes.includes("infill")
    ? h("p", { class: "hint", text: "Regenerate bars: drag across a piano roll (or type the bars), then “Regenerate bars”." })
    : h("p", { class: "hint" }, "This model cannot rewrite bars or add instruments: train one on a corpus with the ", h("code", { text: "multitrack" }), " preset (", h("a", { href: "#/models", text: "Corpora and models" }), ").");
  // Edit a dataset's MIDI file the same way: its roll, bars, tracks; the result is a new sample.
  let fileEdit = null;
  if ((modes.includes("infill") || modes.includes("accompany")) && midiFiles.length) {
    const fileSelect = select("edit_file", [["", "(choose a MIDI file)"], ...midiFiles], "");
    const slot = h("div");
    fileEdit = h("section", { class: "card file-edit", "aria-labelledby": "file-edit-h" }, h("h2", { id: "file-edit-h", text: "Edit a file" }), field("MIDI file", fileSelect), slot);
    let fileSignal = null;
    fileSelect.addEventListener("change", () => {
      if (fileSignal) fileSignal.abort();
      slot.replaceChildren();
      const id = fileSelect.value;
      if (!id) return;
      fileSignal = new AbortController();
      signal.addEventListener("abort", () => fileSignal.abort(), { once: true });
      const roll = rollCanvas(560, 120);
      const edit = editControls({ fileId: id }, roll, modes, onEdit);
      slot.replaceChildren(roll, edit);
      api
        .bytes(`/v1/files/${id}/content`, fileSignal.signal)
        .then((b) => {
          const m = parseMidi(b);
          if (edit.onMidi) edit.onMidi(m);
          else paintRoll(roll, m);
        })
        .catch((err) => {
          if (err.name !== "AbortError") slot.replaceChildren(errorBox(err));
        });
    });
  }
  main.replaceChildren(h("h1", { text: "Samples" }), form, ...(fileEdit ? [fileEdit] : []), h("h2", { text: "Variations" }), editHint, list);
  await showSamples();
}

/** Newest job first (the API's order), and a job's variations in their own order. */
function sampleOrder(samples) {
  const jobOrder = new Map();
  for (const x of samples) if (!jobOrder.has(x.job_id)) jobOrder.set(x.job_id, jobOrder.size);
  return samples.sort((a, b) => jobOrder.get(a.job_id) - jobOrder.get(b.job_id) || a.index - b.index);
}

/**
 * The samples page of an audio model (an audio-vq corpus's): continue a recording of your
 * datasets, cut to its first seconds, or start fresh; each variation continues in turn.
 */
async function audioSamples(main, signal, model, modelSelect, datasets) {
  const recordings = (
    await Promise.all(datasets.slice(0, 20).map((d) => api.get(`/v1/datasets/${d.id}/files?kind=audio&limit=200`, { signal }).then((r) => r.files.map((f) => [f.id, `${d.name} / ${f.name}`]))))
  ).flat();
  const panel = h("div", { class: "job-panel" });
  const list = h("div", { class: "samples" });
  const num = (name, attrs) => h("input", { name, type: "number", step: "any", ...attrs });
  const form = h(
    "form",
    { class: "card", "aria-labelledby": "sample-h" },
    h("h2", { id: "sample-h", text: "Sample" }),
    field("Model", modelSelect),
    h("p", { class: "hint", text: "An audio model (audio-vq): it continues a recording, or a variation, by the seconds asked." }),
    h(
      "div",
      { class: "grid" },
      field("Primer recording", select("primer_file_id", [["", "(none: start from nothing)"], ...recordings])),
      field("Primer seconds", num("primer_seconds", { min: "0.1", max: "3600", value: "4" }), "the recording's first seconds"),
      field("Variations (n)", num("n", { min: "1", max: "64", step: "1", value: "2" })),
      field("Max seconds", num("max_seconds", { min: "0.1", max: "7200", value: "4" }), "length of the new audio"),
      field("Temperature", num("temperature", { min: "0", value: "1.0" }), "0 = greedy"),
      field("Top-k", num("top_k", { min: "1", step: "1", placeholder: "off" })),
      field("Top-p", num("top_p", { min: "0", max: "1", placeholder: "off" })),
      field("Seed", num("seed", { min: "0", step: "1", placeholder: "random" })),
    ),
    h("button", { type: "submit", text: "Generate" }),
    panel,
  );
  const run = sampleJob(model, panel, signal, (id) => showSamples(id));
  // Co-composition: the whole variation is the primer; the form's length and sampling apply.
  const onContinue = async (sample) => {
    const values = formValues(form);
    delete values.primer_file_id;
    delete values.primer_seconds;
    await run(audioSampleRequest({ ...values, primer_sample_id: sample.id }));
  };
  const showSamples = async (focusId) => {
    const { samples } = await api.get(`/v1/models/${model.id}/samples?limit=12`, { signal });
    list.replaceChildren(...(samples.length ? sampleOrder(samples).map((x) => audioSampleCard(x, signal, onContinue)) : [h("p", { text: "No samples yet." })]));
    if (focusId) document.getElementById(`sample-${focusId}`)?.scrollIntoView({ block: "nearest" });
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form.querySelector("button[type=submit]"), form, () => run(audioSampleRequest(formValues(form))));
  });
  main.replaceChildren(h("h1", { text: "Samples" }), form, h("h2", { text: "Variations" }), list);
  await showSamples();
}

async function jobsPage(main, signal) {
  const tbody = h("tbody");
  const rows = new Map();
  const following = new Set();
  const render = (job) => {
    const active = !TERMINAL_STATES.includes(job.state);
    const cancel = active ? h("button", { type: "button", class: "danger", text: "Cancel", "aria-label": `Cancel ${job.type} job ${short(job.id)}` }) : null;
    const tr = h(
      "tr",
      { "data-job-id": job.id, "data-state": job.state },
      h("td", { text: short(job.id) }),
      h("td", { text: job.type }),
      h("td", { class: `state ${job.state}`, text: job.state }),
      h("td", {}, progressBar(job.progress, `Progress of job ${short(job.id)}`), " ", h("span", { class: "msg", text: job.error || job.message })),
      h("td", { text: when(job.created_at) }),
      h("td", {}, cancel),
    );
    if (cancel)
      cancel.addEventListener("click", () =>
        busy(cancel, tr.cells[5], async () => {
          render(await api.post(`/v1/jobs/${job.id}/cancel`));
          announce(`Cancel of job ${short(job.id)} requested`);
        }),
      );
    const old = rows.get(job.id);
    if (old) old.tr.replaceWith(tr);
    else tbody.append(tr);
    rows.set(job.id, { job, tr });
  };
  const follow = (job) => {
    if (following.has(job.id) || following.size >= 3) return;
    following.add(job.id);
    api
      .followJob(
        job.id,
        (ev) => {
          const cur = rows.get(job.id)?.job || job;
          if (ev.event === "progress") render({ ...cur, progress: ev.data.progress, message: ev.data.message || "" });
          else if (ev.event === "state" || ev.event === "end") render({ ...cur, state: ev.data.state, message: ev.data.message || cur.message });
        },
        signal,
      )
      .catch(() => {})
      .finally(() => following.delete(job.id));
  };
  const refresh = async () => {
    const { jobs } = await api.get("/v1/jobs?limit=50", { signal });
    tbody.replaceChildren();
    rows.clear();
    for (const j of jobs) {
      render(j);
      if (!TERMINAL_STATES.includes(j.state)) follow(j);
    }
  };
  main.replaceChildren(
    h("h1", { text: "Jobs" }),
    h(
      "table",
      { class: "jobs" },
      h("caption", { class: "visually-hidden", text: "Your jobs, newest first" }),
      h("thead", {}, h("tr", {}, ["Job", "Type", "State", "Progress", "Created", "Actions"].map((t) => h("th", { scope: "col", text: t })))),
      tbody,
    ),
  );
  await refresh();
  // New jobs appear by polling the list; running ones move by their event streams.
  while (!signal.aborted) {
    await api.sleep(4000, signal);
    if (!signal.aborted && !document.activeElement?.closest("tbody")) await refresh().catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// Sign-in and routing

const PAGES = [
  ["datasets", "Datasets"],
  ["audio", "Audio tools"],
  ["models", "Corpora and models"],
  ["samples", "Samples"],
  ["jobs", "Jobs"],
];

async function whoAmI(key) {
  // GET /v1/keys lists the caller's owner's keys; the one whose prefix starts this key is it.
  const keys = await api.get("/v1/keys");
  const mine = keys.find((k) => key.startsWith(k.prefix)) || keys[0];
  return mine ? { owner: mine.owner, name: mine.name, scopes: mine.scopes } : { owner: "?", name: "", scopes: [] };
}

function signInPage(main) {
  const input = h("input", { name: "key", type: "password", autocomplete: "off", required: true, spellcheck: "false" });
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-h" },
    h("h1", { id: "signin-h", text: "Sign in" }),
    field("API key", input, "Make one with: cadenza keys create --owner NAME. It stays in this tab only."),
    h("button", { type: "submit", text: "Sign in" }),
  );
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    busy(form.querySelector("button"), form, async () => {
      api.saveKey(input.value.trim());
      try {
        await whoAmI(input.value.trim());
      } catch (err) {
        api.saveKey("");
        throw err;
      }
      if (!location.hash || location.hash === "#/signin") location.hash = "#/datasets";
      await start();
    });
  });
  main.replaceChildren(form);
  main.dataset.page = "signin";
  main.dataset.ready = "true";
  input.focus();
}

let current = null;

async function route() {
  if (current) current.abort();
  current = new AbortController();
  const signal = current.signal;
  const main = document.getElementById("main");
  if (!api.savedKey()) {
    signInPage(main);
    return;
  }
  const [, page = "datasets", id] = (location.hash || "#/datasets").split("/");
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const views = { datasets: id ? datasetPage : datasetsPage, audio: audioPage, models: id ? modelPage : modelsPage, samples: samplesPage, jobs: jobsPage };
  const view = views[page] || datasetsPage;
  document.title = `${(PAGES.find((p) => p[0] === page) || PAGES[0])[1]} · Cadenza studio`;
  main.replaceChildren(h("p", { class: "hint", text: "Loading…" }));
  main.dataset.page = page;
  main.dataset.ready = "false";
  try {
    const done = view(main, signal, id);
    // A page that keeps streaming (training, jobs) is ready once drawn; mark it then.
    await Promise.race([done, api.sleep(50)]);
    await Promise.race([done, new Promise((r) => requestAnimationFrame(() => r()))]);
    main.dataset.ready = "true";
    // For bench/studio.py: when this page was first drawn from the API's answers.
    performance.mark(`studio-ready:${page}`);
    await done;
  } catch (err) {
    if (err.name === "AbortError" || signal.aborted) return;
    if (err.status === 401) {
      api.saveKey("");
      await start();
      return;
    }
    main.append(errorBox(err));
    main.dataset.ready = "true";
  }
}

async function start() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  if (!api.savedKey()) {
    nav.hidden = true;
    who.replaceChildren();
    await route();
    return;
  }
  nav.hidden = false;
  nav.replaceChildren(h("ul", {}, PAGES.map(([p, label]) => h("li", {}, h("a", { href: `#/${p}`, "data-page": p, text: label })))));
  const signOut = h("button", { type: "button", class: "link", text: "Sign out" });
  signOut.addEventListener("click", () => {
    api.saveKey("");
    location.hash = "";
    start();
  });
  who.replaceChildren(h("span", { class: "who", text: "Signed in" }), signOut);
  whoAmI(api.savedKey())
    .then((me) => (who.firstChild.textContent = `Signed in as ${me.owner}${me.name ? ` (key ${me.name})` : ""}`))
    .catch(() => {});
  await route();
}

window.addEventListener("hashchange", () => route());
// The skip link moves focus without touching the hash (the hash is the page).
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  document.getElementById("main").focus();
});
start();
