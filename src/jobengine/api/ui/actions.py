"""The dashboard's actions: sign in and out; cancel and retry (one job or a selection);
pause and resume queues and schedules.

Every action is a form POST checked for CSRF (`session.read_form`) and,
through the route's `write` scope, by the same authorizer as the REST API.
Each one calls what the REST endpoint calls (`JobStore.cancel`,
`JobStore.retry`, `SchedulingStore.set_paused`, `SchedulingStore.set_schedule_enabled`)
on the API's pool, whose connections carry the actor `api`: the ledger
records a change made here exactly as one made through `/v1/`. A success
sends the browser back to the page (303); a refusal is a page saying why,
with the API's status (404, 409, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import RedirectResponse, Response

from jobengine.api.auth import requires_scope
from jobengine.api.errors import ApiError, api_error_for
from jobengine.api.inputs import context, path_id
from jobengine.api.ui.render import error_page, page
from jobengine.api.ui.session import (
    auth_required,
    clear_session,
    read_form,
    set_session,
)
from jobengine.api.wire import MAX_BIGINT, NAME_PATTERN
from jobengine.store.scheduling import SchedulingStore

#: Jobs one bulk action may name.
MAX_BULK = 500


def _back(to: str) -> Response:
    return RedirectResponse(to, status_code=303)


def _refused(request: Request, exc: BaseException) -> Response:
    error = api_error_for(exc)
    if error is None:
        raise exc
    return error_page(request, error.status, error.message)


# -- signing in --------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    """`GET /ui/login`: the sign-in form (straight to the overview when no token is needed)."""
    if not auth_required(request):
        return _back("/ui/")
    return page(request, "login.html", {"title": "Sign in", "cursor": "", "watch": "",
                                        "error": None})


async def login(request: Request) -> Response:
    """`POST /ui/login`: check the token as the API would, keep it in the session cookie."""
    if not auth_required(request):
        return _back("/ui/")
    try:
        form = await read_form(request)
    except ApiError as exc:
        return error_page(request, exc.status, exc.message)
    token = (form.get("token") or [""])[0].strip()
    probe = HTTPConnection({
        "type": "http", "method": "GET", "path": "/ui/", "query_string": b"",
        "headers": Headers({"authorization": f"Bearer {token}"}).raw,
    })
    try:
        if not token:
            raise ApiError(401, "enter a token")
        await request.app.state.authorizer(probe, "read")
    except ApiError as exc:
        return page(request, "login.html", {"title": "Sign in", "cursor": "", "watch": "",
                                            "error": exc.message}, status=exc.status)
    response = _back("/ui/")
    set_session(request, response, token)
    return response


async def logout(request: Request) -> Response:
    """`POST /ui/logout`: forget the token (back to the sign-in form)."""
    try:
        await read_form(request)
    except ApiError as exc:
        return error_page(request, exc.status, exc.message)
    response = _back("/ui/login")
    clear_session(request, response)
    return response


# -- jobs -----------------------------------------------------------------------------------


@requires_scope("write")
async def cancel(request: Request) -> Response:
    """`POST /ui/jobs/{id}/cancel`: as `POST /v1/jobs/{id}/cancel`; back to the job's page."""
    try:
        await read_form(request)
        job_id = path_id(request)
        await context(request).store.cancel(job_id)
    except Exception as exc:
        return _refused(request, exc)
    return _back(f"/ui/jobs/{job_id}")


@requires_scope("write")
async def retry(request: Request) -> Response:
    """`POST /ui/jobs/{id}/retry`: as `POST /v1/jobs/{id}/retry`; back to the job's page."""
    try:
        await read_form(request)
        job_id = path_id(request)
        await context(request).store.retry(job_id)
    except Exception as exc:
        return _refused(request, exc)
    return _back(f"/ui/jobs/{job_id}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a bulk action did to one job."""

    job_id: int
    ok: bool
    message: str


@requires_scope("write")
async def bulk(request: Request) -> Response:
    """`POST /ui/jobs/bulk`: cancel or retry every selected job, one by one; a page of outcomes."""
    try:
        form = await read_form(request)
        action = (form.get("action") or [""])[0]
        if action not in ("cancel", "retry"):
            raise ApiError(422, "action: cancel or retry")
        raw = form.get("ids") or []
        if not raw:
            raise ApiError(422, "no job selected")
        if len(raw) > MAX_BULK:
            raise ApiError(422, f"at most {MAX_BULK} jobs at once")
        if not all(r.isdigit() and 1 <= int(r) <= MAX_BIGINT for r in raw):
            raise ApiError(422, "ids: job ids")
    except ApiError as exc:
        return error_page(request, exc.status, exc.message)
    store = context(request).store
    outcomes: list[Outcome] = []
    for job_id in sorted({int(r) for r in raw}):
        try:
            if action == "cancel":
                await store.cancel(job_id)
                outcomes.append(Outcome(job_id, True, "cancelled"))
            else:
                retried = await store.retry(job_id)
                stays = retried.stays_cancelled
                outcomes.append(Outcome(job_id, True, "scheduled to run again" + (
                    f" (dependents that stay cancelled: {', '.join(map(str, stays))})"
                    if stays else "")))
        except Exception as exc:
            error = api_error_for(exc)
            if error is None or error.status >= 500:
                raise
            outcomes.append(Outcome(job_id, False, error.message))
    back = (form.get("back") or ["/ui/jobs"])[0]
    return page(request, "bulk.html", {
        "title": f"Bulk {action}", "cursor": "", "watch": "", "action": action,
        "outcomes": outcomes, "back": back if back.startswith("/ui/jobs") else "/ui/jobs",
    })


# -- queues and schedules ---------------------------------------------------------------


def _name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not re.fullmatch(NAME_PATTERN.strip("^$"), name):
        raise ApiError(404, f"{name[:100]!r} not found")
    return name


async def _queue(request: Request, paused: bool) -> Response:
    try:
        await read_form(request)
        # (the store's write, as REST's set_queue_paused makes it; the page
        # redirects, so the queue overview that helper reads back is not needed)
        await SchedulingStore(context(request).store.db).set_paused(_name(request), paused)
    except Exception as exc:
        return _refused(request, exc)
    return _back("/ui/queues")


@requires_scope("write")
async def pause_queue(request: Request) -> Response:
    """`POST /ui/queues/{name}/pause`: as `POST /v1/queues/{name}/pause`."""
    return await _queue(request, True)


@requires_scope("write")
async def resume_queue(request: Request) -> Response:
    """`POST /ui/queues/{name}/resume`: as `POST /v1/queues/{name}/resume`."""
    return await _queue(request, False)


async def _schedule(request: Request, enabled: bool) -> Response:
    try:
        await read_form(request)
        name = _name(request)
        store = SchedulingStore(context(request).store.db)
        if not await store.set_schedule_enabled(name, enabled):
            raise ApiError(404, f"schedule {name} not found", "schedule_not_found")
    except Exception as exc:
        return _refused(request, exc)
    return _back("/ui/schedules")


@requires_scope("write")
async def pause_schedule(request: Request) -> Response:
    """`POST /ui/schedules/{name}/pause`: as `POST /v1/schedules/{name}/pause`."""
    return await _schedule(request, False)


@requires_scope("write")
async def resume_schedule(request: Request) -> Response:
    """`POST /ui/schedules/{name}/resume`: as `POST /v1/schedules/{name}/resume`."""
    return await _schedule(request, True)
