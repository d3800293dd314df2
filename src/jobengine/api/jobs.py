"""The job endpoints: create, list, show, history, timeline, cancel, retry.

Every one validates its input before touching the database, and every status
change it makes goes through the store's guarded write path, so a request
the lifecycle does not allow is a 409 and changes nothing.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobengine.api.auth import requires_scope
from jobengine.api.errors import json_response
from jobengine.api.inputs import (
    check_content_length,
    context,
    path_id,
    query_enum,
    query_int,
    query_name,
    read_json,
)
from jobengine.api.wire import (
    MAX_BIGINT,
    HistoryList,
    HistoryOut,
    JobCreate,
    JobOut,
    JobPage,
    RetryOut,
    TimelineList,
    TimelineOut,
)
from jobengine.domain.status import JobStatus

#: Page size of `GET /v1/jobs` when `limit` is not given, and its maximum.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@requires_scope("write")
async def create_job(request: Request) -> Response:
    """`POST /v1/jobs`: 201 with a new job; 200 with the first job for a known idempotency key."""
    ctx = context(request)
    body = await read_json(
        request, JobCreate, ctx.http.max_body_bytes, verbatim=frozenset({"payload"})
    )
    job, created = await ctx.store.insert(body.to_spec())
    return json_response(
        JobOut.from_job(job), 201 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"}
    )


@requires_scope("read")
async def list_jobs(request: Request) -> Response:
    """`GET /v1/jobs`: one page in id order; `next` is the `after` of the next page, or null."""
    ctx = context(request)
    status = query_enum(request, "status", JobStatus)
    kind = query_name(request, "kind")
    queue = query_name(request, "queue")
    after = query_int(request, "after", None, 0, MAX_BIGINT)
    limit = query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT) or DEFAULT_LIMIT
    # One row more than asked tells whether another page exists, so the last
    # page says next = null instead of sending the client to an empty page.
    jobs = await ctx.store.list_jobs(
        status=status, kind=kind, queue=queue, after=after, limit=limit + 1
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    page = JobPage(
        jobs=[JobOut.from_job(j) for j in jobs], next=jobs[-1].id if more and jobs else None
    )
    return json_response(page)


@requires_scope("read")
async def get_job(request: Request) -> Response:
    """`GET /v1/jobs/{id}`: the job, or 404."""
    job = await context(request).store.get(path_id(request))
    return json_response(JobOut.from_job(job))


@requires_scope("read")
async def job_history(request: Request) -> Response:
    """`GET /v1/jobs/{id}/history`: the job's status changes, oldest first."""
    entries = await context(request).store.history(path_id(request))
    return json_response(HistoryList(history=[HistoryOut.from_entry(e) for e in entries]))


@requires_scope("read")
async def job_timeline(request: Request) -> Response:
    """`GET /v1/jobs/{id}/timeline`: the job's timeline events, oldest first."""
    events = await context(request).store.timeline(path_id(request))
    return json_response(TimelineList(timeline=[TimelineOut.from_event(e) for e in events]))


@requires_scope("write")
async def cancel_job(request: Request) -> Response:
    """`POST /v1/jobs/{id}/cancel`: cancel a job that has not ended (409 if it has)."""
    ctx = context(request)
    check_content_length(request, ctx.http.max_body_bytes)
    job = await ctx.store.cancel(path_id(request))
    return json_response(JobOut.from_job(job))


@requires_scope("write")
async def retry_job(request: Request) -> Response:
    """`POST /v1/jobs/{id}/retry`: run a failed job again now (409 for any other status)."""
    ctx = context(request)
    check_content_length(request, ctx.http.max_body_bytes)
    retried = await ctx.store.retry(path_id(request))
    out = RetryOut(**msgspec.structs.asdict(JobOut.from_job(retried.job)),
                   stays_cancelled=retried.stays_cancelled)
    return json_response(out)


#: The job routes, in the order the OpenAPI document lists them.
ROUTES = [
    Route("/v1/jobs", create_job, methods=["POST"], name="create_job"),
    Route("/v1/jobs", list_jobs, methods=["GET"], name="list_jobs"),
    Route("/v1/jobs/{id:int}", get_job, methods=["GET"], name="get_job"),
    Route("/v1/jobs/{id:int}/history", job_history, methods=["GET"], name="job_history"),
    Route("/v1/jobs/{id:int}/timeline", job_timeline, methods=["GET"], name="job_timeline"),
    Route("/v1/jobs/{id:int}/cancel", cancel_job, methods=["POST"], name="cancel_job"),
    Route("/v1/jobs/{id:int}/retry", retry_job, methods=["POST"], name="retry_job"),
]
