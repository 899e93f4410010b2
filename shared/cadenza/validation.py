"""Errors that parameters raise for a person to fix, shared by the API, the CLI and the jobs.

Domain code (params models, resolvers) raises these instead of HTTP errors, so the same rule
gives the same message whether it is hit by a REST request, a CLI call or a job. The API turns
`InvalidParams` into a 422 and `Conflict` into a 409, each with its `code`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class InvalidParams(ValueError):
    """A parameter is wrong; the message names the field (`crop.positions: …`)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_request",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.details = details or []

    @classmethod
    def from_validation(
        cls, prefix: str, exc: ValidationError, code: str | None = None
    ) -> InvalidParams:
        """Wrap pydantic's errors for request field `prefix` (a nested model validated later)."""
        errors = [{**e, "loc": (prefix, *e["loc"])} for e in exc.errors()]
        message, details = validation_message(errors)
        return cls(message, code=code or f"invalid_{prefix}", details=details)


class Conflict(Exception):
    """The request is well formed but does not fit the stored state (say, another tokenizer)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) or "request"


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """One readable line naming up to five fields, plus every error as {field, message}."""
    details = [{"field": _field_path(tuple(e.get("loc", ()))), "message": e["msg"]} for e in errors]
    text = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
    return f"invalid request: {text}", details
