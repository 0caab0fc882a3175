"""Errors to HTTP responses, in one place: Corral's error tree, the API's own refusals and invalid
requests. Bodies are `{"detail": text, "error": name}`; a 422 also names the field."""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..errors import (
    AgentNotFound,
    Conflict,
    CorralError,
    PayloadTooLarge,
    RunNotFound,
    SessionExists,
    SessionNotFound,
    StoreError,
    UserError,
)
from .auth import Unauthenticated
from .convert import InvalidInput

log = logging.getLogger("corral.api")


class ApiError(Exception):
    """A refusal of the API itself, with its HTTP status (and headers, e.g. Retry-After)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


class Busy(ApiError):
    """409: the thread has an active run and the request's strategy does not allow another."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)


class TooManyRuns(ApiError):
    """429: a cap on queued runs is reached; the client should come back after `retry_after`."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(429, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is over max_body_bytes ({limit} bytes)")


def status_of(exc: BaseException) -> int:
    """The HTTP status of a Corral error (first match in the tree wins)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


_STATUS: list[tuple[type[BaseException], int]] = [
    (Unauthenticated, 401),
    (RunNotFound, 404),
    (SessionNotFound, 404),
    (AgentNotFound, 404),
    (SessionExists, 409),
    (Conflict, 409),
    (PayloadTooLarge, 413),
    (InvalidInput, 422),
    (UserError, 422),
    (StoreError, 503),  # the store failed (or is unreachable): the request may succeed later
]


def _body(status: int, detail: Any, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, "error": error, **extra}, status_code=status)


def install(api: FastAPI) -> None:
    """Register the handlers on the FastAPI app."""

    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        response = _body(exc.status, str(exc), type(exc).__name__)
        response.headers.update(exc.headers)
        return response

    @api.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> JSONResponse:
        return _body(422, str(exc), "ValidationError", field=exc.field)

    @api.exception_handler(Unauthenticated)
    async def unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        response = _body(401, str(exc), "Unauthenticated")
        response.headers["WWW-Authenticate"] = "ApiKey header=x-api-key"
        return response

    @api.exception_handler(CorralError)
    async def corral_error(request: Request, exc: CorralError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc)
        response = _body(status, str(exc), type(exc).__name__)
        if status == 503:
            response.headers["Retry-After"] = "1"
        return response

    @api.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        return _body(422, errors, "ValidationError", message=f"{where}: {first['msg']}", field=where)

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        response = _body(exc.status_code, exc.detail, "HTTPException")
        if exc.headers:
            response.headers.update(exc.headers)
        return response
