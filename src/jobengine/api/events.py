"""`GET /v1/events`: the global timeline, as JSON pages or as a live server-sent event stream.

Both read through the store's `events_after`, which never returns an event
of a transaction younger than one still open; so a cursor only moves past
events that are already committed, and a client that resumes from its
cursor (the SSE `id:`, sent back as `Last-Event-ID`) misses nothing and sees
nothing twice. Notifications on `jobengine_events` only wake the stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress

import anyio
import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from jobengine.api.auth import requires_scope
from jobengine.api.errors import UNAVAILABLE, ApiError, json_response
from jobengine.api.inputs import ApiContext, context, query_int
from jobengine.api.wire import (
    CURSOR_START,
    EventOut,
    EventPageOut,
    format_cursor,
    parse_cursor,
)
from jobengine.store import EventPage

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Events read per query while a stream catches up.
STREAM_BATCH = 500
#: After a notification that brought nothing new (its transaction is still
#: behind an older open one), poll again this soon, backing off to the poll interval.
_QUICK_POLL = 0.02

_log = structlog.get_logger("jobengine.api")


def wants_event_stream(request: Request) -> bool:
    """True when the client asked for `text/event-stream`."""
    accept = request.headers.get("accept", "")
    return any(
        part.split(";", 1)[0].strip().lower() == "text/event-stream" for part in accept.split(",")
    )


def _cursor_from(request: Request) -> tuple[int, int]:
    """The cursor to start from: `Last-Event-ID` (a reconnecting client), else `after`."""
    cursor = CURSOR_START
    # Both are checked when both are sent; the header wins.
    for name, raw in (("after", request.query_params.get("after")),
                      ("Last-Event-ID", request.headers.get("last-event-id"))):
        if raw is not None:
            try:
                cursor = parse_cursor(raw)
            except ValueError as exc:
                raise ApiError(422, f"{name}: {exc}") from None
    return cursor


def _frame(event: EventOut) -> bytes:
    return b"id: " + event.cursor.encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


@requires_scope("read")
async def events(request: Request) -> Response:
    """`GET /v1/events?after=CURSOR&limit=N`: JSON page, or SSE with `Accept: text/event-stream`."""
    ctx = context(request)
    stream = wants_event_stream(request)
    cursor = _cursor_from(request)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    # The first read happens here, so a database that is down is a 503, not a dead stream.
    page = await ctx.store.events_after(cursor, STREAM_BATCH if stream else limit)
    if not stream:
        body = EventPageOut(
            events=[EventOut.from_row(r) for r in page.events], next=format_cursor(page.cursor)
        )
        return json_response(body)
    return EventStreamResponse(ctx, page)


class EventStreamResponse(Response):
    """A `text/event-stream` that replays from a cursor and then follows live events."""

    media_type = "text/event-stream"

    def __init__(self, ctx: ApiContext, first: EventPage) -> None:
        # No super().__init__: it would set Content-Length: 0 for the empty body.
        self.status_code = 200
        self.background = None
        self.init_headers({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ctx = ctx
        self.first = first

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the client leaves or the server stops."""
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})

        async def write(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async with anyio.create_task_group() as tg:

            async def until_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            async def until_closing() -> None:
                await self.ctx.closing.wait()
                tg.cancel_scope.cancel()

            async def produce() -> None:
                try:
                    await follow(self.ctx, self.first, write)
                except OSError:
                    pass  # the client went away (ASGI 2.4 servers raise on send)
                except UNAVAILABLE as exc:
                    # Headers are sent: end the stream; the client resumes from its cursor.
                    _log.warning("api.event_stream_ended", error=str(exc) or type(exc).__name__)
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnect)
            tg.start_soon(until_closing)
            tg.start_soon(produce)
        with suppress(OSError):
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def follow(
    ctx: ApiContext, page: EventPage, write: Callable[[bytes], Awaitable[None]]
) -> None:
    """Send `page`, then every later event as it commits, with keepalives; never returns."""
    await write(b"retry: 1000\n\n")
    with ctx.hub.subscribe() as waker:
        idle_since = anyio.current_time()
        # The first page was read before this subscription: a notification may
        # have come in between, so read again soon whatever that page held.
        quick: float | None = _QUICK_POLL
        first = True
        while True:
            for row in page.events:
                await write(_frame(EventOut.from_row(row)))
            if page.events:
                idle_since = anyio.current_time()
                if not first:
                    quick = None  # the wake-up brought its events
            first = False
            if len(page.events) < STREAM_BATCH:
                # Caught up: wait for a notification, a poll, or the keepalive.
                until_keepalive = idle_since + ctx.keepalive - anyio.current_time()
                if until_keepalive <= 0:
                    await write(b": keepalive\n\n")
                    idle_since = anyio.current_time()
                    until_keepalive = ctx.keepalive
                timeout = min(quick if quick is not None else ctx.poll_interval, until_keepalive)
                woken = await waker.wait(max(timeout, 0.0))
                if woken:
                    quick = _QUICK_POLL
                elif quick is not None:
                    quick = quick * 2 if quick * 2 < ctx.poll_interval else None
            page = await ctx.store.events_after(page.cursor, STREAM_BATCH)


ROUTES = [Route("/v1/events", events, methods=["GET"], name="events")]
