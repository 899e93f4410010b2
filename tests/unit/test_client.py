"""The HTTP client's retry of a GET answered 503 + Retry-After (and nothing else)."""

from __future__ import annotations

import httpx
import pytest

from cadenza import client as client_mod
from cadenza.client import ApiFailure, Client


def scripted(answers: list[httpx.Response], calls: list[str]) -> Client:
    c = Client("http://api.test", "cz_key")

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        return answers.pop(0)

    c.http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler))
    return c


def unavailable(retry_after: str | None = "0") -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    body = {"error": {"code": "unavailable", "message": "the database does not answer"}}
    return httpx.Response(503, json=body, headers=headers)


def test_a_get_is_retried_after_a_503_with_retry_after(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(client_mod.time, "sleep", waits.append)
    calls: list[str] = []
    c = scripted([unavailable("2"), unavailable("60"), httpx.Response(200, json={"ok": 1})], calls)
    assert c.get("/v1/jobs/x") == {"ok": 1}
    assert calls == ["GET"] * 3
    assert waits == [2.0, client_mod.MAX_RETRY_WAIT_S]  # the named wait, capped


def test_retries_are_bounded_and_then_the_failure_is_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(client_mod.time, "sleep", lambda _: None)
    calls: list[str] = []
    c = scripted([unavailable() for _ in range(client_mod.GET_RETRIES + 1)], calls)
    with pytest.raises(ApiFailure) as err:
        c.get("/v1/jobs/x")
    assert err.value.status == 503 and err.value.code == "unavailable"
    assert len(calls) == client_mod.GET_RETRIES + 1


def test_no_retry_without_retry_after_nor_for_a_post(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_mod.time, "sleep", lambda _: None)
    calls: list[str] = []
    c = scripted([unavailable(None)], calls)
    with pytest.raises(ApiFailure):
        c.get("/v1/jobs/x")
    c = scripted([unavailable()], calls)
    with pytest.raises(ApiFailure):
        c.post("/v1/datasets", {"name": "x"})  # a POST may have taken effect: never repeated
    assert calls == ["GET", "POST"]
