"""The OpenAPI 3.1 document, generated from the wire structs.

Schemas come from `msgspec.json.schema_components`, so the document and
the server's validation cannot drift apart; paths, parameters and statuses
are listed here, each error status with the one error body.
"""

from __future__ import annotations

from typing import Any

import msgspec

from jobengine import __version__
from jobengine.api.scheduling_wire import (
    SCHEDULING_TYPES,
    QueueOut,
    QueueOverview,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
)
from jobengine.api.wire import (
    MAX_BIGINT,
    NAME_PATTERN,
    SCHEMA_TYPES,
    EventPageOut,
    Health,
    HistoryList,
    JobCreate,
    JobOut,
    JobPage,
    Readiness,
    RetryOut,
    TimelineList,
)
from jobengine.domain.status import JobStatus

_REF = "#/components/schemas/{name}"
_CURSOR_PATTERN = r"^([0-9]{1,20}-[0-9]{1,19}|0)$"

#: Why each error status is returned, for the document's shared responses.
ERROR_STATUSES: dict[int, str] = {
    400: "Malformed JSON body.",
    401: "A bearer token is required and was missing or not valid (when tokens are configured).",
    403: "The bearer token does not have the scope this operation needs.",
    404: "No such job or schedule (or no such path).",
    409: "The lifecycle does not allow this transition.",
    413: "The request body is over `http.max_body_bytes`.",
    415: "The request body is not JSON.",
    422: "A field or parameter failed validation; the message names it and says why "
         "(`invalid_schedule`: the schedule and the field).",
    503: "The database is unavailable.",
}


def _ref(struct: type[msgspec.Struct]) -> dict[str, str]:
    return {"$ref": _REF.format(name=struct.__name__)}


def _json(struct: type[msgspec.Struct], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(struct)}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/Error{s}"} for s in statuses}


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


_JOB_ID = {
    "name": "id", "in": "path", "required": True, "description": "The job's id.",
    "schema": {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_BIGINT},
}
_NAME = {"type": "string", "pattern": NAME_PATTERN}
_LIMIT = _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
                "Page size (at most 1000).")


def _job_operation(op_id: str, summary: str, ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": ["jobs"],
            "parameters": [_JOB_ID], "responses": {"200": ok, **_errors(404, *errors, 503)}}


_QUEUE_NAME = {"name": "name", "in": "path", "required": True, "description": "The queue.",
               "schema": _NAME}
_SCHEDULE_NAME = {"name": "name", "in": "path", "required": True,
                  "description": "The schedule's name.", "schema": _NAME}


def _named(op_id: str, tag: str, parameter: dict[str, Any], summary: str, ok: dict[str, Any],
           *errors: int, status: str = "200") -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "tags": [tag], "parameters": [parameter],
            "responses": {status: ok, **_errors(*errors, 503)}}


def _scheduling_paths() -> dict[str, Any]:
    queue = _json(QueueOut, "The queue.")
    schedule = _json(ScheduleOut, "The schedule, with its next ticks.")
    return {
        "/v1/queues": {"get": {
            "operationId": "list_queues", "tags": ["queues"], "summary": "Queues and limits",
            "description": "Every queue with jobs or a pause record (counts by status, paused, "
                           "how long the oldest due job has waited) and every limit key (its "
                           "limits, running jobs, starts in the window, waiting and held jobs).",
            "responses": {"200": _json(QueueOverview, "Queues and limits."), **_errors(503)},
        }},
        "/v1/queues/{name}/pause": {"post": _named(
            "pause_queue", "queues", _QUEUE_NAME,
            "Pause a queue: no new claims (running jobs finish)", queue, 413, 422)},
        "/v1/queues/{name}/resume": {"post": _named(
            "resume_queue", "queues", _QUEUE_NAME, "Resume a queue", queue, 413, 422)},
        "/v1/schedules": {"get": {
            "operationId": "list_schedules", "tags": ["schedules"], "summary": "List schedules",
            "description": "Every schedule by name, each with its next three ticks by the "
                           "database's clock (none while paused).",
            "responses": {"200": _json(ScheduleList, "The schedules."), **_errors(503)},
        }},
        "/v1/schedules/{name}": {
            "get": _named("get_schedule", "schedules", _SCHEDULE_NAME, "Show a schedule",
                          schedule, 404),
            "put": {
                "operationId": "put_schedule", "tags": ["schedules"],
                "summary": "Create or redefine a schedule", "parameters": [_SCHEDULE_NAME],
                "responses": {"201": _json(ScheduleOut, "Created."),
                              "200": _json(ScheduleOut, "Redefined."),
                              **_errors(400, 413, 415, 422, 503)},
                "description": "Exactly one of `cron` (in `timezone`) and `every`. A schedule "
                               "that could not run is refused with `invalid_schedule`, naming "
                               "the field; nothing is written.",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref(ScheduleIn)}}},
            },
            "delete": _named("delete_schedule", "schedules", _SCHEDULE_NAME,
                             "Remove a schedule (the jobs it created stay)",
                             {"description": "Removed."}, 404, status="204"),
        },
        "/v1/schedules/{name}/pause": {"post": _named(
            "pause_schedule", "schedules", _SCHEDULE_NAME, "Pause a schedule: no ticks",
            schedule, 404, 413)},
        "/v1/schedules/{name}/resume": {"post": _named(
            "resume_schedule", "schedules", _SCHEDULE_NAME,
            "Resume a schedule: ticks from now on (those missed while paused are skipped)",
            schedule, 404, 413)},
    }


def _paths() -> dict[str, Any]:
    job = _json(JobOut, "The job.")
    return {
        "/v1/jobs": {
            "post": {
                "operationId": "create_job", "tags": ["jobs"], "summary": "Create a job",
                "description": "Creates a `pending` job (201). With an `idempotency_key` that "
                               "is already taken, returns the first job (200) and writes nothing.",
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": _ref(JobCreate)}}},
                "responses": {"201": _json(JobOut, "The new job."),
                              "200": _json(JobOut, "The job created earlier with this key."),
                              **_errors(400, 413, 415, 422, 503)},
            },
            "get": {
                "operationId": "list_jobs", "tags": ["jobs"], "summary": "List jobs",
                "description": "Jobs in id order, filtered; pass `next` as `after` for the "
                               "next page (`next` is null on the last page).",
                "parameters": [
                    _query("status", {"type": "string", "enum": [s.value for s in JobStatus]},
                           "Only jobs in this status."),
                    _query("kind", _NAME, "Only jobs of this kind."),
                    _query("queue", _NAME, "Only jobs in this queue."),
                    _query("after", {"type": "integer", "format": "int64", "minimum": 0,
                                     "maximum": MAX_BIGINT}, "Only jobs with a greater id."),
                    _LIMIT,
                ],
                "responses": {"200": _json(JobPage, "One page of jobs."), **_errors(422, 503)},
            },
        },
        "/v1/jobs/{id}": {"get": _job_operation("get_job", "Show a job", job)},
        "/v1/jobs/{id}/history": {"get": _job_operation(
            "job_history", "A job's status changes", _json(HistoryList, "Oldest first."))},
        "/v1/jobs/{id}/timeline": {"get": _job_operation(
            "job_timeline", "A job's timeline events", _json(TimelineList, "Oldest first."))},
        "/v1/jobs/{id}/cancel": {"post": _job_operation(
            "cancel_job", "Cancel a job that has not ended", job, 409, 413)},
        "/v1/jobs/{id}/retry": {"post": _job_operation(
            "retry_job", "Run a failed job again (failed -> scheduled); lists the dependents "
            "that stay cancelled", _json(RetryOut, "The job, and its dependents that stay "
                                         "cancelled."), 409, 413)},
        "/v1/events": {"get": {
            "operationId": "events", "tags": ["events"], "summary": "Follow the timeline",
            "description": "Timeline events after the cursor in commit order, gap-free. With "
                           "`Accept: text/event-stream`: replays from `after` (or "
                           "`Last-Event-ID`), then streams events live; each SSE `id` is a "
                           "cursor, idle streams get `: keepalive` comments.",
            "parameters": [
                _query("after", {"type": "string", "pattern": _CURSOR_PATTERN},
                       "Cursor (`TXID-ID`, from `next` or an event's `cursor`); default: start."),
                _LIMIT,
                {"name": "Last-Event-ID", "in": "header", "required": False,
                 "schema": {"type": "string", "pattern": _CURSOR_PATTERN},
                 "description": "Cursor sent by reconnecting SSE clients; wins over `after`."},
            ],
            "responses": {
                "200": {"description": "A page of events, or an event stream.", "content": {
                    "application/json": {"schema": _ref(EventPageOut)},
                    "text/event-stream": {"schema": {"type": "string"}},
                }},
                **_errors(422, 503),
            },
        }},
        "/healthz": {"get": {"operationId": "healthz", "tags": ["operations"],
                             "summary": "Liveness", "responses": {"200": _json(Health, "Alive.")}}},
        "/readyz": {"get": {"operationId": "readyz", "tags": ["operations"],
                            "summary": "Readiness: database reachable, listener connected",
                            "responses": {"200": _json(Readiness, "Ready."),
                                          "503": _json(Readiness, "Not ready.")}}},
        "/metrics": {"get": {"operationId": "metrics", "tags": ["operations"],
                             "summary": "Prometheus metrics", "responses": {"200": {
                                 "description": "Prometheus text format.",
                                 "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"operationId": "openapi", "tags": ["operations"],
                                  "summary": "This document", "responses": {"200": {
                                      "description": "OpenAPI 3.1.",
                                      "content": {"application/json": {
                                          "schema": {"type": "object"}}}}}}},
        **_scheduling_paths(),
    }


def openapi_document() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the REST API."""
    _, schemas = msgspec.json.schema_components(SCHEMA_TYPES + SCHEDULING_TYPES,
                                                ref_template=_REF)
    responses = {
        f"Error{status}": {"description": why,
                           "content": {"application/json": {"schema": _ref_name("ErrorBody")}}}
        for status, why in ERROR_STATUSES.items()
    }
    paths = _paths()
    for path, item in paths.items():
        if path.startswith("/v1/") or path == "/metrics":
            for method, operation in item.items():
                # read for GET, write for POST (write implies read)
                scope = "read" if method == "get" else "write"
                operation["security"] = [{"bearer": [scope]}]
                operation["responses"].update(_errors(401, 403))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobengine",
            "version": __version__,
            "description": "A Postgres-backed job lifecycle engine. Every error is "
                           '`{"error": {"code", "message"}}` with a 4xx or 5xx status.',
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A token configured in [http.tokens] (by its SHA-256) with "
                               "scope read or write; not needed when no token is configured "
                               "(the API then listens on loopback only).",
            }},
        },
    }


def _ref_name(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(name=name)}


def openapi_json() -> bytes:
    """The document, encoded."""
    return msgspec.json.encode(openapi_document())
