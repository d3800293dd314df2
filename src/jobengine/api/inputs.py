"""What an endpoint takes in: the app's dependencies, JSON bodies, query parameters, path ids.

`context(request)` gives the store, settings and event hub every endpoint
shares. Each reader turns bad input into an `ApiError` with the right status
before anything reaches the database: 413 for a body over the limit (by
Content-Length and by the bytes actually streamed), 415 for a body that is
not JSON, 400 for malformed JSON, 422 for a field that fails validation.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import anyio
import msgspec
from starlette.requests import Request

from jobengine.api.config import HttpSettings
from jobengine.api.errors import ApiError
from jobengine.api.hub import EventHub
from jobengine.api.wire import MAX_BIGINT, NAME_PATTERN
from jobengine.store import JobStore

#: A callback that reports extra readiness checks by name (e.g. the daemon's listener).
Readiness = Callable[[], Awaitable[dict[str, bool]]]


@dataclass
class ApiContext:
    """The API's dependencies, kept on `app.state.jobengine`."""

    store: JobStore
    http: HttpSettings
    hub: EventHub
    readiness: Readiness | None = None
    #: how long an event stream waits for a notification before it polls anyway
    poll_interval: float = 1.0
    #: how often an idle event stream sends a keepalive comment
    keepalive: float = 15.0
    #: set when the server is stopping: event streams end, so that it can
    closing: anyio.Event = field(default_factory=anyio.Event)


def context(request: Request) -> ApiContext:
    """The `ApiContext` of the app serving `request`."""
    ctx: ApiContext = request.app.state.jobengine
    return ctx


T = TypeVar("T")
E = TypeVar("E", bound=Enum)

_JSON_MEDIA = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
_AT_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")


def is_json_media_type(content_type: str | None) -> bool:
    """Tell whether a Content-Type names JSON (`application/json`, `...+json`, any charset)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return bool(_JSON_MEDIA.match(media))


def check_content_length(request: Request, max_bytes: int) -> None:
    """413 at once when the declared Content-Length is over `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, or 413 once it is (declared or found) longer than `max_bytes`."""
    check_content_length(request, max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, f"request body is over the limit of {max_bytes} bytes")


def validation_message(exc: msgspec.ValidationError) -> str:
    """msgspec's message with the field first: "priority: Expected `int`, got `str`"."""
    text = str(exc)
    match = _AT_PATH.search(text)
    if match is None:
        return text
    path = match.group("path") or "body"
    return f"{path}: {text[: match.start()]}"


def integral_floats_to_int(value: Any, verbatim: frozenset[str] = frozenset()) -> Any:
    """Turn floats without a fraction (`3.0`, `1e3`) into ints, as JSON Schema reads them.

    JSON has one number type: a client may well send `"priority": 5.0`. Keys
    in `verbatim` (e.g. a job's payload, which is the user's data) are left as sent.
    """
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [integral_floats_to_int(v) for v in value]
    if isinstance(value, dict):
        return {k: v if k in verbatim else integral_floats_to_int(v) for k, v in value.items()}
    return value


def find_nul(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding U+0000, which PostgreSQL cannot store."""
    if isinstance(value, str):
        return path or "body" if "\x00" in value else None
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = find_nul(item, f"{path}[{i}]")
            if found:
                return found
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in key:
                return where.replace("\x00", "\\u0000")
            found = find_nul(item, where)
            if found:
                return found
    return None


async def read_json(
    request: Request, into: type[T], max_bytes: int, *, verbatim: frozenset[str] = frozenset()
) -> T:
    """Decode the JSON body into `into`, or raise the matching `ApiError`.

    Top-level keys in `verbatim` are passed through untouched (see
    `integral_floats_to_int`).
    """
    check_content_length(request, max_bytes)
    if not is_json_media_type(request.headers.get("content-type")):
        got = (request.headers.get("content-type") or "none")[:60]
        raise ApiError(415, f"the body must be JSON (Content-Type: application/json), not {got}")
    body = await read_body(request, max_bytes)
    try:
        raw = msgspec.json.decode(body)
    except msgspec.ValidationError as exc:  # e.g. a number out of range
        raise ApiError(422, validation_message(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from exc
    nul = find_nul(raw)
    if nul is not None:
        raise ApiError(422, f"{nul}: text cannot contain U+0000 (PostgreSQL cannot store it)")
    try:
        return msgspec.convert(integral_floats_to_int(raw, verbatim), into)
    except msgspec.ValidationError as exc:
        raise ApiError(422, validation_message(exc)) from exc


def path_id(request: Request, name: str = "id") -> int:
    """A job id from the path; ids no job can have (past bigint) are simply not found."""
    value = request.path_params[name]
    job_id = value if isinstance(value, int) else int(str(value))
    if not 1 <= job_id <= MAX_BIGINT:
        raise ApiError(404, f"job {job_id} not found", "job_not_found")
    return job_id


def query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """An integer query parameter within [low, high], or 422 naming it."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"-?[0-9]{1,25}", raw):
        raise ApiError(422, f"{name}: expected an integer, got {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise ApiError(422, f"{name}: must be between {low} and {high}, got {value}")
    return value


def query_enum(request: Request, name: str, enum: type[E]) -> E | None:
    """An enum-valued query parameter, or 422 listing the allowed values."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return enum(raw)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in enum)
        raise ApiError(422, f"{name}: {raw[:40]!r} is not one of {allowed}") from None


def query_name(request: Request, name: str) -> str | None:
    """A kind or queue query parameter, shaped as kinds and queues must be, or 422."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not re.fullmatch(NAME_PATTERN.strip("^$"), raw):
        raise ApiError(422, f"{name}: {raw[:40]!r} is not a valid {name} name "
                            "(1-100 of A-Z a-z 0-9 _ . : -, starting with a letter or digit)")
    return raw
