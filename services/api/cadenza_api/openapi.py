"""What the OpenAPI document says beyond the routes' types: operation ids, error answers,
binary bodies and the upload form.

Users generate clients from `/openapi.json` and read `/docs`, so the document is a contract:
every status a route can answer with is declared with its body, every binary body with its
media type. The routes pass these declarations to their decorators (`**describe(...)`,
`openapi_extra=`); nothing here changes what a route does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response

from cadenza.render import MEDIA_TYPES
from cadenza_api.schemas import Error, JobOut

Responses = dict[int | str, dict[str, Any]]

# What each status means in this API; a route's description says what it means there.
ERRORS: dict[int, str] = {
    400: "The body is malformed (not UTF-8 JSON, not valid multipart, a broken zip, an empty "
    "file, no file).",
    401: "No API key, or a wrong, revoked or expired one: send `Authorization: Bearer <key>` "
    "(make one with `cadenza keys create --owner NAME`).",
    403: "The key lacks the scope this operation needs (`read` for GET, `write` for other "
    "methods, `train` to train, `admin` for /v1/admin); the message names it and the key's.",
    404: "Not found for this API key (another owner's resources are not found either).",
    409: "The request is valid but does not fit the stored state; the message says what to do "
    "first.",
    413: "Too large: the request, a file, a zip's contents or the number of files is over a limit.",
    415: "Not `multipart/form-data`, or a file that is neither MIDI nor a supported audio format.",
    422: "A parameter is invalid: `error.message` names the fields, `error.details` lists each.",
    429: "Rate limited (code `rate_limited`): too many job submissions or uploads in a short "
    "time. Retry after `Retry-After` seconds; `GET /v1/limits` shows your rates.",
    503: "Busy (code `busy`: every database slot is taken) or the database does not answer "
    "(code `unavailable`). Retry after `Retry-After` seconds.",
}


def errors(*statuses: int) -> Responses:
    """`responses=` entries answering `statuses` with the `Error` body."""
    return {s: {"model": Error, "description": ERRORS[s]} for s in statuses}


# Every /v1 route needs a key (401) with a scope (403), takes a path, query or body parameter
# that FastAPI validates (422), and waits for a database slot (503): the routers declare these
# for all their routes.
V1_ERRORS = errors(401, 403, 422, 503)


def describe(
    operation_id: str, summary: str, *statuses: int, ok: Responses | None = None
) -> dict[str, Any]:
    """The decorator arguments that document one operation: its id (`resource_action`, the
    name generated clients give the call), its one-line summary, and its responses: `ok` when
    the success is not the route's JSON model, then the error `statuses`."""
    described: dict[str, Any] = {"operation_id": operation_id, "summary": summary}
    if ok is not None:  # the route returns a Response itself; this only keeps JSON off the 200
        described["response_class"] = Response
    return described | {"responses": (ok or {}) | errors(*statuses)}


# How binary parts and bodies are typed: a string of bytes (generators map it to a file type).
BINARY: dict[str, str] = {"type": "string", "format": "binary"}


def binary(description: str, *media_types: str) -> Responses:
    """A 200 whose body is raw bytes served as any of `media_types`."""
    content = {t: {"schema": BINARY} for t in media_types}
    return {200: {"description": description, "content": content}}


def rendering(description: str, *media_types: str) -> Responses:
    """The two successes of a rendering route (`cadenza_api.rendered`): 200 with the bytes when
    they are cached, else 202 with the render job making them."""
    job = {
        "model": JobOut,
        "description": "Not rendered yet: a render job is making it. Poll the job (its URL is in "
        "`Location`), then GET this again.",
    }
    return binary(description, *media_types) | {202: job}


# The bodies that are not JSON. A stored file is MIDI or audio, and its download is typed by
# what it is (the table in cadenza.render); exports are plain bytes.
STORED_FILE = binary(
    "The stored bytes, typed by what the file is.",
    *(t for t in dict.fromkeys(MEDIA_TYPES.values()) if t.startswith("audio/")),
)
MIDI = binary("A Standard MIDI File.", MEDIA_TYPES["mid"])
PNG = binary("A PNG image.", MEDIA_TYPES["png"])
NPZ = binary("A NumPy `.npz` archive.", "application/octet-stream")
CHECKPOINT = binary("A PyTorch checkpoint (`.pt`).", "application/octet-stream")
SAFETENSORS = binary("Weights in safetensors format.", "application/octet-stream")
AUDIO_RENDERING = rendering(
    "The audio (MP3 or WAV, as asked).", MEDIA_TYPES["mp3"], MEDIA_TYPES["wav"]
)
PIANOROLL_RENDERING = rendering("The piano roll as a PNG.", MEDIA_TYPES["png"])
EVENT_STREAM: Responses = {
    200: {
        "description": "Server-Sent Events: one per progress event, then `end` with the state.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

# The upload route reads its body with a streaming parser (cadenza_api.upload), so FastAPI
# cannot see the form; this declares it for `/docs` and client generators.
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {
                            "type": "array",
                            "items": BINARY,
                            "description": "One part per file (MIDI, audio, or a zip of them), "
                            "all with the field name `files`.",
                        }
                    },
                }
            }
        },
    }
}


def install(app: FastAPI) -> None:
    """Serve the document with each operation's responses in status order (successes first):
    the routers declare 401 and 422 for all their routes, which would otherwise come first.
    Completed here for every route, present and future: the 400 of a JSON body that cannot be
    decoded, and the links from what a call returns to the calls that take its id."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            operations = [op for item in document["paths"].values() for op in item.values()]
            for op in operations:
                if "application/json" in op.get("requestBody", {}).get("content", {}):
                    op["responses"].setdefault("400", _error_response(400))
                op["responses"] = dict(sorted(op["responses"].items()))
            _link(document)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def _error_response(status: int) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": ERRORS[status], "content": {"application/json": {"schema": schema}}}


def _link(document: dict[str, Any]) -> None:
    """Add OpenAPI links from each success that returns a resource (`XOut`; or, from a POST, a
    list of them or an object holding one) to every other operation with an `{x_id}` path
    parameter, so clients and stateful fuzzers know which call's output feeds which path."""
    schemas = document["components"]["schemas"]
    takers: dict[str, list[str]] = {}  # path parameter -> operation ids that take it
    for path, item in document["paths"].items():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["in"] == "path" and f"{{{param['name']}}}" in path:
                    takers.setdefault(param["name"], []).append(op["operationId"])
    for item in document["paths"].values():
        for method, op in item.items():
            for status, response in op["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                found = _returned_id(schema, schemas) if status.startswith("2") else None
                # A list read may be empty; a list a POST made (the upload's files) is not.
                if found is None or (method == "get" and found[1] != "/id"):
                    continue
                param, pointer = found
                response["links"] = {
                    target: {
                        "operationId": target,
                        "parameters": {param: f"$response.body#{pointer}"},
                    }
                    for target in takers.get(param, [])
                    if target != op["operationId"]
                }
                if not response["links"]:
                    del response["links"]


def _returned_id(schema: dict[str, Any] | None, schemas: dict[str, Any]) -> tuple[str, str] | None:
    """(path parameter, JSON pointer to its value) for a body holding a resource: `XOut` gives
    `x_id` at `/id`; a list of them, or an object with one such list, the first one's id."""
    if not schema:
        return None
    name = _out_name(schema)
    if name is not None:
        return f"{name}_id", "/id"
    if schema.get("type") == "array":
        name = _out_name(schema.get("items", {}))
        return (f"{name}_id", "/0/id") if name else None
    ref = schema.get("$ref", "")
    properties = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}) if ref else {}
    for key, prop in properties.items():
        name = _out_name(prop.get("items", {})) if prop.get("type") == "array" else None
        if name is not None:
            return f"{name}_id", f"/{key}/0/id"
    return None


def _out_name(schema: dict[str, Any]) -> str | None:
    """`dataset` for a reference to `DatasetOut` (snake case of the resource), else None."""
    ref = schema.get("$ref", "").rsplit("/", 1)[-1]
    if not ref.endswith("Out") or ref == "DeletedOut":
        return None
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in ref[:-3]).lstrip("_")
