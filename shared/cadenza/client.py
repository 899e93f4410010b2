"""A small typed HTTP client for the Cadenza REST API (used by the CLI, demo and tests)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx

from cadenza.atomic import atomic_path

TERMINAL_STATES = {"succeeded", "failed", "cancelled"}


# Retries of a GET answered 503 + Retry-After, and the longest wait honoured between them.
GET_RETRIES = 3
MAX_RETRY_WAIT_S = 5.0


def _retry_after(r: httpx.Response) -> float | None:
    """Seconds to wait before repeating a request answered `r`; None: do not repeat it."""
    if r.status_code != 503:
        return None
    try:
        return min(max(float(r.headers["retry-after"]), 0.0), MAX_RETRY_WAIT_S)
    except (KeyError, ValueError):
        return None


class ApiFailure(RuntimeError):
    """The API answered with an error; `code` and `status` come from its JSON body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Client:
    """The REST API over one HTTP connection pool, as `api_key`'s owner.

    Methods return the API's JSON; an error answer raises `ApiFailure`.
    """

    def __init__(self, api_url: str, api_key: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------
    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                raise ApiFailure(r.status_code, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ApiFailure(r.status_code, "http_error", r.text[:500]) from None
        return r

    def get(self, path: str, **params: Any) -> Any:
        """GET `path`. A 503 with Retry-After (the server busy, or its database briefly not
        answering) is retried up to `GET_RETRIES` times after the wait it names (at most
        `MAX_RETRY_WAIT_S`): a GET changes nothing, so repeating it is safe."""
        for _ in range(GET_RETRIES):
            r = self.http.get(path, params=params or None)
            wait = _retry_after(r)
            if wait is None:
                break
            time.sleep(wait)
        else:
            r = self.http.get(path, params=params or None)
        return self._check(r).json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self._check(self.http.post(path, json=body or {})).json()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        return self._check(self.http.patch(path, json=body)).json()

    def delete(self, path: str) -> Any:
        """DELETE `path`; the answer says what was removed (rows, objects)."""
        return self._check(self.http.delete(path)).json()

    def download(self, path: str, dest: Path, *, timeout: float = 600.0) -> Path:
        """Save GET `path` to `dest`; a 202 (e.g. a render being made) is waited for."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            with self.http.stream("GET", path) as r:
                if r.status_code >= 400:
                    r.read()
                    self._check(r)
                if r.status_code == 202:
                    r.read()
                    job = self.wait(r.json()["id"], timeout=timeout)
                    if job["state"] != "succeeded":
                        raise ApiFailure(409, "job_" + job["state"], job.get("error") or "")
                    continue
                # A download cut short leaves no torn file under dest.
                with atomic_path(dest) as tmp, tmp.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
                return dest
        raise ApiFailure(409, "not_ready", f"{path} was still not ready after its job finished")

    # -- resources -------------------------------------------------------------------------

    def create_dataset(
        self, name: str, description: str = "", tags: list[str] | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "description": description}
        if tags:
            body["tags"] = tags
        return dict(self.post("/v1/datasets", body))

    def upload(self, dataset_id: str, paths: Iterable[Path]) -> list[dict[str, Any]]:
        handles = [p.open("rb") for p in paths]
        try:
            files = [("files", (Path(h.name).name, h, "application/octet-stream")) for h in handles]
            r = self.http.post(f"/v1/datasets/{dataset_id}/files", files=files, timeout=600)
        finally:
            for h in handles:
                h.close()
        return list(self._check(r).json()["files"])

    def audio_job(self, dataset_id: str, operation: str, **options: Any) -> dict[str, Any]:
        """Queue convert / crop / transcribe over a dataset's audio files (all by default)."""
        body = {"operation": operation, **options}
        return dict(self.post(f"/v1/datasets/{dataset_id}/audio-jobs", body))

    def create_corpus(self, dataset_id: str, **options: Any) -> dict[str, Any]:
        return dict(self.post("/v1/corpora", {"dataset_id": dataset_id, **options}))

    def create_model(self, corpus_id: str, **options: Any) -> dict[str, Any]:
        return dict(self.post("/v1/models", {"corpus_id": corpus_id, **options}))

    def set_visibility(self, model_id: str, visibility: str) -> dict[str, Any]:
        """Publish (`public`) or unpublish (`private`) a model."""
        return dict(self.patch(f"/v1/models/{model_id}", {"visibility": visibility}))

    def sample(self, model_id: str, **options: Any) -> dict[str, Any]:
        return dict(self.post(f"/v1/models/{model_id}/samples", options))

    def continue_midi(
        self, model_id: str, midi: bytes, *, wait: float = 60.0, **options: Any
    ) -> httpx.Response:
        """MIDI in, MIDI out (`POST /v1/models/{id}/continue`): the answer is 200 with the
        MIDI (a zip when `n` > 1) or 202 with the job still running; errors raise."""
        params = {k: v for k, v in options.items() if v is not None} | {"wait": wait}
        r = self.http.post(
            f"/v1/models/{model_id}/continue",
            params=params,
            content=midi,
            headers={"Content-Type": "audio/midi"},
            timeout=wait + 60,
        )
        return self._check(r)

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.get(f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self.post(f"/v1/jobs/{job_id}/cancel"))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600.0,
        poll: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it ends; returns its final JSON."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update:
                on_update(job)
            if job["state"] in TERMINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout:.0f} s")
            time.sleep(poll)
