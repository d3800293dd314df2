"""The operator CLI, driven as a user would: `jobengine ...` in a subprocess, exit codes, output."""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from subprocess import CompletedProcess

import anyio
import asyncpg
import pytest

from jobengine.cli.main import main
from jobengine.domain import JobSpec
from jobengine.store import JobStore
from tests.apiutil import failed_job, row_count

pytestmark = pytest.mark.anyio

_SCRIPT = Path(sys.executable).with_name("jobengine")
JOBENGINE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "jobengine.cli.main"]
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere"


def clean_env() -> dict[str, str]:
    """The environment without any JOBENGINE_* setting of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBENGINE_")}
    env["NO_COLOR"] = "1"
    return env


async def cli(*args: str, dsn: str | None = None, stdin: bytes | None = None) -> CompletedProcess[bytes]:
    command = [*JOBENGINE, *args, *(["--dsn", dsn] if dsn else [])]
    return await anyio.run_process(command, input=stdin, check=False, env=clean_env())


def out(result: CompletedProcess[bytes]) -> str:
    return result.stdout.decode()


def err(result: CompletedProcess[bytes]) -> str:
    return result.stderr.decode()


def one_error_line(result: CompletedProcess[bytes], code: int, *fragments: str) -> None:
    assert result.returncode == code, (out(result), err(result))
    lines = err(result).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jobengine: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


async def test_submit_prints_only_the_new_id_and_stores_every_option(
    db_dsn: str, tmp_path: Path
) -> None:
    first = await cli("submit", "email", dsn=db_dsn)
    assert first.returncode == 0, err(first)
    assert out(first) == "1\n"
    payload = tmp_path / "payload.json"
    payload.write_text('{"to": "a@example.com"}')
    before = datetime.now(UTC)
    second = await cli(
        "submit", "report", "--payload", f"@{payload}", "--queue", "nightly", "--priority", "7",
        "--run-at", "+5m", "--depends-on", "1", "--max-retries", "1", "--timeout", "90",
        "--requires-network", "--idempotency-key", "report-1", dsn=db_dsn,
    )
    assert (second.returncode, out(second)) == (0, "2\n"), err(second)
    job = json.loads(out(await cli("show", "2", "--json", dsn=db_dsn)))
    assert job["payload"] == {"to": "a@example.com"}
    assert (job["kind"], job["queue"], job["priority"], job["status"]) == (
        "report", "nightly", 7, "pending")
    assert (job["depends_on"], job["max_retries"], job["timeout"]) == ([1], 1, 90.0)
    assert job["requires_network"] is True
    assert job["idempotency_key"] == "report-1"
    run_at = datetime.fromisoformat(job["run_at"])
    assert before + timedelta(minutes=5) <= run_at <= datetime.now(UTC) + timedelta(minutes=5)


async def test_submit_reads_the_payload_from_stdin_and_takes_comma_lists(db_dsn: str) -> None:
    for _ in range(2):
        assert (await cli("submit", "a", dsn=db_dsn)).returncode == 0
    result = await cli("submit", "b", "--payload", "@-", "--depends-on", "1,2",
                       "--run-at", "2030-01-01T09:00:00+00:00", dsn=db_dsn, stdin=b'{"n": 1}')
    assert result.returncode == 0, err(result)
    job = json.loads(out(await cli("show", out(result).strip(), "--json", dsn=db_dsn)))
    assert (job["payload"], job["depends_on"]) == ({"n": 1}, [1, 2])
    assert job["run_at"] == "2030-01-01T09:00:00Z"


async def test_submit_with_a_known_idempotency_key_creates_nothing(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    first = await cli("submit", "email", "--idempotency-key", "k", dsn=db_dsn)
    again = await cli("submit", "email", "--idempotency-key", "k", dsn=db_dsn)
    assert out(first) == out(again) == "1\n"
    assert "already has idempotency key 'k'" in err(again)
    assert await row_count(pool) == 1


@pytest.mark.parametrize(("args", "code", "fragment"), [
    (["--payload", "{not json"], 2, "not valid JSON"),
    (["--payload", "[1, 2]"], 2, "must be a JSON object"),
    (["--payload", "@/nonexistent/file.json"], 2, "cannot read the payload"),
    (["--payload", "[" * 100_000], 2, "JSON nested too deeply"),
    (["--payload", '{"a": ' * 512 + "1" + "}" * 512], 2, "more than 511 levels deep"),
    (["--run-at", "soon"], 2, "--run-at 'soon'"),
    (["--depends-on", "1,x"], 2, "'x' is not a job id"),
    (["--timeout", "0"], 2, "--timeout"),
    (["--priority", str(2**40)], 2, "--priority"),
    (["--depends-on", "99"], 1, "depends on job 99, which does not exist"),
])
async def test_bad_submit_input_is_one_line_and_no_row(
    db_dsn: str, pool: asyncpg.Pool, args: list[str], code: int, fragment: str
) -> None:
    one_error_line(await cli("submit", "email", *args, dsn=db_dsn), code, fragment)
    assert await row_count(pool) == 0


async def test_bad_kind_is_refused_by_the_database_with_one_line(
    db_dsn: str, pool: asyncpg.Pool
) -> None:
    one_error_line(await cli("submit", "bad kind!", dsn=db_dsn), 1, "kind 'bad kind!' is invalid")
    assert await row_count(pool) == 0


async def test_ls_prints_a_table_pages_and_filters(db_dsn: str) -> None:
    for kind in ("email", "report", "email"):
        await cli("submit", kind, dsn=db_dsn)
    await cli("cancel", "3", dsn=db_dsn)
    table = await cli("ls", dsn=db_dsn)
    assert table.returncode == 0
    lines = out(table).splitlines()
    assert lines[0].split()[:4] == ["ID", "KIND", "QUEUE", "STATUS"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["1", "email", "default", "pending"], ["2", "report", "default", "pending"],
        ["3", "email", "default", "cancelled"]]
    page = json.loads(out(await cli("ls", "--json", "--limit", "2", dsn=db_dsn)))
    assert ([j["id"] for j in page["jobs"]], page["next"]) == ([1, 2], 2)
    rest = json.loads(out(await cli("ls", "--json", "--after", "2", dsn=db_dsn)))
    assert ([j["id"] for j in rest["jobs"]], rest["next"]) == ([3], None)
    more = await cli("ls", "--limit", "2", dsn=db_dsn)
    assert "more: jobengine ls --after 2" in err(more)
    emails = json.loads(out(await cli("ls", "--json", "--kind", "email", "--status", "pending",
                                      dsn=db_dsn)))
    assert [j["id"] for j in emails["jobs"]] == [1]
    empty = await cli("ls", "--queue", "nothing", dsn=db_dsn)
    assert (empty.returncode, out(empty)) == (0, "")


async def test_show_cancel_history_and_timeline(db_dsn: str) -> None:
    await cli("submit", "email", "--payload", '{"to": "x"}', dsn=db_dsn)
    shown = await cli("show", "1", dsn=db_dsn)
    assert shown.returncode == 0
    fields = dict(line.split(None, 1) for line in out(shown).splitlines() if line.strip())
    assert fields["kind"].strip() == "email"
    assert fields["status"].strip() == "pending"
    assert json.loads(fields["payload"]) == {"to": "x"}

    cancelled = await cli("cancel", "1", dsn=db_dsn)
    assert (cancelled.returncode, out(cancelled)) == (0, "job 1: pending -> cancelled\n")
    one_error_line(await cli("cancel", "1", dsn=db_dsn), 1, "illegal transition cancelled -> cancelled")
    one_error_line(await cli("retry", "1", dsn=db_dsn), 1, "cancelled -> scheduled")

    history = out(await cli("history", "1", dsn=db_dsn)).splitlines()
    assert history[0].split() == ["WHEN", "(UTC)", "FROM", "TO", "ATTEMPT", "REASON", "ACTOR"]
    assert history[2].split()[2:] == ["pending", "cancelled", "0", "cancelled_by_user", "cli"]
    as_json = json.loads(out(await cli("history", "1", "--json", dsn=db_dsn)))
    assert [(h["from_status"], h["to_status"], h["actor"]) for h in as_json["history"]] == [
        (None, "pending", "cli"), ("pending", "cancelled", "cli")]

    timeline = out(await cli("timeline", "1", dsn=db_dsn))
    assert "job.created" in timeline
    assert "job.cancelled" in timeline
    events = json.loads(out(await cli("timeline", "1", "--json", dsn=db_dsn)))["timeline"]
    assert [e["event_type"] for e in events] == ["job.created", "job.cancelled"]


async def test_retry_of_a_failed_job(db_dsn: str, pool: asyncpg.Pool) -> None:
    job = await failed_job(pool, kind="cli-retry")
    result = await cli("retry", str(job.id), "--json", dsn=db_dsn)
    assert result.returncode == 0, err(result)
    assert json.loads(out(result))["status"] == "scheduled"


async def test_retry_says_which_dependents_stay_cancelled(db_dsn: str, pool: asyncpg.Pool) -> None:
    store = JobStore(pool)
    job = await failed_job(pool, kind="cli-dag")
    child, _ = await store.insert(JobSpec(kind="cli-dag", depends_on=[job.id]))
    await store.cascade()
    result = await cli("retry", str(job.id), dsn=db_dsn)
    assert result.returncode == 0, err(result)
    assert out(result).splitlines() == [
        f"job {job.id}: failed -> scheduled",
        "dependents that stay cancelled (cancelled is final; submit them again to run them): "
        f"{child.id}",
    ]


@pytest.mark.parametrize("verb", ["show", "history", "timeline", "cancel", "retry"])
async def test_unknown_ids_are_one_line(db_dsn: str, verb: str) -> None:
    one_error_line(await cli(verb, "4242", dsn=db_dsn), 1, "job 4242 not found")


@pytest.mark.parametrize("args", [["ls"], ["watch"]])
async def test_no_database_is_one_clear_line(args: list[str]) -> None:
    one_error_line(await cli(*args, dsn=UNREACHABLE), 1, "cannot connect to the database")


# In-process from here on (same parser and code, no interpreter start-up per case).

@pytest.mark.parametrize("verb", ["show", "history", "timeline", "cancel", "retry"])
@pytest.mark.parametrize("bad", ["abc", "0", "-3", str(2**63)])
def test_malformed_ids_are_refused_before_any_connection(
    verb: str, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([verb, bad, "--dsn", UNREACHABLE]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("jobengine: error: ")
    assert "is not a job id" in captured.err


@pytest.mark.parametrize("args", [["show", "1"], ["submit", "email"], ["cancel", "1"]])
def test_no_database_in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*args, "--dsn", UNREACHABLE]) == 1
    assert "cannot connect to the database" in capsys.readouterr().err


@pytest.mark.parametrize(
    "verb", ["submit", "show", "ls", "cancel", "retry", "history", "timeline", "watch", "api"]
)
def test_every_verb_has_help_with_an_example(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([verb, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text
    assert f"jobengine {verb}" in text
