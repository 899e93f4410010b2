"""What the OpenAPI document says beyond the routes' types: error answers, binary bodies and the
upload form.

Users generate clients from `/openapi.json`, so the document is a contract: every status a route
can answer with is declared there with its body, and every binary body with its media type. The
routes pass these declarations to their decorators (`responses=`, `openapi_extra=`); nothing
here changes what a route does.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from cadenza.render import MEDIA_TYPES
from cadenza_api.schemas import Error, JobOut

Responses = dict[int | str, dict[str, Any]]

# What each status means in this API; a route may say more about its own case (`why=`).
ERRORS: dict[int, str] = {
    400: "The body is malformed (not valid multipart, a broken zip, an empty file, no file).",
    401: "No API key, or a wrong or revoked one: send `Authorization: Bearer <key>` "
    "(make one with `cadenza keys create --owner NAME`).",
    404: "Not found for this API key (another owner's resources are not found either).",
    409: "The request is valid but does not fit the stored state; the message says what to do "
    "first.",
    413: "Too large: the request, a file, a zip's contents or the number of files is over a limit.",
    415: "Not `multipart/form-data`, or a file that is neither MIDI nor a supported audio format.",
    422: "A parameter is invalid: `error.message` names the fields, `error.details` lists each.",
}

# How binary parts and bodies are typed: a string of bytes (generators map it to a file type).
BINARY: dict[str, str] = {"type": "string", "format": "binary"}

# Stored files are MIDI or audio; their download says which (the table in cadenza.render).
FILE_MEDIA_TYPES = tuple(t for t in dict.fromkeys(MEDIA_TYPES.values()) if t.startswith("audio/"))
AUDIO_RENDER_MEDIA_TYPES = (MEDIA_TYPES["mp3"], MEDIA_TYPES["wav"])


def errors(*statuses: int, why: dict[int, str] | None = None) -> Responses:
    """`responses=` entries answering `statuses` with the `Error` body.

    `why` replaces the generic description of a status with the route's own cases.
    """
    why = why or {}
    return {s: {"model": Error, "description": why.get(s, ERRORS[s])} for s in statuses}


# Every /v1 route needs a key, and every one takes a path, query or body parameter that
# FastAPI validates (422): the routers declare both once for all their routes.
V1_ERRORS = errors(401, 422)


def binary(description: str, *media_types: str, status: int = 200) -> Responses:
    """A `responses=` entry for a body of raw bytes served as any of `media_types`."""
    return {
        status: {
            "description": description,
            "content": {t: {"schema": BINARY} for t in media_types},
        }
    }


EVENT_STREAM: Responses = {
    200: {
        "description": "Server-Sent Events: one per progress event, then `end` with the state.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


def rendering(description: str, *media_types: str) -> Responses:
    """The two successes of a rendering route (`cadenza_api.rendered`): 200 with the bytes when
    they are cached, else 202 with the render job making them."""
    return binary(description, *media_types) | {
        202: {
            "model": JobOut,
            "description": "Not rendered yet: a render job is making it. Poll the job (its URL "
            "is in `Location`), then GET this again.",
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
    the routers declare 401 and 422 for all their routes, which would otherwise come first."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            for item in build()["paths"].values():
                for op in item.values():
                    op["responses"] = dict(sorted(op["responses"].items()))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
