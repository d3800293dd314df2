"""API authentication: bearer tokens configured by SHA-256, with read/write scopes."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import Any

import asyncpg
import pytest

from jobengine.api.config import HttpSettings, TokenSettings
from jobengine.api.tokens import TokenAuthorizer, authorizer_for, hash_token, is_loopback
from jobengine.domain import ConfigError
from tests.apiutil import READER, TOKENS, WRITER, app_client, assert_error, row_count

pytestmark = pytest.mark.anyio


# Every operation, with what it needs (None: public).
OPERATIONS: list[tuple[str, str, str | None, dict[str, Any] | None]] = [
    ("POST", "/v1/jobs", "write", {"kind": "email"}),
    ("GET", "/v1/jobs", "read", None),
    ("GET", "/v1/jobs/{id}", "read", None),
    ("GET", "/v1/jobs/{id}/history", "read", None),
    ("GET", "/v1/jobs/{id}/timeline", "read", None),
    ("POST", "/v1/jobs/{id}/cancel", "write", None),
    ("POST", "/v1/jobs/{id}/retry", "write", None),
    ("GET", "/v1/events", "read", None),
    ("GET", "/metrics", "read", None),
    ("GET", "/healthz", None, None),
    ("GET", "/readyz", None, None),
    ("GET", "/openapi.json", None, None),
]


@pytest.fixture
async def client(pool: asyncpg.Pool) -> Any:
    async with app_client(pool, http=HttpSettings(tokens=TOKENS),
                          authorizer=TokenAuthorizer(TOKENS)) as c:
        yield c


async def _job(client: Any) -> int:
    created = await client.post("/v1/jobs", json={"kind": "email"},
                                headers={"Authorization": f"Bearer {WRITER}"})
    assert created.status_code == 201
    return int(created.json()["id"])


def _call(client: Any, method: str, path: str, body: dict[str, Any] | None,
          headers: dict[str, str]) -> Any:
    headers = {"Accept": "application/json", **headers}
    if body is not None:
        return client.request(method, path, json=body, headers=headers)
    return client.request(method, path, headers=headers)


@pytest.mark.parametrize(("method", "path", "needs", "body"), OPERATIONS)
async def test_every_endpoint_checks_its_scope(
    client: Any, pool: asyncpg.Pool, method: str, path: str, needs: str | None,
    body: dict[str, Any] | None,
) -> None:
    job_id = await _job(client)
    url = path.replace("{id}", str(job_id))
    rows = await row_count(pool)
    without = await _call(client, method, url, body, {})
    wrong = await _call(client, method, url, body, {"Authorization": "Bearer not-a-token"})
    if needs is None:
        assert without.status_code == 200
        return
    for response in (without, wrong):
        message = assert_error(response, 401, "unauthorized")
        assert "token" in message
        assert response.headers["www-authenticate"].startswith("Bearer")
    reader = await _call(client, method, url, body, {"Authorization": f"Bearer {READER}"})
    if needs == "write":
        assert "does not have the 'write' scope" in assert_error(reader, 403, "forbidden")
        assert await row_count(pool) == rows  # refused requests change nothing
    else:
        assert reader.status_code == 200, reader.text
    writer = await _call(client, method, url, body, {"Authorization": f"Bearer {WRITER}"})
    assert writer.status_code in (200, 201, 409), writer.text  # 409: retry of a pending job


async def test_malformed_authorization_headers_are_401(client: Any) -> None:
    for header in ("Basic abc", "Bearer", "Bearer ", WRITER, f"Token {WRITER}"):
        response = await client.get("/v1/jobs", headers={"Authorization": header})
        assert_error(response, 401, "unauthorized")


def test_token_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="64 hex digits"):
        TokenAuthorizer({"x": TokenSettings(sha256="not-a-digest", scopes=["read"])})
    with pytest.raises(ConfigError, match="scopes must be"):
        TokenAuthorizer({"x": TokenSettings(sha256="a" * 64, scopes=["admin"])})
    with pytest.raises(ConfigError, match="scopes must be"):
        TokenAuthorizer({"x": TokenSettings(sha256="a" * 64, scopes=[])})
    with pytest.raises(ConfigError, match="token name"):
        TokenAuthorizer({"bad name": TokenSettings(sha256="a" * 64)})


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.5"])
def test_without_tokens_loopback_is_allowed(host: str) -> None:
    assert is_loopback(host)
    authorizer_for({}, host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "api.example.com"])
def test_without_tokens_a_non_loopback_address_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="without authentication"):
        authorizer_for({}, host)
    assert isinstance(authorizer_for(TOKENS, host), TokenAuthorizer)


def test_token_new_prints_a_token_once_and_its_config_lines() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobengine.cli.main", "token", "new", "ops", "--scope", "write"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    token = re.search(r"token \(shown only now, keep it secret\): (\S+)", result.stdout)
    digest = re.search(r'sha256 = "([0-9a-f]{64})"', result.stdout)
    assert token
    assert digest
    assert hash_token(token.group(1)) == digest.group(1)
    assert "[http.tokens.ops]" in result.stdout
    assert 'scopes = ["write"]' in result.stdout
    again = subprocess.run(
        [sys.executable, "-m", "jobengine.cli.main", "token", "new", "ops"],
        capture_output=True, text=True, timeout=60)
    assert token.group(1) not in again.stdout  # fresh every time


def test_api_refuses_a_public_address_without_tokens(db_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobengine.cli.main", "api", "--dsn", db_dsn,
         "--listen", "0.0.0.0:0"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "refusing to serve the API on 0.0.0.0 without authentication" in result.stderr


async def test_tokens_are_never_logged(pool: asyncpg.Pool) -> None:
    from structlog.testing import capture_logs

    with capture_logs() as logs:
        async with app_client(pool, http=HttpSettings(tokens=TOKENS),
                              authorizer=TokenAuthorizer(TOKENS)) as c:
            await c.get("/v1/jobs", headers={"Authorization": f"Bearer {WRITER}"})
            await c.get("/v1/jobs", headers={"Authorization": "Bearer wrong-token"})
    text = repr(logs)
    assert WRITER not in text
    assert "wrong-token" not in text
