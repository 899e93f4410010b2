"""One error shape for every failure: `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from cadenza.db.repo import NotFound
from cadenza.limits import RateLimited
from cadenza.validation import Conflict, InvalidParams, validation_message


class ApiError(Exception):
    """An error with an HTTP status, a stable code and a message a person can act on."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra


RETRY_AFTER_SECONDS = 1


log = logging.getLogger("cadenza.api")

# Seconds a client should wait before retrying while the database does not answer.
UNAVAILABLE_RETRY_SECONDS = 5


def busy(what: str) -> ApiError:
    """503 + Retry-After: the server is saturated right now; the same request later succeeds."""
    return ApiError(
        503,
        "busy",
        f"the server is busy ({what}); retry in {RETRY_AFTER_SECONDS} s",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, **exc.extra),
            status_code=exc.status,
            headers=exc.headers,
        )

    @app.exception_handler(PoolTimeout)
    async def _pool_timeout(request: Request, _: PoolTimeout) -> JSONResponse:
        return await _api_error(request, busy("no database connection free"))

    @app.exception_handler(DBAPIError)
    async def _database_down(_: Request, exc: DBAPIError) -> JSONResponse:
        # A lost or refused connection is transient: say so, and keep the SQL, its parameters
        # and the server's address out of the answer (they go to the log).
        if _is_nul_text(exc):
            return JSONResponse(error_body("invalid_request", NUL_MESSAGE), status_code=422)
        if not exc.connection_invalidated and not _is_unreachable(exc):
            return await _internal(_, exc)
        log.warning("database unavailable: %s", exc)
        return JSONResponse(
            error_body("unavailable", "the database does not answer; retry shortly"),
            status_code=503,
            headers={"Retry-After": str(UNAVAILABLE_RETRY_SECONDS)},
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        # The traceback is for the log; the client gets the one error shape and nothing of
        # the server's code, SQL or paths.
        log.error("unhandled error", exc_info=(type(exc), exc, exc.__traceback__))
        return JSONResponse(
            error_body("internal_error", "the server failed to answer this request"),
            status_code=500,
        )

    @app.exception_handler(InvalidParams)
    async def _invalid_params(_: Request, exc: InvalidParams) -> JSONResponse:
        extra = {"details": exc.details} if exc.details else {}
        return JSONResponse(error_body(exc.code, exc.message, **extra), status_code=422)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=409)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message),
            status_code=429,
            headers={"Retry-After": exc.retry_after},
        )

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse(error_body("not_found", str(exc)), status_code=404)

    # A request body FastAPI could not parse, or a params model built inside a route (after
    # the resources it names were found): the same 422 naming each field.
    @app.exception_handler(RequestValidationError)
    @app.exception_handler(ValidationError)
    async def _invalid(_: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
        message, details = validation_message(list(exc.errors()))
        return JSONResponse(
            error_body("invalid_request", message, details=details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers
        )


def _is_unreachable(exc: DBAPIError) -> bool:
    """Whether a driver error means "no database to talk to" rather than a bad statement."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, OperationalError | InterfaceError)


# PostgreSQL text cannot hold U+0000 (its driver refuses the statement); SQLite can. Any text a
# request carries (a name, a query, an id in the path) may hold it, so this is answered here,
# once for every route, as the client's mistake.
NUL_MESSAGE = "text cannot contain the NUL character (U+0000); remove it and retry"


def _is_nul_text(exc: DBAPIError) -> bool:
    """Whether the driver refused a statement because a text parameter holds U+0000."""
    from sqlalchemy.exc import DataError

    return isinstance(exc, DataError) and "NUL (0x00)" in str(exc.orig)
