"""What an endpoint takes in: the app's dependencies, JSON bodies, query parameters, path ids.

`context(request)` gives the store, settings and event hub every endpoint
shares. Each reader turns bad input into an `ApiError` with the right status
before anything reaches the database: 413 for a body over the limit (by
Content-Length and by the bytes actually streamed), 415 for a body that is
not JSON, 400 for malformed JSON, 422 for a field that fails validation or
JSON nested deeper than `MAX_JSON_DEPTH`.
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
ReadinessCheck = Callable[[], Awaitable[dict[str, bool]]]


@dataclass
class ApiContext:
    """The API's dependencies, kept on `app.state.jobengine`."""

    store: JobStore
    http: HttpSettings
    hub: EventHub
    readiness: ReadinessCheck | None = None
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

#: How deeply a JSON body may nest arrays and objects (the body itself is level 1).
#: Far below the interpreter's recursion limit, so that no decoder, encoder or
#: walker on the way (here, in the store, in the daemon) can run out of stack.
MAX_JSON_DEPTH = 512

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
    Iterative, so that no nesting can exhaust the stack.
    """
    if not isinstance(value, (list, dict)):
        return _integral(value)
    root: list[Any] | dict[str, Any] = [] if isinstance(value, list) else {}
    todo: list[tuple[Any, list[Any] | dict[str, Any], bool]] = [(value, root, True)]
    while todo:
        source, copy, top = todo.pop()
        items = enumerate(source) if isinstance(source, list) else source.items()
        for key, item in items:
            if top and isinstance(source, dict) and key in verbatim:
                new = item
            elif isinstance(item, (list, dict)):
                new = [] if isinstance(item, list) else {}
                todo.append((item, new, False))
            else:
                new = _integral(item)
            if isinstance(copy, list):
                copy.append(new)
            else:
                copy[str(key)] = new  # (JSON keys are strings)
    return root


def _integral(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels deep in `value` (iterative)."""
    todo = [(value, 1)] if isinstance(value, (list, dict)) else []
    while todo:
        item, depth = todo.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        todo.extend((c, depth + 1) for c in children if isinstance(c, (list, dict)))
    return False


def too_deep_message(limit: int = MAX_JSON_DEPTH) -> str:
    """What a client is told about JSON nested deeper than `limit`."""
    return f"JSON nested too deeply (arrays and objects more than {limit} levels deep)"


def find_nul(value: Any, path: str = "") -> str | None:
    """The path of the first string (or key) holding U+0000, which PostgreSQL cannot store."""
    # Depth first in document order, without recursion: (a bad key?, value, its path)
    todo: list[tuple[bool, Any, str]] = [(False, value, path)]
    while todo:
        bad_key, item, where = todo.pop()
        if bad_key:
            return where
        if isinstance(item, str):
            if "\x00" in item:
                return where or "body"
        elif isinstance(item, list):
            todo.extend(reversed([(False, v, f"{where}[{i}]") for i, v in enumerate(item)]))
        elif isinstance(item, dict):
            entries: list[tuple[bool, Any, str]] = []
            for key, v in item.items():
                at = f"{where}.{key}" if where else str(key)
                if "\x00" in key:
                    entries.append((True, None, at.replace("\x00", "\\u0000")))
                entries.append((False, v, at))
            todo.extend(reversed(entries))
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
    except RecursionError:  # msgspec stops where the stack would run out
        raise ApiError(422, f"body: {too_deep_message()}") from None
    except msgspec.ValidationError as exc:  # e.g. a number out of range
        raise ApiError(422, validation_message(exc)) from exc
    except msgspec.DecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from exc
    if nests_deeper_than(raw, MAX_JSON_DEPTH):
        raise ApiError(422, f"body: {too_deep_message()}")
    nul = find_nul(raw)
    if nul is not None:
        raise ApiError(422, f"{nul}: text cannot contain U+0000 (PostgreSQL cannot store it)")
    try:
        return msgspec.convert(integral_floats_to_int(raw, verbatim), into)
    except RecursionError:  # (not reached within MAX_JSON_DEPTH; never a 500 if it were)
        raise ApiError(422, f"body: {too_deep_message()}") from None
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
