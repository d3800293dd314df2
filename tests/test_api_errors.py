"""Every error status the API promises, each with the one body shape, and no row changed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from jobengine.api.config import HttpSettings
from jobengine.api.inputs import MAX_JSON_DEPTH
from jobengine.store import create_pool
from tests.apiutil import app_client, assert_error
from tests.dbutil import scratch_database

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("unchanged")]

JSON = {"content-type": "application/json"}


# One database and one app for the module: these tests only read, or check
# that a refused request changed nothing.


@pytest.fixture(scope="module")
def module_dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    with scratch_database(server_dsn, template_db) as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def pool(module_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(module_dsn, actor="tests", min_size=1, max_size=8)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture(scope="module")
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(pool, http=HttpSettings(max_body_bytes=1000)) as c:
        yield c


@pytest.fixture
async def unchanged(pool: asyncpg.Pool) -> AsyncIterator[None]:
    """Fails the test if it changed the number of jobs or of history rows."""
    query = ("SELECT (SELECT count(*) FROM jobengine.jobs), "
             "(SELECT count(*) FROM jobengine.job_history)")
    before = tuple(await pool.fetchrow(query))
    yield
    assert tuple(await pool.fetchrow(query)) == before


@pytest.fixture(scope="module")
async def job_id(client: httpx.AsyncClient) -> int:
    response = await client.post("/v1/jobs", json={"kind": "email"})
    assert response.status_code == 201
    value: int = response.json()["id"]
    return value


@pytest.mark.parametrize("body", [b"{bad", b'{"kind": "a",}', b"", b"\xff\xfe{}", b'{"kind": "a"} x'])
async def test_malformed_json_is_400(
    client: httpx.AsyncClient, body: bytes
) -> None:
    response = await client.post("/v1/jobs", content=body, headers=JSON)
    assert "not valid JSON" in assert_error(response, 400, "malformed_json")


@pytest.mark.parametrize(("body", "names"), [
    ({}, "`kind`"),
    ({"kind": 5}, "kind:"),
    ({"kind": "a", "colour": "red"}, "`colour`"),
    ({"kind": "has space"}, "kind:"),
    ({"kind": "a", "queue": ""}, "queue:"),
    ({"kind": "a", "payload": [1, 2]}, "payload:"),
    ({"kind": "a", "priority": 2**31}, "priority:"),
    ({"kind": "a", "priority": "high"}, "priority:"),
    ({"kind": "a", "max_retries": -1}, "max_retries:"),
    ({"kind": "a", "timeout": 0}, "timeout:"),
    ({"kind": "a", "run_at": "2030-01-01T00:00:00"}, "run_at:"),
    ({"kind": "a", "run_at": "tomorrow"}, "run_at:"),
    ({"kind": "a", "depends_on": [0]}, "depends_on[0]:"),
    ({"kind": "a", "depends_on": [12345]}, "depends_on"),
    ({"kind": "a", "retry_policy": {"strategy": "random"}}, "retry_policy.strategy:"),
    ({"kind": "a", "retry_policy": {"base_delay": -1}}, "retry_policy.base_delay:"),
    ({"kind": "a", "idempotency_key": ""}, "idempotency_key:"),
    ([{"kind": "a"}], "array"),
])
async def test_invalid_fields_are_422_naming_the_field(
    client: httpx.AsyncClient, body: Any, names: str
) -> None:
    response = await client.post("/v1/jobs", json=body)
    message = assert_error(response, 422, "validation_failed")
    assert names in message


async def test_a_payload_the_database_refuses_is_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    response = await client.post("/v1/jobs", json={"kind": "a", "payload": {"x": "\u0000"}})
    assert_error(response, 422, "validation_failed")


@pytest.mark.parametrize("params", [
    {"limit": "0"}, {"limit": "1001"}, {"limit": "ten"}, {"after": "-1"}, {"after": "x"},
    {"after": str(2**63)}, {"status": "done"}, {"kind": "k" * 101},
    {"kind": "has space"}, {"queue": "\u0000"},
])
async def test_bad_list_parameters_are_422_naming_them(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/v1/jobs", params=params)
    assert assert_error(response, 422, "validation_failed").startswith(next(iter(params)))


@pytest.mark.parametrize("path", ["", "/history", "/timeline", "/cancel", "/retry"])
async def test_unknown_job_is_404(client: httpx.AsyncClient, path: str) -> None:
    method = "POST" if path in ("/cancel", "/retry") else "GET"
    response = await client.request(method, f"/v1/jobs/424242{path}")
    assert "job 424242 not found" in assert_error(response, 404, "job_not_found")


@pytest.mark.parametrize("path", [
    "/v1/jobs/abc", "/v1/jobs/-1", "/v1/jobs/1.5", f"/v1/jobs/{2**64}", "/v1/nothing", "/",
])
async def test_unknown_paths_and_impossible_ids_are_404(
    client: httpx.AsyncClient, path: str
) -> None:
    assert_error(await client.get(path), 404)


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("DELETE", "/v1/jobs", "GET, HEAD, POST"),
    ("PUT", "/v1/jobs/1", "GET, HEAD"),
    ("GET", "/v1/jobs/1/cancel", "POST"),
    ("POST", "/v1/events", "GET, HEAD"),
])
async def test_wrong_method_is_405_with_allow(
    client: httpx.AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == allowed


async def test_body_over_the_limit_is_413_by_content_length(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = {"kind": "a", "payload": {"blob": "x" * 2000}}
    response = await client.post("/v1/jobs", json=body)
    assert "1000 bytes" in assert_error(response, 413, "payload_too_large")


async def test_body_over_the_limit_is_413_when_streamed(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        yield b'{"kind": "a", "payload": {"blob": "'
        for _ in range(20):
            yield b"x" * 100
        yield b'"}}'

    response = await client.post("/v1/jobs", content=chunks(), headers=JSON)
    assert_error(response, 413, "payload_too_large")


async def test_body_over_the_limit_on_cancel_is_413(
    client: httpx.AsyncClient, job_id: int
) -> None:
    response = await client.post(f"/v1/jobs/{job_id}/cancel", content=b"x" * 2000)
    assert_error(response, 413, "payload_too_large")
    assert (await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "pending"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_non_json_body_is_415(
    client: httpx.AsyncClient, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/v1/jobs", content=b'{"kind": "a"}', headers=headers)
    assert_error(response, 415, "unsupported_media_type")


@pytest.mark.parametrize(("params", "headers", "name"), [
    ({"after": "yesterday"}, {}, "after"),
    ({"after": "1-2-3"}, {}, "after"),
    ({"after": f"{10**21}-1"}, {}, "after"),
    ({"limit": "5000"}, {}, "limit"),
    ({}, {"accept": "text/event-stream", "last-event-id": "nope"}, "Last-Event-ID"),
])
async def test_bad_event_cursors_are_422(
    client: httpx.AsyncClient, params: dict[str, str], headers: dict[str, str], name: str
) -> None:
    response = await client.get("/v1/events", params=params, headers=headers)
    assert assert_error(response, 422, "validation_failed").startswith(name)


async def test_unreachable_database_is_503_and_health_still_answers() -> None:
    # min_size=0: the pool connects lazily, so every query meets a closed port.
    pool = await create_pool("postgresql://postgres@127.0.0.1:1/none", "api", min_size=0,
                             connect_timeout=2)
    try:
        async with app_client(pool) as client:
            assert (await client.get("/healthz")).status_code == 200
            for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/1"),
                                 ("GET", "/v1/events"), ("POST", "/v1/jobs/1/cancel")):
                response = await client.request(method, path)
                assert "database is unavailable" in assert_error(
                    response, 503, "database_unavailable")
            created = await client.post("/v1/jobs", json={"kind": "a"})
            assert_error(created, 503, "database_unavailable")
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"ready": False,
                                    "checks": {"database": False, "listener": False},
                                    "paused_queues": []}
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200
            assert 'jobengine_jobs{status="pending"}' not in metrics.text
    finally:
        await pool.close()


# -- JSON nested too deeply: a 422, never a 500 ---------------------------------------------

DEEP = 100_000
TOO_DEEP = (f"body: JSON nested too deeply (arrays and objects more than {MAX_JSON_DEPTH} "
            "levels deep)")


def _nested_object(depth: int) -> str:
    """`{"a": {"a": ... 1}}`, `depth` objects deep."""
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.fixture(scope="module")
async def roomy(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the default body limit (1 MiB): room for deep nesting."""
    async with app_client(pool) as c:
        yield c


@pytest.mark.parametrize("body", [
    "[" * DEEP,
    "[" * DEEP + "]" * DEEP,
    '{"kind": "x", "payload": ' + _nested_object(DEEP) + "}",
    '{"kind": "x", "payload": ' + _nested_object(MAX_JSON_DEPTH) + "}",  # one level too many
    '{"kind": "x", "retry_policy": ' + _nested_object(600) + "}",
    '{"kind": "x", "depends_on": ' + "[" * 600 + "]" * 600 + "}",
], ids=["unclosed-arrays", "arrays", "payload", "payload-at-the-limit", "retry-policy",
        "depends-on"])
async def test_json_nested_too_deeply_is_422(roomy: httpx.AsyncClient, body: str) -> None:
    response = await roomy.post("/v1/jobs", content=body.encode(), headers=JSON)
    assert assert_error(response, 422, "validation_failed") == TOO_DEEP


async def test_json_nested_just_within_the_limit_gets_past_the_depth_check(
    roomy: httpx.AsyncClient
) -> None:
    # 512 levels counting the body: decoded and checked, then refused for its kind.
    body = '{"kind": "has space", "payload": ' + _nested_object(MAX_JSON_DEPTH - 1) + "}"
    response = await roomy.post("/v1/jobs", content=body.encode(), headers=JSON)
    assert assert_error(response, 422, "validation_failed").startswith("kind:")


async def test_a_payload_nested_to_the_limit_is_stored_and_read_back(db_dsn: str) -> None:
    payload = json.loads(_nested_object(MAX_JSON_DEPTH - 1))
    own = await create_pool(db_dsn, actor="tests", min_size=1, max_size=2)  # not the module's
    try:
        async with app_client(own) as client:
            created = await client.post("/v1/jobs", json={"kind": "deep", "payload": payload})
            assert created.status_code == 201, created.text
            shown = await client.get(f"/v1/jobs/{created.json()['id']}")
            assert shown.status_code == 200
            assert shown.json()["payload"] == payload
            listed = await client.get("/v1/jobs")
            assert listed.status_code == 200
    finally:
        await own.close()
