"""The OpenAPI document: valid OpenAPI 3.1, complete, and true of the live server.

Schemathesis generates requests (valid and invalid) for every operation and
checks each response against the document: no 500, no undocumented status,
no body that breaks its schema. Bounded, so it runs in seconds.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis.checks import ignored_auth
from schemathesis.generation import GenerationMode

from jobengine.api.app import create_app
from jobengine.api.config import HttpSettings
from jobengine.api.openapi import ERROR_STATUSES, openapi_document
from jobengine.api.server import serve
from jobengine.api.tokens import TokenAuthorizer
from jobengine.api.wire import MAX_BIGINT, MAX_SECONDS
from jobengine.store import create_pool
from tests.apiutil import TOKENS, WRITER
from tests.dbutil import scratch_database

# The fuzzing runs as an operator would: with tokens configured, sending a write token.
AUTH = {"Authorization": f"Bearer {WRITER}"}


@pytest.fixture(scope="module")
def live_url(server_dsn: str, template_db: str) -> Iterator[str]:
    """The API served by uvicorn on 127.0.0.1 from a thread with its own event loop."""
    with scratch_database(server_dsn, template_db) as dsn, \
            anyio.from_thread.start_blocking_portal() as portal:
        pool = portal.call(functools.partial(create_pool, dsn, "api", min_size=1, max_size=6))
        app = create_app(pool, HttpSettings(max_body_bytes=64 * 1024, tokens=TOKENS),
                         authorizer=TokenAuthorizer(TOKENS))
        future, (host, port) = portal.start_task(serve, app, "127.0.0.1", 0)
        try:
            # A few jobs, so that ids 1..3 exist and events are there to page through.
            with httpx.Client(base_url=f"http://{host}:{port}", headers=AUTH) as client:
                for kind in ("alpha", "beta", "gamma"):
                    assert client.post("/v1/jobs", json={"kind": kind}).status_code == 201
            yield f"http://{host}:{port}"
        finally:
            future.cancel()
            portal.call(pool.close)


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    validate(document)
    assert document["openapi"] == "3.1.0"


def test_every_route_and_error_status_is_documented() -> None:
    document = openapi_document()
    paths = document["paths"]
    assert set(paths) == {
        "/v1/jobs", "/v1/jobs/{id}", "/v1/jobs/{id}/history", "/v1/jobs/{id}/timeline",
        "/v1/jobs/{id}/cancel", "/v1/jobs/{id}/retry", "/v1/events",
        "/v1/queues", "/v1/queues/{name}/pause", "/v1/queues/{name}/resume",
        "/v1/schedules", "/v1/schedules/{name}", "/v1/schedules/{name}/pause",
        "/v1/schedules/{name}/resume",
        "/healthz", "/readyz", "/metrics", "/openapi.json",
    }
    documented = {
        int(status) for item in paths.values() for op in item.values()
        for status in op["responses"]
    }
    assert set(ERROR_STATUSES) <= documented
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]
    detail = document["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"code", "message"}


def test_the_served_document_is_the_generated_one(live_url: str) -> None:
    served = httpx.get(f"{live_url}/openapi.json")
    assert served.status_code == 200
    assert served.json() == openapi_document()


@pytest.fixture(scope="module")
def api_schema(live_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{live_url}/openapi.json")


def schema_valid_depends_on(value: Any) -> bool:
    return isinstance(value, list) and len(value) <= 1000 and all(
        is_number(v) and float(v).is_integer() and 1 <= v <= MAX_BIGINT for v in value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def schema_valid_timing(body: dict[str, Any]) -> bool:
    """Whether a schedule's cron, every and timezone are as its schema allows."""
    def text(key: str, longest: int) -> bool:
        value = body.get(key)
        return value is None or (isinstance(value, str) and len(value) <= longest)

    every: Any = body.get("every")
    seconds = is_number(every) and 1 <= every <= MAX_SECONDS
    return text("cron", 200) and (seconds or text("every", 100)) and text("timezone", 100) \
        and body.get("timezone", "") is not None


def valid_timing(body: dict[str, Any]) -> None:
    """What a schema cannot say of a schedule: exactly one of cron and every, a cron
    expression that parses, a time zone that exists, a duration text that means one.
    A number of seconds (bounded in the schema) is kept; anything else becomes a cron."""
    if is_number(body.get("every")):
        body.pop("cron", None)
    else:
        body.pop("every", None)
        body["cron"] = "0 3 * * *"
    body["timezone"] = "Europe/Berlin"


# Schemathesis's pytest integration (`from_fixture`) does not run on pytest 9
# yet, so its strategies are driven with Hypothesis directly, per operation.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_live_api_keeps_its_document(api_schema: Any, mode: GenerationMode) -> None:
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/jobs", "GET /v1/jobs", "POST /v1/jobs/{id}/cancel", "GET /v1/events"} <= labels
    for operation in operations:
        # An event stream never ends: ask /v1/events for JSON pages here.
        accept = {"Accept": "application/json"}

        @given(case=operation.as_strategy(generation_mode=mode, headers=accept))
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        def check(case: Any) -> None:
            if isinstance(case.body, dict):
                # What a schema cannot say, and the API answers with a 422: that
                # depends_on names jobs that exist, that no text holds U+0000
                # (PostgreSQL cannot store it), that a schedule's timing means
                # something. Only what the schema allows is mended (in a negative
                # case too, which may turn out valid): mending away the one part
                # a negative case made invalid would have it accepted.
                if schema_valid_depends_on(case.body.get("depends_on")):
                    case.body.pop("depends_on", None)
                assume("\\u0000" not in json.dumps(case.body))
                if case.operation.label == "PUT /v1/schedules/{name}" and schema_valid_timing(
                        case.body):
                    valid_timing(case.body)
            if case.headers:
                # Only the documented headers: a malformed Content-Length is refused
                # by the HTTP server (uvicorn) before the app sees the request.
                case.headers = {k: v for k, v in case.headers.items()
                                if k.lower() in {"accept", "last-event-id", "content-type"}}
            case.headers = {**(case.headers or {}), **AUTH}
            # ignored_auth would take our real token for a generated one; every
            # endpoint's refusal without a valid token is tested in test_api_auth.
            case.call_and_validate(timeout=10, excluded_checks=[ignored_auth])

        try:
            check()
        except Unsatisfiable:
            # Nothing to get wrong: an operation without parameters has no invalid input.
            assert mode is GenerationMode.NEGATIVE, operation.label
        except Exception as exc:  # collect, so one run reports every operation that breaks
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
