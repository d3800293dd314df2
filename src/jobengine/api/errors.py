"""Errors on the wire: every failure becomes `{"error": {"code", "message"}}` with its status.

Domain errors map to client errors (404, 409, 422; `invalid_schedule` names
the schedule and the field); a database that cannot be reached is a 503;
anything else is a 500 that is logged, never a bare traceback. Endpoints
raise; the handlers here answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
import msgspec
import structlog
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Match

from jobengine.api.wire import ErrorBody, ErrorDetail
from jobengine.domain.errors import (
    DatabaseUnavailable,
    DuplicateJob,
    IllegalTransition,
    InvalidJob,
    InvalidLimit,
    InvalidSchedule,
    JobBusy,
    JobEngineError,
    JobNotFound,
)

_log = structlog.get_logger("jobengine.api")

#: The error codes, by HTTP status, used where nothing more precise applies.
STATUS_CODES: Mapping[int, str] = {
    400: "malformed_json",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_failed",
    500: "internal_error",
    503: "database_unavailable",
}

#: Database errors that mean "the database is not there (right now)", not "bad input".
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    DatabaseUnavailable,
    asyncpg.InterfaceError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


class ApiError(Exception):
    """Raised when a request must be answered with an error status and body."""

    def __init__(
        self, status: int, message: str, code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.code = code or STATUS_CODES.get(status, "error")
        self.message = message
        self.headers = dict(headers or {})
        super().__init__(message)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response encoded by msgspec."""
    return Response(
        msgspec.json.encode(body), status_code=status, headers=headers,
        media_type="application/json",
    )


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Response:
    """The one error shape: `{"error": {"code", "message"}}`."""
    return json_response(ErrorBody(error=ErrorDetail(code=code, message=message)), status, headers)


def _transition_message(exc: IllegalTransition) -> str:
    src = exc.src or "(insert)"
    where = f"job {exc.job_id}" if exc.job_id is not None else "the job"
    return f"{where} cannot move from {src} to {exc.dst}: the lifecycle does not allow it"


def api_error_for(exc: BaseException) -> ApiError | None:
    """The error response an exception stands for, or None for a genuine server error."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 404:
            return ApiError(404, "no such resource: see /openapi.json for the API's paths")
        if exc.status_code == 405:
            allowed = headers.get("Allow", "")
            return ApiError(405, f"method not allowed here; allowed: {allowed}", headers=headers)
        return ApiError(exc.status_code, str(exc.detail), headers=headers)
    if isinstance(exc, ClientDisconnect):
        return ApiError(400, "the client went away before the request body arrived", "bad_request")
    if isinstance(exc, JobNotFound):
        return ApiError(404, str(exc), "job_not_found")
    if isinstance(exc, IllegalTransition):
        return ApiError(409, _transition_message(exc), "illegal_transition")
    if isinstance(exc, JobBusy):
        return ApiError(409, str(exc), "job_busy")
    if isinstance(exc, DuplicateJob):
        return ApiError(409, str(exc), "duplicate_job")
    if isinstance(exc, InvalidJob):
        message = str(exc)
        if exc.field and exc.field not in message:
            message = f"{exc.field}: {message}"
        return ApiError(422, message, "validation_failed")
    if isinstance(exc, InvalidSchedule):
        return ApiError(422, str(exc), "invalid_schedule")
    if isinstance(exc, InvalidLimit):
        return ApiError(422, str(exc), "invalid_limit")
    if isinstance(exc, UNAVAILABLE):
        return ApiError(503, f"the database is unavailable: {exc or type(exc).__name__}")
    return None


async def handle_error(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: answer with the error body, logging server errors."""
    error = api_error_for(exc)
    if error is not None and error.status == 405:
        error = _method_not_allowed(request)
    if error is None:
        _log.error(
            "api.unhandled_error", method=request.method, path=request.url.path,
            error=repr(exc), exc_info=exc,
        )
        kind = "a database error" if isinstance(exc, asyncpg.PostgresError) else "an error"
        return error_response(500, "internal_error", f"the server hit {kind}; see its log")
    if error.status >= 500:
        _log.warning("api.unavailable", path=request.url.path, error=error.message)
    return error_response(error.status, error.code, error.message, error.headers)


def _method_not_allowed(request: Request) -> ApiError:
    """405 with an Allow header naming every method of every route on this path."""
    allowed: set[str] = set()
    for route in request.app.routes:
        match, _child = route.matches(request.scope)
        if match is not Match.NONE:
            allowed.update(getattr(route, "methods", None) or ())
    allow = ", ".join(sorted(allowed))
    return ApiError(
        405, f"{request.method} is not allowed here; allowed: {allow}", headers={"Allow": allow}
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def exception_handlers() -> dict[Any, Handler]:
    """The handlers to give `Starlette(exception_handlers=...)`.

    Keyed by class, so that 500s too get the JSON body (Starlette re-raises
    those afterwards, which lets the server log them once more).
    """
    keys: list[Any] = [
        ApiError, HTTPException, ClientDisconnect, JobEngineError, asyncpg.PostgresError,
        *UNAVAILABLE, Exception,
    ]
    return dict.fromkeys(keys, handle_error)
