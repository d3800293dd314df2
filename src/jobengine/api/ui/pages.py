"""The dashboard's pages: overview, jobs, one job, queues, schedules.

Each page reads through the stores the REST API uses (`JobStore`,
`SchedulingStore`) and, for what has to stay fast on tables of millions,
`DashboardStore`'s bounded reads. Every page carries the event cursor read
before its data (`data-cursor`): the page's script follows `GET /v1/events`
from there and refreshes what an event touches, so nothing that changed
after the page was read is missed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import Response

from jobengine.api.auth import requires_scope
from jobengine.api.errors import ApiError
from jobengine.api.inputs import context, path_id, query_enum, query_int, query_name
from jobengine.api.scheduling_wire import ScheduleOut
from jobengine.api.ui.graph import dag_graph
from jobengine.api.ui.render import error_page, page
from jobengine.api.wire import MAX_BIGINT, format_cursor
from jobengine.domain.errors import JobNotFound
from jobengine.domain.models import Job
from jobengine.domain.status import JobStatus
from jobengine.store.dashboard import (
    CHILDREN_WINDOW,
    Counts,
    DashboardStore,
    Minute,
    OldestWaiting,
)
from jobengine.store.scheduling import LimitInfo, SchedulingStore

#: Jobs on one page of the jobs list.
PAGE_SIZE = 50
#: Statuses from which an operator may cancel, and retry (the lifecycle's table).
CANCELLABLE = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RUNNING})
RETRYABLE = frozenset({JobStatus.FAILED})


def _dashboard(request: Request) -> DashboardStore:
    return DashboardStore(context(request).store.db)


def _scheduling(request: Request) -> SchedulingStore:
    return SchedulingStore(context(request).store.db)


async def _cursor(request: Request) -> str:
    """The event cursor to follow from, read before the page's data.

    (Events after it that had committed already are in the data the page
    shows; replaying them changes nothing on the page.)
    """
    cursor, _committed = await context(request).store.events_head()
    return format_cursor(cursor)


def chart_series(minutes: list[Minute]) -> dict[str, list[Any]]:
    """The overview's charts as columns (seconds since the epoch; latencies in ms)."""
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "t": [int(m.start.timestamp()) for m in minutes],
        "completed": [round(m.completed, 1) for m in minutes],
        "failed": [round(m.failed, 1) for m in minutes],
        "cancelled": [round(m.cancelled, 1) for m in minutes],
        "p50": [ms(m.latency_p50) for m in minutes],
        "p95": [ms(m.latency_p95) for m in minutes],
    }


@requires_scope("read")
async def overview(request: Request) -> Response:
    """`GET /ui/`: counts by status and queue, the last hour, the oldest waiting job."""
    cursor = await _cursor(request)
    dash = _dashboard(request)
    found: dict[str, Any] = {}

    async def read(name: str, reader: Any) -> None:
        found[name] = await reader()

    # Separate connections, at once: the page costs its slowest read, not their sum.
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, "counts", dash.counts)
            tg.start_soon(read, "minutes", dash.minutes)
            tg.start_soon(read, "oldest", dash.oldest_waiting)
            tg.start_soon(read, "paused", _scheduling(request).paused)
    except ExceptionGroup as group:
        # (answered as the API answers that error: a database away is a 503)
        raise group.exceptions[0] from None
    counts: Counts = found["counts"]
    minutes: list[Minute] = found["minutes"]
    oldest: OldestWaiting | None = found["oldest"]
    last_hour = {
        "completed": sum(m.completed for m in minutes),
        "failed": sum(m.failed for m in minutes),
        "estimated": any(not m.exact for m in minutes),
    }
    return page(request, "overview.html", {
        "title": "Overview", "cursor": cursor, "watch": "*",
        "counts": counts, "paused": set(found["paused"]), "oldest": oldest,
        "series": chart_series(minutes), "last_hour": last_hour,
        "exact_up_to": dash.exact_up_to, "minute_sample": dash.minute_sample,
    })


@dataclass(frozen=True, slots=True)
class JobFilters:
    """The jobs list's filters, as given (for the form) and as checked."""

    status: JobStatus | None = None
    kind: str | None = None
    queue: str | None = None
    payload_text: str = ""
    payload: dict[str, Any] | None = None
    before: int | None = None

    def query(self, **changes: Any) -> str:
        """The list's query string with these filters (and `changes`)."""
        values = {"status": self.status.value if self.status else None, "kind": self.kind,
                  "queue": self.queue, "payload": self.payload_text or None,
                  "before": self.before}
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def _filters(request: Request) -> JobFilters:
    """The filters of `GET /ui/jobs` (422 `ApiError` naming a bad one).

    Checked by the REST API's own readers; an empty field of the filter
    form means "any", so empty parameters are dropped first.
    """
    kept = [(k, v) for k, v in request.query_params.multi_items() if v.strip()]
    given = Request({**request.scope, "query_string": urlencode(kept).encode()})
    payload_text = given.query_params.get("payload", "").strip()
    payload = None
    if payload_text:
        try:
            payload = json.loads(payload_text)
        except ValueError as exc:
            raise ApiError(422, f"payload: not JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise ApiError(422, 'payload: a JSON object, e.g. {"customer": 42}')
    return JobFilters(status=query_enum(given, "status", JobStatus),
                      kind=query_name(given, "kind"), queue=query_name(given, "queue"),
                      payload_text=payload_text, payload=payload,
                      before=query_int(given, "before", None, 1, MAX_BIGINT))


@requires_scope("read")
async def jobs(request: Request) -> Response:
    """`GET /ui/jobs`: jobs newest first, filtered, in keyset pages."""
    cursor = await _cursor(request)
    try:
        filters = _filters(request)
    except ApiError as exc:
        return page(request, "jobs.html", {
            "title": "Jobs", "cursor": cursor, "watch": "", "filters": JobFilters(),
            "error": exc.message, "result": None}, status=exc.status)
    result = await _dashboard(request).jobs(
        status=filters.status, kind=filters.kind, queue=filters.queue, payload=filters.payload,
        before=filters.before, limit=PAGE_SIZE)
    return page(request, "jobs.html", {
        "title": "Jobs", "cursor": cursor, "watch": "listed",
        "filters": filters, "error": None, "result": result,
        "cancellable": CANCELLABLE, "retryable": RETRYABLE,
    })


@requires_scope("read")
async def job(request: Request) -> Response:
    """`GET /ui/jobs/{id}`: one job, its history and timeline, its DAG neighbours."""
    cursor = await _cursor(request)
    ctx = context(request)
    try:
        job_id = path_id(request)
        found = await ctx.store.get(job_id)
    except (ApiError, JobNotFound):
        return error_page(request, 404, f"job {request.path_params['id']} not found")
    history = await ctx.store.history(found.id)
    timeline = await ctx.store.timeline(found.id)
    parents = await ctx.store.get_many(found.depends_on) if found.depends_on else []
    children = await _dashboard(request).children(found.id)
    neighbours: list[Job] = [*parents, *children]
    return page(request, "job.html", {
        "title": f"Job {found.id}", "cursor": cursor,
        # the script refreshes the page on events of these jobs
        "watch": " ".join(str(j.id) for j in [found, *neighbours]),
        "job": found, "history": history, "timeline": timeline,
        "parents": parents, "children": children, "children_window": CHILDREN_WINDOW,
        "graph": dag_graph(found, parents, children),
        "can_cancel": found.status in CANCELLABLE, "can_retry": found.status in RETRYABLE,
    })


@requires_scope("read")
async def queues(request: Request) -> Response:
    """`GET /ui/queues`: every queue's counts, paused or not; every limit."""
    cursor = await _cursor(request)
    scheduling = _scheduling(request)
    counts = await _dashboard(request).counts()
    paused = set(await scheduling.paused())
    limits: list[LimitInfo] = await scheduling.limits()
    names = sorted(set(counts.by_queue) | paused)
    return page(request, "queues.html", {
        "title": "Queues", "cursor": cursor, "watch": "*",
        "names": names, "counts": counts, "paused": paused, "limits": limits,
    })


@requires_scope("read")
async def schedules(request: Request) -> Response:
    """`GET /ui/schedules`: every schedule with its next ticks."""
    cursor = await _cursor(request)
    found, now = await _scheduling(request).schedules()
    return page(request, "schedules.html", {
        "title": "Schedules", "cursor": cursor, "watch": "*", "now": now,
        "schedules": [ScheduleOut.from_schedule(s, now) for s in found],
    })
