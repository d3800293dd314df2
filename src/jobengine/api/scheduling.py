"""The scheduling endpoints: queues (pause, resume), limits, periodic jobs.

Everything here reads and writes `jobengine.queues`, the limit tables and
`jobengine.schedules` through `SchedulingStore`; the claim enforces it all
in the database, so a change made here holds for every daemon at once.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobengine.api.auth import requires_scope
from jobengine.api.errors import ApiError, json_response
from jobengine.api.inputs import check_content_length, context, read_json
from jobengine.api.scheduling_wire import (
    LimitOut,
    QueueOut,
    QueueOverview,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
)
from jobengine.api.wire import NAME_PATTERN
from jobengine.domain.schedules import ScheduleSpec
from jobengine.store.scheduling import QueueInfo, SchedulingStore

_NAME = re.compile(NAME_PATTERN)
_MISSING = re.compile(r"^Object missing required field `(\w+)`$")


def _store(request: Request) -> SchedulingStore:
    return SchedulingStore(context(request).store.db)


def _queue_name(request: Request) -> str:
    name: str = request.path_params["name"]
    if not _NAME.fullmatch(name):
        raise ApiError(422, f"name: {name[:40]!r} is not a valid queue name (1-100 of "
                            "A-Z a-z 0-9 _ . : -, starting with a letter or digit)")
    return name


def _schedule_name(request: Request) -> str:
    """The schedule named in the path; a name no schedule can have is simply not found."""
    name: str = request.path_params["name"]
    if not _NAME.fullmatch(name):
        raise _not_found(name)
    return name


def _not_found(name: str) -> ApiError:
    return ApiError(404, f"schedule {name[:100]} not found", "schedule_not_found")


@requires_scope("read")
async def list_queues(request: Request) -> Response:
    """`GET /v1/queues`: every queue (counts, paused, oldest waiting) and every limit."""
    store = _store(request)
    queues = [QueueOut.from_info(q) for q in await store.queues()]
    limits = [LimitOut.from_info(limit) for limit in await store.limits()]
    return json_response(QueueOverview(queues=queues, limits=limits))


async def set_queue_paused(store: SchedulingStore, name: str, paused: bool) -> QueueOut:
    """Pause or resume a queue; the queue as it is now (the CLI's `pause` and `resume` too)."""
    await store.set_paused(name, paused)
    found = [q for q in await store.queues() if q.name == name]
    return QueueOut.from_info(found[0] if found else QueueInfo(name, paused))


async def _set_paused(request: Request, paused: bool) -> Response:
    check_content_length(request, context(request).http.max_body_bytes)
    name = _queue_name(request)
    return json_response(await set_queue_paused(_store(request), name, paused))


@requires_scope("write")
async def pause_queue(request: Request) -> Response:
    """`POST /v1/queues/{name}/pause`: no new claims from the queue (running jobs finish)."""
    return await _set_paused(request, True)


@requires_scope("write")
async def resume_queue(request: Request) -> Response:
    """`POST /v1/queues/{name}/resume`: the queue's jobs are claimed again."""
    return await _set_paused(request, False)


async def schedule_out(store: SchedulingStore, name: str) -> ScheduleOut | None:
    """One schedule with its next ticks by the database's clock, or None."""
    schedules, now = await store.schedules()
    for schedule in schedules:
        if schedule.name == name:
            return ScheduleOut.from_schedule(schedule, now)
    return None


async def _schedule_out(store: SchedulingStore, name: str) -> ScheduleOut:
    out = await schedule_out(store, name)
    if out is None:
        raise _not_found(name)
    return out


async def save_schedule(
    store: SchedulingStore, spec: ScheduleSpec, *, keep_enabled: bool
) -> tuple[ScheduleOut, bool | None]:
    """Create or redefine a schedule; returns it as stored, and whether it is new.

    The flag is True (created), False (redefined) or None (already exactly
    so: nothing written). With `keep_enabled`, an existing schedule stays
    paused or enabled as it was.
    """
    existed = await store.schedule(spec.name) is not None
    changed = await store.upsert_schedule(spec, keep_enabled=keep_enabled)
    out = await _schedule_out(store, spec.name)
    return out, (not existed) if changed else None


@requires_scope("read")
async def list_schedules(request: Request) -> Response:
    """`GET /v1/schedules`: every schedule with its next three ticks."""
    schedules, now = await _store(request).schedules()
    return json_response(ScheduleList(
        schedules=[ScheduleOut.from_schedule(s, now) for s in schedules]))


@requires_scope("read")
async def get_schedule(request: Request) -> Response:
    """`GET /v1/schedules/{name}`: one schedule, or 404."""
    return json_response(await _schedule_out(_store(request), _schedule_name(request)))


@requires_scope("write")
async def put_schedule(request: Request) -> Response:
    """`PUT /v1/schedules/{name}`: create (201) or redefine (200) a schedule."""
    name: str = request.path_params["name"]
    ctx = context(request)
    try:
        body = await read_json(request, ScheduleIn, ctx.http.max_body_bytes,
                               verbatim=frozenset({"payload"}))
    except ApiError as exc:
        if exc.status != 422:
            raise
        missing = _MISSING.match(exc.message)
        problem = f"{missing.group(1)}: required" if missing else exc.message
        raise ApiError(422, f"schedule {name[:100]}: {problem}", "invalid_schedule") from None
    out, created = await save_schedule(_store(request), body.to_spec(name),
                                       keep_enabled=body.enabled is None)
    return json_response(out, 201 if created else 200,
                         headers={"Location": f"/v1/schedules/{name}"})


@requires_scope("write")
async def delete_schedule(request: Request) -> Response:
    """`DELETE /v1/schedules/{name}`: 204; the jobs it created stay."""
    name = _schedule_name(request)
    if not await _store(request).remove_schedule(name):
        raise _not_found(name)
    return Response(status_code=204)


async def _set_enabled(request: Request, enabled: bool) -> Response:
    check_content_length(request, context(request).http.max_body_bytes)
    name = _schedule_name(request)
    store = _store(request)
    if not await store.set_schedule_enabled(name, enabled):
        raise _not_found(name)
    return json_response(await _schedule_out(store, name))


@requires_scope("write")
async def pause_schedule(request: Request) -> Response:
    """`POST /v1/schedules/{name}/pause`: no ticks until resumed."""
    return await _set_enabled(request, False)


@requires_scope("write")
async def resume_schedule(request: Request) -> Response:
    """`POST /v1/schedules/{name}/resume`: ticks again from now (those missed are skipped)."""
    return await _set_enabled(request, True)


#: The scheduling routes, in the order the OpenAPI document lists them.
ROUTES = [
    Route("/v1/queues", list_queues, methods=["GET"], name="list_queues"),
    Route("/v1/queues/{name}/pause", pause_queue, methods=["POST"], name="pause_queue"),
    Route("/v1/queues/{name}/resume", resume_queue, methods=["POST"], name="resume_queue"),
    Route("/v1/schedules", list_schedules, methods=["GET"], name="list_schedules"),
    Route("/v1/schedules/{name}", get_schedule, methods=["GET"], name="get_schedule"),
    Route("/v1/schedules/{name}", put_schedule, methods=["PUT"], name="put_schedule"),
    Route("/v1/schedules/{name}", delete_schedule, methods=["DELETE"], name="delete_schedule"),
    Route("/v1/schedules/{name}/pause", pause_schedule, methods=["POST"], name="pause_schedule"),
    Route("/v1/schedules/{name}/resume", resume_schedule, methods=["POST"],
          name="resume_schedule"),
]
