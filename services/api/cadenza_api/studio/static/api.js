// The studio's only way to the server: the public /v1 API with the signed-in key.
import { SSEParser, TERMINAL_STATES } from "./logic.js";

const KEY = "cadenza.apiKey";

/** An error answer of the API: its status, its `code` and the message meant for a person. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || [];
  }
}

/** The message of an error body `{"error": {code, message, details}}`, fields named. */
/** An answer's body as JSON, or null when it is empty or not JSON. */
function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

export function errorFrom(status, body) {
  const err = body && body.error;
  if (!err) return new ApiError(status, "http_" + status, `the server answered ${status}`);
  let message = err.message || `the server answered ${status}`;
  if (err.details && err.details.length) {
    message += ": " + err.details.map((d) => `${d.field}: ${d.message}`).join("; ");
  }
  return new ApiError(status, err.code, message, err.details);
}

export function savedKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function saveKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

function headers(extra) {
  return { Authorization: `Bearer ${savedKey()}`, ...extra };
}

/** A JSON call; resolves to the parsed body (null for an empty one), rejects with ApiError. */
export async function call(method, path, body, options = {}) {
  const init = { method, headers: headers(), signal: options.signal };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(path, init);
  const data = parseJson(await res.text());
  if (!res.ok) throw errorFrom(res.status, data);
  return data;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body) => call("POST", path, body);
export const del = (path) => call("DELETE", path);

/**
 * Upload one file into a dataset with XMLHttpRequest (fetch cannot report upload progress).
 * `onProgress(fraction)` follows the bytes sent; resolves to the stored files, rejects with
 * the server's error for a refused file.
 */
export function uploadFile(datasetId, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/v1/datasets/${encodeURIComponent(datasetId)}/files`);
    xhr.setRequestHeader("Authorization", `Bearer ${savedKey()}`);
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) onProgress(e.loaded / e.total);
    };
    xhr.onload = () => {
      const data = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) resolve(data.files);
      else reject(errorFrom(xhr.status, data));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload could not reach the server"));
    const form = new FormData();
    form.append("files", file, file.name);
    xhr.send(form);
  });
}

/**
 * Follow a job's Server-Sent Events (`GET /v1/jobs/{id}/events`) with fetch, since EventSource
 * cannot send the Authorization header. Calls onEvent({id, event, data}) with `data` parsed;
 * resolves when the stream ends (the job ended) or `signal` aborts.
 */
export async function followJob(jobId, onEvent, signal) {
  const res = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/events`, { headers: headers(), signal });
  if (!res.ok) {
    throw errorFrom(res.status, parseJson(await res.text()));
  }
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const ev of parser.push(value)) {
        let data = {};
        try {
          data = JSON.parse(ev.data);
        } catch {
          data = { raw: ev.data };
        }
        onEvent({ id: ev.id, event: ev.event, data });
        if (ev.event === "end") return;
      }
    }
  } catch (err) {
    if (signal && signal.aborted) return;
    throw err;
  } finally {
    reader.releaseLock();
  }
}

export const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal) signal.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });

/** Poll a job until it ends; resolves to its final state. */
export async function waitJob(jobId, signal) {
  for (;;) {
    const job = await get(`/v1/jobs/${encodeURIComponent(jobId)}`, { signal });
    if (TERMINAL_STATES.includes(job.state) || (signal && signal.aborted)) return job;
    await sleep(1000, signal);
  }
}

/**
 * The bytes of an authenticated download as a blob: URL (for <audio>, <img>, a download link).
 * A rendering answered 202 (its job is still drawing it) is waited for, then fetched again.
 */
export async function blobUrl(path, signal) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const res = await fetch(path, { headers: headers(), signal });
    if (res.status === 202) {
      const job = await res.json();
      const done = await waitJob(job.id, signal);
      if (done.state !== "succeeded") throw new ApiError(409, "render_failed", done.error || "rendering failed");
      continue;
    }
    if (!res.ok) {
      throw errorFrom(res.status, parseJson(await res.text()));
    }
    return URL.createObjectURL(await res.blob());
  }
  throw new ApiError(503, "not_rendered", "the rendering is not ready; try again");
}

/** The bytes of an authenticated download. */
export async function bytes(path, signal) {
  const res = await fetch(path, { headers: headers(), signal });
  if (!res.ok) {
    throw errorFrom(res.status, parseJson(await res.text()));
  }
  return new Uint8Array(await res.arrayBuffer());
}

