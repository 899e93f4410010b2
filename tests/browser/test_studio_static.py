"""The studio's files as the API serves them (no browser): where, with which headers, and
that nothing in them points at another origin (the service must work offline)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from cadenza.config import Settings
from cadenza_api.app import create_app
from cadenza_api.studio import STATIC_DIR


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("studio"))))


def test_served_at_studio_without_a_key_with_a_strict_policy(client: TestClient) -> None:
    r = client.get("/studio", follow_redirects=False)
    assert r.status_code in (307, 308) and r.headers["location"].endswith("/studio/")
    r = client.get("/studio/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["cache-control"] == "no-cache"
    assert client.get("/studio/nope.js").status_code == 404
    assert client.get("/studio/../app.py").status_code == 404


def test_every_referenced_file_is_served_with_its_type(client: TestClient) -> None:
    index = client.get("/studio/").text
    refs = re.findall(r'(?:src|href)="([^"#:.][^"#:]*)"', index)  # not ../docs
    for name in [p.name for p in STATIC_DIR.glob("*.js")]:
        text = (STATIC_DIR / name).read_text()
        refs += re.findall(r'from "\./([^"]+)"', text) + re.findall(r"import\('/([^']+)'\)", text)
    assert {"app.js", "studio.css"} <= set(refs)
    types = {".js": "text/javascript", ".css": "text/css"}
    for ref in set(refs):
        r = client.get(f"/studio/{ref}")
        assert r.status_code == 200, ref
        assert r.headers["content-type"].startswith(types[Path(ref).suffix]), ref


def test_nothing_points_at_another_origin() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        # The SVG namespace is a name, not a request.
        urls = set(re.findall(r"https?://[^\s\"'`)]+", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{path.name} refers to {urls}"


def test_not_an_operation_of_the_api(client: TestClient) -> None:
    assert not [p for p in client.get("/openapi.json").json()["paths"] if "studio" in p]
