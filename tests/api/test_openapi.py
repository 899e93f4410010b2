"""The OpenAPI document as a contract for generated clients and `/docs`: auth, operation ids,
the upload form, error bodies, binary media types and request examples.

A generated client is only as good as the document, so each rule a client relies on is checked
over every operation (tests/integration/test_openapi_client.py drives a generated client)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from cadenza.config import Settings
from cadenza.db.migrate import upgrade
from cadenza.db.repo import create_api_key
from cadenza.db.session import session_scope
from cadenza_api import schemas
from cadenza_api.app import create_app

METHODS = {"get", "post", "put", "patch", "delete"}
ERROR_REF = "#/components/schemas/Error"
BINARY = {"type": "string", "format": "binary"}

# Every route whose success is raw bytes, with the media types it answers with.
BINARY_ROUTES = {
    ("get", "/v1/files/{file_id}/content"): {"audio/midi", "audio/wav", "audio/mpeg"},
    ("get", "/v1/files/{file_id}/audio"): {"audio/mpeg", "audio/wav"},
    ("get", "/v1/files/{file_id}/pianoroll.png"): {"image/png"},
    ("get", "/v1/corpora/{corpus_id}/export.npz"): {"application/octet-stream"},
    ("get", "/v1/models/{model_id}/checkpoints/{checkpoint_id}"): {"application/octet-stream"},
    ("get", "/v1/models/{model_id}/loss.png"): {"image/png"},
    ("get", "/v1/models/{model_id}/weights.safetensors"): {"application/octet-stream"},
    ("get", "/v1/samples/{sample_id}/midi"): {"audio/midi"},
    ("get", "/v1/samples/{sample_id}/audio"): {"audio/mpeg", "audio/wav"},
    ("get", "/v1/samples/{sample_id}/pianoroll.png"): {"image/png"},
}
RENDER_ROUTES = [k for k in BINARY_ROUTES if k[1].endswith(("/audio", "/pianoroll.png"))]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path)
    upgrade(s.resolved_database_url)
    return s


@pytest.fixture
def spec(settings: Settings) -> dict[str, Any]:
    doc: dict[str, Any] = TestClient(create_app(settings)).get("/openapi.json").json()
    return doc


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def test_bearer_scheme_is_declared_and_applied_to_every_v1_operation(
    spec: dict[str, Any],
) -> None:
    schemes = spec["components"]["securitySchemes"]
    bearer = [name for name, s in schemes.items() if s == s | {"type": "http", "scheme": "bearer"}]
    assert len(bearer) == 1, schemes
    for method, path, op in operations(spec):
        if path.startswith("/v1/"):
            assert op.get("security") == [{bearer[0]: []}], (method, path)
            for status in ("401", "403", "422", "503"):  # no key, no scope, bad parameter, no slot
                content = op["responses"][status]["content"]
                assert content["application/json"]["schema"] == {"$ref": ERROR_REF}
        else:  # health checks and metrics are open to probes
            assert "security" not in op, (method, path)


def test_operation_ids_are_resource_action_and_unique(spec: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(spec)]
    assert len(ids) == len(set(ids))
    for method, path, op in operations(spec):
        oid = op["operationId"]
        assert re.fullmatch(r"[a-z]+_[a-z_]+", oid), (method, path, oid)
        assert oid.split("_")[0] == op["tags"][0], (oid, op["tags"])  # grouped by resource
        assert op.get("summary") and op.get("description"), oid
    assert {"datasets_create", "datasets_upload_files", "samples_get_midi"} <= set(ids)


def test_upload_declares_a_multipart_array_of_binary_files(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/v1/datasets/{dataset_id}/files"]["post"]
    body = op["requestBody"]
    assert body["required"] is True and list(body["content"]) == ["multipart/form-data"]
    schema = body["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == ["files"]
    assert schema["properties"]["files"]["type"] == "array"
    assert schema["properties"]["files"]["items"] == BINARY
    assert {"400", "404", "413", "415"} <= set(op["responses"])


def test_every_error_response_is_the_error_schema(spec: dict[str, Any]) -> None:
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorInfo"]
    assert set(error["required"]) == {"code", "message"} and "details" in error["properties"]
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if status.startswith("4") or (status == "503" and path.startswith("/v1/")):
                content = response["content"]
                assert content == {"application/json": {"schema": {"$ref": ERROR_REF}}}, (
                    method,
                    path,
                    status,
                )
        assert list(op["responses"]) == sorted(op["responses"]), (method, path)  # 2xx first
        if "{" in path:
            assert "404" in op["responses"], (method, path)
        if method == "post" and "requestBody" in op:
            assert "422" in op["responses"], (method, path)


def test_binary_routes_declare_their_media_types(spec: dict[str, Any]) -> None:
    for (method, path), media_types in BINARY_ROUTES.items():
        content = spec["paths"][path][method]["responses"]["200"]["content"]
        assert media_types <= set(content), (path, set(content))
        assert all(c["schema"] == BINARY for c in content.values()), path
    events = spec["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]


def test_render_routes_declare_both_the_bytes_and_the_job(spec: dict[str, Any]) -> None:
    for method, path in RENDER_ROUTES:
        responses = spec["paths"][path][method]["responses"]
        assert "application/json" not in responses["200"]["content"]
        job = responses["202"]["content"]["application/json"]["schema"]
        assert job == {"$ref": "#/components/schemas/JobOut"}
        assert "409" in responses and "404" in responses


def test_request_bodies_carry_examples_that_validate(spec: dict[str, Any]) -> None:
    """Every JSON request body shows a user an example, and each example is accepted."""
    names: set[str] = set()
    for _, _, op in operations(spec):
        json_body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if json_body:
            names.add(json_body["schema"]["$ref"].rsplit("/", 1)[1])
    assert names == {
        "DatasetCreate",
        "CorpusRequest",
        "ModelRequest",
        "ModelPatch",
        "SampleRequest",
        "AudioJobRequest",
        "KeyCreate",
        "OwnerLimits",
        "TagsPatch",
    }
    for name in names:
        model: type[BaseModel] = getattr(schemas, name)
        examples = spec["components"]["schemas"][name]["examples"]
        assert examples
        for example in examples:
            model.model_validate(example)


def test_bearer_parsing_keeps_its_answers(settings: Settings) -> None:
    """The scheme is case-insensitive and the key may be padded; anything else gets a hint."""
    with session_scope(settings.resolved_database_url) as s:
        _, key = create_api_key(session=s, owner_name="alice")
    client = TestClient(create_app(settings))
    for header in (f"Bearer {key}", f"bearer   {key}  "):
        assert client.get("/v1/datasets", headers={"Authorization": header}).status_code == 200
    for header in (f"Basic {key}", "Bearer", "Bearer   ", key):
        r = client.get("/v1/datasets", headers={"Authorization": header})
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        assert "cadenza keys create" in r.json()["error"]["message"]
    r = client.get("/v1/datasets")
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]


def test_generator_config_reads_every_binary_media_type(spec: dict[str, Any]) -> None:
    """docs/openapi-python-client.yaml maps each binary media type the document declares to
    bytes; one missing would be a download the generated client cannot read."""
    config = Path(__file__).parents[2] / "docs" / "openapi-python-client.yaml"
    mapped = set(re.findall(r"^  (\S+): application/octet-stream$", config.read_text(), re.M))
    declared = {
        media_type
        for _, _, op in operations(spec)
        for response in op["responses"].values()
        for media_type in response.get("content", {})
        if media_type != "application/octet-stream"
        and response["content"][media_type].get("schema") == BINARY
    }
    assert declared and declared <= mapped, declared - mapped
