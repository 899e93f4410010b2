// Pure functions of the studio (no DOM, no network), so the browser tests can call each one
// with known input: MIDI parsing, piano-roll and loss-curve geometry, the SSE wire format, and
// the mapping from form fields to the API's request bodies.

/** Thrown for a MIDI file this parser cannot read (the caller shows the message). */
export class MidiError extends Error {}

// A piano roll of more notes than this is not drawn note by note (nor would it be legible).
export const MAX_NOTES = 200000;

function readVarLen(bytes, pos) {
  let value = 0;
  for (let i = 0; i < 4; i++) {
    if (pos >= bytes.length) throw new MidiError("truncated variable-length number");
    const b = bytes[pos++];
    value = (value << 7) | (b & 0x7f);
    if (!(b & 0x80)) return [value, pos];
  }
  throw new MidiError("variable-length number longer than 4 bytes");
}

function ascii(bytes, pos, n) {
  return String.fromCharCode(...bytes.subarray(pos, pos + n));
}

/**
 * A Standard MIDI File's notes with times in seconds (tempo changes applied).
 * Returns {notes: [{pitch, start, end, velocity, channel, track}], duration, tracks,
 * ticksPerQuarter, tempos, timeSigs, endTick, parts}; `tracks` counts the track chunks that
 * hold notes, `parts` describes them in order ({chunk, program, drums}: the API's 0-based track
 * numbers for editing count the same tracks), `timeSigs` are [tick, numerator, denominator].
 */
export function parseMidi(input) {
  const bytes = input instanceof Uint8Array ? input : new Uint8Array(input);
  if (bytes.length < 14 || ascii(bytes, 0, 4) !== "MThd") throw new MidiError("not a MIDI file");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = view.getUint32(4);
  const nTracks = view.getUint16(10);
  const division = view.getUint16(12);
  // SMPTE division: ticks are fixed fractions of a second and tempo events do not apply.
  const smpte = (division & 0x8000) !== 0;
  const ticksPerSecond = smpte ? (256 - (division >> 8)) * (division & 0xff) : 0;
  const tpq = smpte ? 0 : division;
  if (!smpte && tpq === 0) throw new MidiError("zero ticks per quarter note");
  let pos = 8 + headerLen;
  const raw = []; // [tick, endTick, pitch, velocity, channel, track]
  const tempos = []; // [tick, microseconds per quarter]
  const timeSigs = []; // [tick, numerator, denominator]
  const parts = [];
  let endTick = 0;
  let tracksWithNotes = 0;
  for (let t = 0; t < nTracks && pos + 8 <= bytes.length; t++) {
    const id = ascii(bytes, pos, 4);
    const len = view.getUint32(pos + 4);
    const start = pos + 8;
    const end = Math.min(start + len, bytes.length);
    pos = start + len;
    if (id !== "MTrk") continue;
    let p = start;
    let tick = 0;
    let status = 0;
    let count = 0;
    let program = null;
    let drums = false;
    const open = new Map(); // channel*128+pitch → stack of started notes
    while (p < end) {
      let delta;
      [delta, p] = readVarLen(bytes, p);
      tick += delta;
      if (p >= end) break;
      let b = bytes[p];
      if (b & 0x80) {
        status = b;
        p++;
      } else if (status === 0) {
        throw new MidiError("data byte without a status byte");
      }
      if (status === 0xff) {
        const type = bytes[p++];
        let n;
        [n, p] = readVarLen(bytes, p);
        if (type === 0x51 && n === 3) {
          tempos.push([tick, (bytes[p] << 16) | (bytes[p + 1] << 8) | bytes[p + 2]]);
        } else if (type === 0x58 && n >= 2) {
          timeSigs.push([tick, bytes[p], 2 ** bytes[p + 1]]);
        }
        p += n;
        status = 0; // meta events cancel running status
        if (type === 0x2f) break;
        continue;
      }
      if (status === 0xf0 || status === 0xf7) {
        let n;
        [n, p] = readVarLen(bytes, p);
        p += n;
        status = 0;
        continue;
      }
      const kind = status & 0xf0;
      const channel = status & 0x0f;
      const a = bytes[p];
      const dataLen = kind === 0xc0 || kind === 0xd0 ? 1 : 2;
      const v = dataLen === 2 ? bytes[p + 1] : 0;
      p += dataLen;
      if (p > end) throw new MidiError("truncated event");
      const key = channel * 128 + a;
      if (kind === 0xc0 && program === null) program = a;
      if (kind === 0x90 && v > 0) {
        if (channel === 9) drums = true;
        if (!open.has(key)) open.set(key, []);
        open.get(key).push([tick, v]);
      } else if (kind === 0x80 || (kind === 0x90 && v === 0)) {
        const stack = open.get(key);
        if (stack && stack.length) {
          const [on, vel] = stack.shift();
          raw.push([on, tick, a, vel, channel, t]);
          endTick = Math.max(endTick, tick);
          count++;
          if (raw.length > MAX_NOTES) throw new MidiError(`more than ${MAX_NOTES} notes`);
        }
      }
    }
    // Notes never released end where their track ends.
    for (const [key, stack] of open) {
      for (const [on, vel] of stack) {
        raw.push([on, Math.max(on, tick), key % 128, vel, Math.floor(key / 128), t]);
        endTick = Math.max(endTick, on, tick);
        count++;
      }
    }
    if (count) {
      tracksWithNotes++;
      parts.push({ chunk: t, program: program ?? 0, drums });
    }
  }
  const toSeconds = smpte ? (tk) => tk / ticksPerSecond : tempoMap(tempos, tpq);
  const notes = raw
    .map(([on, off, pitch, velocity, channel, track]) => ({
      pitch,
      start: toSeconds(on),
      end: toSeconds(off),
      velocity,
      channel,
      track,
    }))
    .sort((x, y) => x.start - y.start || x.pitch - y.pitch);
  const duration = notes.reduce((m, n) => Math.max(m, n.end), 0);
  return { notes, duration, tracks: tracksWithNotes, ticksPerQuarter: tpq, tempos, timeSigs, endTick, parts };
}

/**
 * Where the bars of a parsed MIDI file start, in seconds: [0, t2, …, end], one more entry than
 * there are bars (the last is where the last bar ends). A bar lasts numerator × 4/denominator
 * quarters of the time signature in force (4/4 without one); a time signature change starts a
 * new bar. Bars run until the last note ends, so bar k (1-based) spans [bars[k-1], bars[k]):
 * the numbering of `infill.bars`.
 */
export function barTimes(midi) {
  const tpq = midi.ticksPerQuarter;
  if (!tpq) {
    // SMPTE time has no quarters: show 2-second bars (4/4 at 120 bpm).
    const out = [];
    for (let t = 0; out.length < 1 || t < midi.duration + 2; t += 2) out.push(t);
    return out.length > 1 ? out : [0, 2];
  }
  const sigs = [...(midi.timeSigs || [])].sort((a, b) => a[0] - b[0]);
  const toSeconds = tempoMap(midi.tempos || [], tpq);
  const end = Math.max(midi.endTick || 0, 1);
  const ticks = [0];
  let num = 4;
  let den = 4;
  let next = 0; // index into sigs
  for (let guard = 0; guard < 100000; guard++) {
    const last = ticks[ticks.length - 1];
    while (next < sigs.length && sigs[next][0] <= last) [, num, den] = sigs[next++];
    let barEnd = last + Math.max(1, Math.floor((tpq * 4 * num) / Math.max(den, 1)));
    // A time signature change inside this bar cuts it short there and starts a new bar.
    if (next < sigs.length && sigs[next][0] < barEnd) {
      barEnd = sigs[next][0];
    }
    ticks.push(barEnd);
    if (barEnd >= end) break;
  }
  return ticks.map(toSeconds);
}

/** The 1-based bar under x in a roll `width` wide drawn over [0, duration] seconds. */
export function barAt(x, width, duration, bars) {
  const n = bars.length - 1;
  if (n < 1 || width <= 0) return 1;
  const span = Math.max(duration || 0, bars[n] || 0);
  const t = (Math.min(Math.max(x, 0), width) / width) * span;
  let k = 1;
  while (k < n && bars[k] <= t) k++;
  return k;
}

const GM_FAMILIES = ["piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass", "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects"];

/** "program 33 (bass)": a General MIDI program with its family; "drums" for a drum track. */
export function programName(program, drums = false) {
  if (drums) return "drums";
  const p = Number(program);
  if (!Number.isInteger(p) || p < 0 || p > 127) return `program ${program}`;
  return `program ${p} (${GM_FAMILIES[p >> 3]})`;
}

/** An x range [x0, x1] of bars first..last (1-based, inclusive) in a roll like barAt's. */
export function barSpan(first, last, width, duration, bars) {
  const n = bars.length - 1;
  const span = Math.max(duration || 0, bars[n] || 0) || 1;
  const a = Math.min(Math.max(first, 1), n);
  const b = Math.min(Math.max(last, a), n);
  return [(bars[a - 1] / span) * width, (bars[b] / span) * width];
}

/** A tick → seconds function for tempo events [[tick, µs per quarter], ...] (default 120 bpm). */
export function tempoMap(tempos, tpq) {
  const sorted = [...tempos].sort((a, b) => a[0] - b[0]);
  const segments = [[0, 0, 500000]]; // [startTick, startSeconds, µs per quarter]
  for (const [tick, us] of sorted) {
    const [t0, s0, u0] = segments[segments.length - 1];
    const s = s0 + ((tick - t0) * u0) / 1e6 / tpq;
    if (tick === t0) segments[segments.length - 1] = [t0, s0, us];
    else segments.push([tick, s, us]);
  }
  return (tick) => {
    let lo = 0;
    let hi = segments.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (segments[mid][0] <= tick) lo = mid;
      else hi = mid - 1;
    }
    const [t0, s0, u0] = segments[lo];
    return s0 + ((tick - t0) * u0) / 1e6 / tpq;
  };
}

/**
 * Rectangles of a piano roll of `notes` in a width × height box: time runs left to right over
 * [0, duration], pitch bottom to top over the notes' range padded to at least an octave.
 * Every note stays at least one pixel wide and tall.
 */
export function rollGeometry(notes, width, height, duration) {
  if (!notes.length) return { low: 60, high: 71, rects: [] };
  let low = 127;
  let high = 0;
  let end = duration || 0;
  for (const n of notes) {
    low = Math.min(low, n.pitch);
    high = Math.max(high, n.pitch);
    end = Math.max(end, n.end);
  }
  while (high - low < 11) {
    if (high < 127) high++;
    if (high - low < 11 && low > 0) low--;
  }
  const rows = high - low + 1;
  const rowH = height / rows;
  const scale = end > 0 ? width / end : 0;
  const rects = notes.map((n) => ({
    x: n.start * scale,
    y: (high - n.pitch) * rowH,
    w: Math.max(1, (n.end - n.start) * scale),
    h: Math.max(1, rowH),
    velocity: n.velocity,
  }));
  return { low, high, rects };
}

/**
 * An incremental parser of the `text/event-stream` format: push() text as it arrives and get
 * the complete events so far ({id, event, data}); a partial event waits for the next push.
 */
export class SSEParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.event = "";
    this.id = "";
    this.lastId = "";
  }

  push(text) {
    this.buffer += text;
    const out = [];
    let nl;
    while ((nl = this.buffer.search(/\r\n|\r|\n/)) >= 0) {
      const line = this.buffer.slice(0, nl);
      const sep = this.buffer.startsWith("\r\n", nl) ? 2 : 1;
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (this.buffer[nl] === "\r" && nl + 1 === this.buffer.length) break;
      this.buffer = this.buffer.slice(nl + sep);
      if (line === "") {
        if (this.data.length) {
          if (this.id) this.lastId = this.id;
          out.push({ id: this.id || this.lastId, event: this.event || "message", data: this.data.join("\n") });
        }
        this.data = [];
        this.event = "";
        this.id = "";
        continue;
      }
      if (line.startsWith(":")) continue; // a comment (keep-alive)
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id") this.id = value;
    }
    return out;
  }
}

/**
 * Points of loss curves in a width × height box: {train: [[x, y], ...], val: [...], bounds}.
 * Steps map to x over [first, last] step, losses to y with the highest loss at the top.
 */
export function lossSeries(metrics, width, height, pad = 4) {
  // One point per split and step, the latest row winning: a resumed run replays steps.
  const bySplit = {};
  for (const m of metrics) {
    if (!Number.isFinite(m.loss)) continue;
    (bySplit[m.split] ||= new Map()).set(m.step, m.loss);
  }
  let minStep = Infinity;
  let maxStep = -Infinity;
  let minLoss = Infinity;
  let maxLoss = -Infinity;
  for (const rows of Object.values(bySplit)) {
    for (const [step, loss] of rows) {
      minStep = Math.min(minStep, step);
      maxStep = Math.max(maxStep, step);
      minLoss = Math.min(minLoss, loss);
      maxLoss = Math.max(maxLoss, loss);
    }
  }
  if (minStep === Infinity) return { series: {}, bounds: null };
  const spanStep = maxStep - minStep || 1;
  const spanLoss = maxLoss - minLoss || 1;
  const series = {};
  for (const [split, rows] of Object.entries(bySplit)) {
    series[split] = [...rows.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([step, loss]) => [
        pad + ((step - minStep) / spanStep) * (width - 2 * pad),
        pad + ((maxLoss - loss) / spanLoss) * (height - 2 * pad),
      ]);
  }
  return { series, bounds: { minStep, maxStep, minLoss, maxLoss } };
}

const INT_FIELDS = ["n", "primer_bars", "max_new_tokens", "max_bars", "top_k", "seed"];
const FLOAT_FIELDS = ["temperature", "top_p", "min_p", "primer_seconds", "max_copied_fraction"];

/**
 * The body of `POST /v1/models/{id}/samples` from the sample form's values (strings, as a
 * FormData gives them). Empty fields are left out (the API's defaults apply); `length` says
 * whether the length is a token count or a number of bars; numbers stay numbers even when
 * malformed (NaN becomes null) so the API, not the page, names the bad field.
 */
export function sampleRequest(values) {
  const body = {};
  const num = (v, int) => {
    const x = int ? Number.parseInt(v, 10) : Number.parseFloat(v);
    return Number.isFinite(x) ? x : null;
  };
  for (const f of INT_FIELDS) if (values[f] !== undefined && values[f] !== "") body[f] = num(values[f], true);
  for (const f of FLOAT_FIELDS) if (values[f] !== undefined && values[f] !== "") body[f] = num(values[f], false);
  // In bars mode the token count stays as an upper bound; in tokens mode bars do not apply.
  if (values.length !== "bars") delete body.max_bars;
  if (values.primer_sample_id) {
    body.primer_sample_id = values.primer_sample_id;
  } else if (values.primer_file_id) {
    body.primer_file_id = values.primer_file_id;
  } else {
    delete body.primer_bars;
    delete body.primer_seconds;
  }
  // Attribute controls (`control.NAME`, a pair as `control.NAME.lo` / `.hi`) and style tags
  // (`tag.NAME` checkboxes): only those the form sets; a control left empty is sampled freely.
  // Per-track controls (`track.I.NAME`, a pair as `.lo` / `.hi`) become `controls.tracks`,
  // one entry per track up to the last one set ({} leaves a track to the piece's values).
  const controls = {};
  const tracks = [];
  const tags = [];
  for (const [k, v] of Object.entries(values)) {
    if (k.startsWith("tag.") && v) tags.push(k.slice(4));
    if (v === undefined || v === "") continue;
    if (k.startsWith("control.")) {
      const [, name, half] = k.split(".");
      setControl(controls, values, `control.${name}`, name, half, v);
    } else if (k.startsWith("track.")) {
      const [, index, name, half] = k.split(".");
      const i = Number.parseInt(index, 10);
      if (!Number.isInteger(i) || i < 0) continue;
      while (tracks.length <= i) tracks.push({});
      setControl(tracks[i], values, `track.${i}.${name}`, name, half, v);
    }
  }
  while (tracks.length && !Object.keys(tracks[tracks.length - 1]).length) tracks.pop();
  if (tracks.length) controls.tracks = tracks;
  if (Object.keys(controls).length) body.controls = controls;
  if (tags.length) body.tags = tags.sort();
  // The form's checkbox comes with a hidden "off" before it, so unchecked still says so.
  if (values.constrained === "on" || values.constrained === "off") body.constrained = values.constrained === "on";
  // "Fast decoding": the model's int8 copy (the API's `quantize`); unchecked leaves the default.
  if (values.quantize === "on") body.quantize = "int8";
  return body;
}

/** One control read from the form into `into`: a number (or a choice), or for a pair's `.lo`
 * half both halves as [lowest, highest] when both are set (half a range is left free). */
function setControl(into, values, prefix, name, half, v) {
  const num = (x) => {
    const n = Number.parseInt(String(x), 10);
    return Number.isFinite(n) ? n : null;
  };
  if (half) {
    const lo = values[`${prefix}.lo`];
    const hi = values[`${prefix}.hi`];
    if (half === "lo" && lo !== "" && hi !== undefined && hi !== "") into[name] = [num(lo), num(hi)];
    return;
  }
  const x = Number(v);
  into[name] = String(v).trim() !== "" && Number.isFinite(x) && !/[/a-z]/i.test(v) ? x : v;
}

/**
 * The body of an edit (`mode` "infill" or "accompany") of a source (a sample's id, or
 * {source_file_id} for a MIDI file of a dataset): the form's sampling options
 * (sampleRequest's, less the primer and length fields an edit does not take) plus the edit.
 * `edit` is {from, to, tracks} for infill (bar numbers and track numbers as strings or numbers;
 * "" tracks = all) or {programs: "33, 0", drums} for accompany.
 */
export function editRequest(values, mode, source, edit) {
  const body = sampleRequest({ ...values, primer_file_id: "", primer_sample_id: "" });
  for (const f of ["max_bars", "max_copied_fraction", "controls", "tags"]) delete body[f];
  body.mode = mode;
  if (typeof source === "string") body.source_sample_id = source;
  else body.source_file_id = source.source_file_id;
  const int = (v) => {
    const x = Number.parseInt(String(v).trim(), 10);
    return Number.isFinite(x) ? x : null;
  };
  if (mode === "infill") {
    body.infill = { bars: [int(edit.from), int(edit.to)] };
    const tracks = String(edit.tracks ?? "").split(",").filter((t) => t.trim() !== "");
    if (tracks.length) body.infill.tracks = tracks.map(int);
  } else {
    const programs = String(edit.programs ?? "").split(",").filter((t) => t.trim() !== "");
    body.accompany = { programs: programs.map(int), drums: Boolean(edit.drums) };
  }
  return body;
}

/**
 * The form fields for a model's attribute controls (`capabilities.controls`): a choice for a
 * control with `values`, a number for one with a `range`, two numbers for `pitch_range`
 * ([lowest, highest]). Each field is named as sampleRequest reads it; a per-bar control takes
 * one value for every bar here.
 */
export function controlFields(capabilities) {
  const controls = (capabilities && capabilities.controls) || {};
  return Object.entries(controls).map(([name, c]) => {
    const label = name.replaceAll("_", " ");
    const hint = [c.unit, c.per === "bar" ? "every bar" : "the piece"].filter(Boolean).join(", ");
    if (Array.isArray(c.values)) return { name: `control.${name}`, label, hint, kind: "select", options: c.values };
    const [min, max] = Array.isArray(c.range) ? c.range : [undefined, undefined];
    const step = Number.isInteger(min) && Number.isInteger(max) && name !== "duration" ? "1" : "any";
    if (name === "pitch_range") return { name: `control.${name}`, label, hint, kind: "pair", min, max, step: "1" };
    return { name: `control.${name}`, label, hint, kind: "number", min, max, step };
  });
}

/**
 * The per-track form fields of a multitrack model (`capabilities.tracks`): for each of the
 * first `count` tracks (at most the model's `max`), the per-bar controls a request may set
 * for that track, named `track.I.NAME` as sampleRequest reads them.
 */
export function trackControlFields(capabilities, count = 4) {
  const t = capabilities && capabilities.tracks;
  const all = (capabilities && capabilities.controls) || {};
  if (!t || !Array.isArray(t.controls)) return [];
  const names = t.controls.filter((n) => all[n]);
  if (!names.length) return [];
  const own = controlFields({ controls: Object.fromEntries(names.map((n) => [n, all[n]])) });
  return Array.from({ length: Math.min(count, t.max || count) }, (_, i) =>
    own.map((f) => ({ ...f, name: f.name.replace(/^control\./, `track.${i}.`), hint: f.hint.replace("every bar", `every bar of track ${i + 1}`) })),
  );
}

/** The body of `POST /v1/models`: a corpus, an architecture and preset, and training options. */
export function trainRequest(values) {
  const train = {};
  for (const f of ["max_steps", "batch_size", "seq_len", "eval_interval", "log_interval"]) {
    if (values[f]) train[f] = Number.parseInt(values[f], 10);
  }
  if (values.lr) train.lr = Number.parseFloat(values.lr);
  const body = { corpus_id: values.corpus_id, architecture: values.architecture, train };
  if (values.preset) body.preset = values.preset;
  return body;
}

/** The body of `POST /v1/corpora`: a preset or a tokenizer (a preset wins when both are set). */
export function corpusRequest(values) {
  const body = { dataset_id: values.dataset_id };
  if (values.preset) body.preset = values.preset;
  else if (values.tokenizer) body.tokenizer = values.tokenizer;
  if (values.seed) body.seed = Number.parseInt(values.seed, 10);
  // The audio-vq options (`vq.NAME` fields) go as its tokenizer_config; only those set.
  if (body.tokenizer === AUDIO_TOKENIZER) {
    const config = {};
    for (const [k, v] of Object.entries(values)) {
      if (!k.startsWith("vq.") || v === undefined || v === "") continue;
      const x = Number(v);
      config[k.slice(3)] = Number.isFinite(x) ? x : null;
    }
    if (Object.keys(config).length) body.tokenizer_config = config;
  }
  return body;
}

/** The tokenizer that learns from recordings: its corpora's models make audio, not MIDI. */
export const AUDIO_TOKENIZER = "audio-vq";

/**
 * Whether a model (GET /v1/models) samples audio: its `capabilities.output`, which the API
 * takes from its corpus's tokenizer (so it holds for a public model whose corpus is not ours).
 */
export function isAudioModel(model) {
  return Boolean(model && model.capabilities && model.capabilities.output === "audio");
}

/**
 * The body of `POST /v1/models/{id}/samples` for an audio model, from its form's values: a
 * recording (cut to `primer_seconds`) or a sample (`primer_sample_id`, whole unless seconds
 * are given) as primer, `max_seconds`, `n`, `seed`, temperature/top-k/top-p. The MIDI-only
 * options (bars, tokens, controls, constrained decoding) are never sent: the API refuses them.
 */
export function audioSampleRequest(values) {
  const body = {};
  const num = (v, int) => {
    const x = int ? Number.parseInt(v, 10) : Number.parseFloat(v);
    return Number.isFinite(x) ? x : null;
  };
  for (const f of ["n", "top_k", "seed"]) if (values[f] !== undefined && values[f] !== "") body[f] = num(values[f], true);
  for (const f of ["temperature", "top_p", "primer_seconds", "max_seconds"]) if (values[f] !== undefined && values[f] !== "") body[f] = num(values[f], false);
  if (values.primer_sample_id) body.primer_sample_id = values.primer_sample_id;
  else if (values.primer_file_id) body.primer_file_id = values.primer_file_id;
  else delete body.primer_seconds;
  return body;
}

/** Whether a sample is audio (an audio-vq model's: WAV and spectrogram, no MIDI). */
export function isAudioSample(sample) {
  return Boolean(sample && sample.meta && sample.meta.kind === "audio");
}

/** Rows of a sample's metrics beside its corpus's: [{name, sample, mean, std, z}]. */
export function metricRows(meta) {
  const metrics = (meta && meta.metrics) || {};
  return Object.entries(metrics)
    .filter(([, m]) => m && typeof m === "object" && "sample" in m)
    .map(([name, m]) => ({ name, sample: m.sample, mean: m.corpus_mean, std: m.corpus_std, z: m.z }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * A sample's copy check (`meta.novelty`) in words: how much of it is found in the training
 * pieces, its longest copied run, and whether a `max_copied_fraction` was still missed.
 */
export function noveltyText(meta) {
  const n = meta && meta.novelty;
  if (!n || typeof n.copied_fraction !== "number") return "";
  let text = `${Math.round(n.copied_fraction * 100)}% of its 8-note phrases are in the training pieces · longest copied run ${n.longest_copied_run} notes`;
  if (n.over_limit) text += ` · still over the ${n.max_copied_fraction} limit after ${n.resampled} re-samples`;
  else if (n.resampled) text += ` · re-sampled ${n.resampled}× to get under ${n.max_copied_fraction}`;
  return text;
}

/** "1:05" for 65.2 s; "" for a missing duration. */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.round(seconds);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** The chain oldest → newest from a lineage answer and the sample itself (no duplicates). */
export function lineageChain(ancestors, sample) {
  const seen = new Set();
  const chain = [];
  for (const s of [...(ancestors || []), sample]) {
    if (s && !seen.has(s.id)) {
      seen.add(s.id);
      chain.push(s);
    }
  }
  return chain;
}

export const TERMINAL_STATES = ["succeeded", "failed", "cancelled"];
