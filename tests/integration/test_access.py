"""Nobody in where they don't belong: every route of a running API, probed with the wrong
keys, against real resources of one owner (dataset, file, corpus, trained model, checkpoint,
sample, job, key).

The walk reads the routes from the API's own OpenAPI document, so a route added later is
probed without touching this file (a new path parameter must be named in `ids` below, or the
walk fails saying which). The figures of each class of probe are printed for the reliability
notes (RELIABILITY.md).
"""

from __future__ import annotations

import json
import re
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from cadenza.client import Client
from cadenza.config import Settings
from cadenza.db.models import utcnow
from cadenza.db.repo import issue_api_key
from cadenza.db.session import session_scope
from cadenza.launch.stack import cadenza_command, create_key
from tests.support.stack import Stack, finished

pytestmark = pytest.mark.integration

METHODS = ("get", "post", "put", "patch", "delete")
# Routes open without a key: probes, metrics and the documentation.
OPEN = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}


def settings_of(stack: Stack) -> Settings:
    env = {k.removeprefix("CADENZA_").lower(): v for k, v in stack.env.items()}
    return Settings(**{k: v for k, v in env.items() if k in Settings.model_fields})


def cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cadenza_command(*args), env=stack.env, capture_output=True, text=True, timeout=120
    )


def key_id(client: Client, secret: str) -> str:
    return next(k["id"] for k in client.get("/v1/keys") if secret.startswith(k["prefix"]))


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def fill(path: str, ids: dict[str, str]) -> str:
    names = re.findall(r"{(\w+)}", path)
    missing = [n for n in names if n not in ids]
    assert not missing, f"{path}: name an owned resource for {missing} in `ids`"
    return path.format(**{n: ids[n] for n in names})


def body_for(
    op: dict[str, Any], spec: dict[str, Any], ids: dict[str, str], midi: bytes
) -> dict[str, Any]:
    """httpx arguments for the operation's body: its first example with every `…_id` field
    naming the owner's resource, or a small MIDI upload."""
    content = op.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        return {"files": [("files", ("a.mid", midi, "audio/midi"))]}
    if "application/json" not in content:
        return {}
    name = content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    example = dict(spec["components"]["schemas"][name]["examples"][0])
    for field, value in example.items():
        if field.endswith("_id") and isinstance(value, str):
            example[field] = ids[field.removeprefix("primer_").removeprefix("init_")]
    return {"json": example}


def probe(http: httpx.Client, method: str, url: str, headers: dict[str, str], **kw: Any) -> int:
    """The status of one request; the body is not read (downloads and streams stay unread)."""
    with http.stream(method, url, headers=headers, **kw) as r:
        return r.status_code


def make_resources(client: Client, chorales: list[Path]) -> dict[str, str]:
    """One of everything, owned by the client's owner, made as cheaply as real jobs allow."""
    ds = client.create_dataset("private")
    files = client.upload(ds["id"], chorales[:3])
    tokenize = finished(client, client.create_corpus(ds["id"], preset="remi-colab", seed=1))
    train = finished(
        client,
        client.create_model(
            tokenize["corpus_id"],
            architecture="music-transformer",
            preset="tiny",
            train={"max_steps": 2, "eval_interval": 2, "batch_size": 2, "seq_len": 32},
        ),
    )
    model = client.get(f"/v1/models/{train['model_id']}")
    sampling = finished(client, client.sample(model["id"], n=1, max_new_tokens=8, seed=1))
    return {
        "dataset_id": ds["id"],
        "file_id": files[0]["id"],
        "corpus_id": tokenize["corpus_id"],
        "model_id": model["id"],
        "checkpoint_id": model["checkpoints"][-1]["id"],
        "sample_id": sampling["sample_ids"][0],
        "job_id": train["id"],
    }


def test_every_route_refuses_other_owners_and_wrong_keys(
    stack: Stack, chorales: list[Path]
) -> None:
    midi = chorales[3].read_bytes()
    owner_a = f"access-a-{stack.data_dir.name}"
    alice = Client(stack.api_url, create_key(stack.env, owner_a))
    ids = make_resources(alice, chorales)
    secret_a = alice.http.headers["Authorization"].removeprefix("Bearer ")
    ids["key_id"] = key_id(alice, secret_a)
    ids["name"] = owner_a  # /v1/admin/owners/{name}/limits

    read_only = create_key(stack.env, owner_a, "--scopes", "read")
    other = create_key(stack.env, f"access-b-{stack.data_dir.name}")
    with session_scope(settings_of(stack).resolved_database_url) as s:
        _, expired = issue_api_key(
            session=s, owner_name=owner_a, expires_at=utcnow() - timedelta(seconds=1)
        )
    revoked = create_key(stack.env, owner_a, "--name", "to revoke")
    revoked_id = key_id(alice, revoked)
    assert Client(stack.api_url, revoked).get("/v1/datasets") is not None  # cached now
    # Revoked through the API process that cached it: refused at once.
    assert alice.delete(f"/v1/keys/{revoked_id}")["revoked_at"]

    http = httpx.Client(base_url=stack.api_url, timeout=60)
    spec = http.get("/openapi.json").json()
    ops = operations(spec)
    owned = set(ids.values())
    counts: dict[str, int] = {}
    failures: list[str] = []

    def expect(kind: str, method: str, path: str, key: str | None, ok: set[int]) -> None:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        op = next(o for m, p, o in ops if (m, p) == (method, path))
        url = fill(path, ids)
        status = probe(http, method, url, headers, **body_for(op, spec, ids, midi))
        counts[kind] = counts.get(kind, 0) + 1
        if status not in ok:
            failures.append(f"{kind}: {method} {url} answered {status}, expected {sorted(ok)}")

    for method, path, _ in ops:
        if not path.startswith("/v1/"):
            assert path in OPEN, f"{path} is outside /v1 but not a probe: does it need a key?"
            continue
        expect("no key → 401", method, path, None, {401})
        expect("expired key → 401", method, path, expired, {401})
        expect("revoked key → 401", method, path, revoked, {401})
        if method != "GET":
            expect("read-only key, not GET → 403", method, path, read_only, {403})
        elif not path.startswith("/v1/admin/") and not path.endswith(("/audio", ".png")):
            # (renderings are left out: a GET there would queue a render job)
            expect("read-only key, GET → 200", method, path, read_only, {200})
        if path.startswith("/v1/admin/"):
            expect("other owner, admin route → 403", method, path, other, {403})
        elif "{" in path or method == "POST" and path in ("/v1/corpora", "/v1/models"):
            expect("other owner, A's id → 404", method, path, other, {404})
    # Another owner's lists and key list show nothing of A's.
    for method, path, _ in ops:
        if method == "GET" and path.startswith("/v1/") and "{" not in path and "admin" not in path:
            r = http.get(path, headers={"Authorization": f"Bearer {other}"})
            counts["other owner, list → nothing of A's"] = (
                counts.get("other owner, list → nothing of A's", 0) + 1
            )
            if r.status_code != 200 or any(i in r.text for i in owned):
                failures.append(f"list {path} as B: {r.status_code} {r.text[:200]}")
    # The documentation and the probes stay open.
    for path in sorted(OPEN):
        counts["open route, no key → 200"] = counts.get("open route, no key → 200", 0) + 1
        if http.get(path).status_code != 200:
            failures.append(f"{path} without a key: not 200")
    print("\naccess probes:", json.dumps(counts, indent=1, ensure_ascii=False))
    assert not failures, "\n".join(failures)

    # Nothing of A's was touched by any of it.
    assert alice.get(f"/v1/models/{ids['model_id']}")["state"] == "ready"
    assert alice.get(f"/v1/datasets/{ids['dataset_id']}")["file_count"] == 3
    assert alice.get(f"/v1/jobs/{ids['job_id']}")["state"] == "succeeded"


def test_keys_cli_scopes_expiry_list_and_revoke(embedded_stack: Stack) -> None:
    stack = embedded_stack
    made = cli(stack, "keys", "create", "--owner", "cli-keys", "--scopes", "read", "--name", "ci",
               "--expires-in", "1h")  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("cz_") and "\n" not in secret  # stdout is the key alone
    kid = re.search(r"key (\w+) for cli-keys", made.stderr).group(1)  # type: ignore[union-attr]

    listed = cli(stack, "keys", "list", "--owner", "cli-keys", "--json")
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["name"], r["scopes"]) for r in rows] == [(kid, "ci", ["read"])]
    assert rows[0]["expires_at"] and rows[0]["revoked_at"] is None
    assert secret not in listed.stdout and secret[10:] not in listed.stdout
    table = cli(stack, "keys", "list", "--owner", "cli-keys").stdout
    assert kid in table and secret[10:] not in table

    client = Client(stack.api_url, secret)
    assert client.http.get("/v1/datasets").status_code == 200
    r = client.http.post("/v1/datasets", json={"name": "no"})
    assert r.status_code == 403 and "'write'" in r.json()["error"]["message"]

    # A key revoked by the CLI before any API process cached it is refused at once.
    unused = cli(stack, "keys", "create", "--owner", "cli-keys")
    unused_id = re.search(r"key (\w+) for", unused.stderr).group(1)  # type: ignore[union-attr]
    assert cli(stack, "keys", "revoke", unused_id).returncode == 0
    r = httpx.get(
        f"{stack.api_url}/v1/datasets", headers={"Authorization": f"Bearer {unused.stdout.strip()}"}
    )
    assert r.status_code == 401 and "revoked" in r.json()["error"]["message"]
    rows = json.loads(cli(stack, "keys", "list", "--owner", "cli-keys", "--json").stdout)
    assert {r["id"]: bool(r["revoked_at"]) for r in rows} == {kid: False, unused_id: True}
    # The owner-wide revoke still works, and an unknown id is an error.
    assert "revoked 1 key(s)" in cli(stack, "keys", "revoke", "--owner", "cli-keys").stderr
    missing = cli(stack, "keys", "revoke", "0" * 32)
    assert missing.returncode == 1 and "no key" in missing.stderr

    bad = cli(stack, "keys", "create", "--owner", "cli-keys", "--scopes", "read,root")
    assert bad.returncode != 0 and "'root'" in bad.stderr
    bad = cli(stack, "keys", "create", "--owner", "cli-keys", "--expires-in", "soon")
    assert bad.returncode != 0 and "30d" in bad.stderr
