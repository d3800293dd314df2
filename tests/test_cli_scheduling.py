"""The scheduling verbs as an operator types them: `queues`, `pause`, `resume`, `schedule`, `limit`.

In-process (`main([...])`, the same parser and code as the installed
command) against a fresh database per test; one case goes through the real
`jobengine` executable to check what the shell sees.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from jobengine.cli.main import main
from tests.apiutil import berlin_spring_schedule
from tests.test_cli import cli, err, one_error_line, out


def run(capsys: pytest.CaptureFixture[str], dsn: str, *args: str) -> tuple[int, str, str]:
    """`jobengine ARGS --dsn DSN` in this process: (exit status, stdout, stderr)."""
    code = main([*args, "--dsn", dsn])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def ok(capsys: pytest.CaptureFixture[str], dsn: str, *args: str) -> str:
    code, stdout, stderr = run(capsys, dsn, *args)
    assert code == 0, stderr
    return stdout


def refused(capsys: pytest.CaptureFixture[str], dsn: str, *args: str) -> str:
    """Exit status 2 with exactly one line on stderr; returns it."""
    code, stdout, stderr = run(capsys, dsn, *args)
    assert (code, stdout) == (2, ""), stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("jobengine: error: ")
    return lines[0].removeprefix("jobengine: error: ")


def sql(dsn: str, query: str) -> Any:
    async def fetch() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def table(stdout: str) -> list[list[str]]:
    """A table's rows (the header first), split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines() if line.strip()]


def test_pause_then_queues_shows_it_paused(capsys: pytest.CaptureFixture[str], db_dsn: str) -> None:
    for args in (["report", "--queue", "nightly"], ["report", "--queue", "nightly"], ["email"]):
        ok(capsys, db_dsn, "submit", *args)
    rows = table(ok(capsys, db_dsn, "queues"))
    assert rows[0] == ["QUEUE", "PAUSED", "PENDING", "SCHEDULED", "RUNNING", "COMPLETED",
                       "FAILED", "CANCELLED", "OLDEST WAITING"]
    assert [r[:8] for r in rows[1:]] == [["default", "no", "1", "0", "0", "0", "0", "0"],
                                         ["nightly", "no", "2", "0", "0", "0", "0", "0"]]
    assert ok(capsys, db_dsn, "pause", "nightly") == (
        "queue nightly: paused (no new claims; running jobs finish)\n")
    rows = table(ok(capsys, db_dsn, "queues"))
    assert [(r[0], r[1]) for r in rows[1:]] == [("default", "no"), ("nightly", "yes")]
    assert rows[2][-1].endswith("s")  # the oldest waiting job's age
    overview = json.loads(ok(capsys, db_dsn, "queues", "--json"))
    assert [(q["name"], q["paused"], q["counts"]["pending"]) for q in overview["queues"]] == [
        ("default", False, 1), ("nightly", True, 2)]
    assert overview["limits"] == []
    assert ok(capsys, db_dsn, "resume", "nightly") == "queue nightly: resumed\n"
    assert sql(db_dsn, "SELECT paused FROM jobengine.queues WHERE name = 'nightly'") is False
    assert refused(capsys, db_dsn, "pause", "no such queue").startswith(
        "queue 'no such queue': name: ")


def test_schedule_add_then_ls_shows_the_next_three_ticks_across_dst(
    capsys: pytest.CaptureFixture[str], db_dsn: str
) -> None:
    cron, expected = berlin_spring_schedule(datetime.now(UTC))
    assert [t.hour for t in expected] == [2, 2, 1]  # 03:00 in Berlin: winter, winter, summer
    added = ok(capsys, db_dsn, "schedule", "add", "nightly-report", "--kind", "report",
               "--cron", cron, "--timezone", "Europe/Berlin", "--payload", '{"scope": "all"}')
    first = expected[0].strftime("%Y-%m-%d %H:%M:%S")
    assert added == f"schedule nightly-report: created; next tick {first} UTC\n"
    again = ok(capsys, db_dsn, "schedule", "add", "nightly-report", "--kind", "report",
               "--cron", cron, "--timezone", "Europe/Berlin", "--payload", '{"scope": "all"}')
    assert again.startswith("schedule nightly-report: unchanged;")
    ok(capsys, db_dsn, "schedule", "add", "beat", "--kind", "ping", "--every", "90s",
       "--queue", "pings", "--priority", "-3", "--limit-key", "net", "--paused")

    rows = table(ok(capsys, db_dsn, "schedule", "ls"))
    assert rows[0] == ["NAME", "TIMING", "KIND", "QUEUE", "ENABLED", "LAST TICK (UTC)",
                       "NEXT TICKS (UTC)"]
    ticks = ", ".join(t.strftime("%Y-%m-%d %H:%M:%S") for t in expected)
    assert rows[1:] == [
        ["beat", "every 90s", "ping", "pings", "no", "-", "(paused)"],
        ["nightly-report", f"cron {cron} (Europe/Berlin)", "report", "default", "yes", "-",
         ticks],
    ]
    listing = json.loads(ok(capsys, db_dsn, "schedule", "ls", "--json"))["schedules"]
    assert listing[1]["next_ticks"] == [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in expected]
    assert (listing[0]["every"], listing[0]["priority"], listing[0]["limit_key"],
            listing[0]["enabled"]) == (90.0, -3, "net", False)
    assert listing[1]["payload"] == {"scope": "all"}
    assert listing[1]["changed_by"] == "cli"

    assert ok(capsys, db_dsn, "schedule", "resume", "beat").startswith(
        "schedule beat: resumed; next tick ")
    assert ok(capsys, db_dsn, "schedule", "pause", "beat") == "schedule beat: paused\n"
    assert ok(capsys, db_dsn, "schedule", "rm", "beat") == (
        "schedule beat: removed (the jobs it created stay)\n")
    assert sql(db_dsn, "SELECT array_agg(name) FROM jobengine.schedules") == ["nightly-report"]


@pytest.mark.parametrize(("args", "field"), [
    (["--cron", "61 * * * *"], "cron"),
    (["--cron", "0 0 31 2 *"], "cron"),
    (["--cron", "0 3 * * *", "--timezone", "Mars/Olympus"], "timezone"),
    (["--cron", "0 3 * * *", "--timezone", "Europe"], "timezone"),
    (["--cron", "0 3 * * *", "--every", "5m"], "every"),
    ([], "cron"),
    (["--every", "0.5s"], "every"),
    (["--every", "0"], "every"),
    (["--every", "soon"], "every"),
    (["--every", "1m", "--priority", "high"], "priority"),
    (["--every", "1m", "--priority", str(2**40)], "priority"),
    (["--every", "1m", "--payload", "[1]"], "payload"),
    (["--every", "1m", "--payload", "{oops"], "payload"),
    (["--every", "1m", "--queue", "no queue"], "queue"),
])
def test_a_bad_schedule_is_one_line_exit_2_and_nothing_written(
    capsys: pytest.CaptureFixture[str], db_dsn: str, args: list[str], field: str
) -> None:
    line = refused(capsys, db_dsn, "schedule", "add", "x", "--kind", "report", *args)
    assert line.startswith(f"schedule x: {field}: "), line
    assert sql(db_dsn, "SELECT count(*) FROM jobengine.schedules") == 0


@pytest.mark.parametrize("verb", ["rm", "pause", "resume"])
def test_an_unknown_schedule_is_one_line_exit_2(
    capsys: pytest.CaptureFixture[str], db_dsn: str, verb: str
) -> None:
    assert refused(capsys, db_dsn, "schedule", verb, "nope") == (
        "schedule nope: name: no such schedule (see jobengine schedule ls)")


def test_limit_set_ls_rm_round_trip(capsys: pytest.CaptureFixture[str], db_dsn: str) -> None:
    assert ok(capsys, db_dsn, "limit", "set", "api", "--max-running", "5", "--rate", "10/1s") == (
        "limit api: max_running 5, rate 10/1s\n")
    assert ok(capsys, db_dsn, "limit", "set", "api", "--rate", "100/1m") == (
        "limit api: max_running 5, rate 100/1m\n")
    ok(capsys, db_dsn, "limit", "set", "mail", "--rate", "5/500ms")
    ok(capsys, db_dsn, "limit", "set", "hourly", "--rate", "60/h")
    ok(capsys, db_dsn, "submit", "fetch", "--limit-key", "api")
    assert json.loads(ok(capsys, db_dsn, "show", "1", "--json"))["limit_key"] == "api"

    rows = table(ok(capsys, db_dsn, "limit", "ls"))
    assert rows == [
        ["KEY", "MAX RUNNING", "RATE", "RUNNING", "RECENT STARTS", "WAITING", "HELD"],
        ["api", "5", "100/1m", "0", "0", "1", "0"],
        ["hourly", "-", "60/1h", "0", "0", "0", "0"],
        ["mail", "-", "5/500ms", "0", "0", "0", "0"],
    ]
    limits = json.loads(ok(capsys, db_dsn, "limit", "ls", "--json"))["limits"]
    assert [(x["key"], x["max_starts"], x["per"]) for x in limits] == [
        ("api", 100, 60.0), ("hourly", 60, 3600.0), ("mail", 5, 0.5)]
    assert sql(db_dsn, "SELECT per FROM jobengine.rate_limits WHERE key = 'mail'") == timedelta(
        milliseconds=500)

    assert ok(capsys, db_dsn, "limit", "rm", "api", "--rate") == "limit api: 1 limit removed\n"
    assert [r[:3] for r in table(ok(capsys, db_dsn, "limit", "ls"))[1:2]] == [["api", "5", "-"]]
    assert refused(capsys, db_dsn, "limit", "rm", "api", "--rate") == (
        "limit api: rate: no such rate limit (see jobengine limit ls)")
    assert ok(capsys, db_dsn, "limit", "rm", "api") == "limit api: 1 limit removed\n"
    assert refused(capsys, db_dsn, "limit", "rm", "api") == (
        "limit api: key: no such limit (see jobengine limit ls)")
    assert [r[0] for r in table(ok(capsys, db_dsn, "limit", "ls"))[1:]] == ["hourly", "mail"]


@pytest.mark.parametrize(("args", "field"), [
    ([], "give --max-running"),
    (["--max-running", "0"], "max_running: "),
    (["--max-running", "-2"], "max_running: "),
    (["--max-running", "many"], "max_running: "),
    (["--max-running", "3", "--rate", "10"], "rate: "),
    (["--rate", "10 per second"], "rate: "),
    (["--rate", "0/1s"], "rate: "),
    (["--rate", "10/0s"], "rate: "),
    (["--rate", "10/40d"], "rate: "),
])
def test_a_bad_limit_is_one_line_exit_2_and_nothing_written(
    capsys: pytest.CaptureFixture[str], db_dsn: str, args: list[str], field: str
) -> None:
    assert refused(capsys, db_dsn, "limit", "set", "api", *args).startswith(f"limit api: {field}")
    assert sql(db_dsn, "SELECT (SELECT count(*) FROM jobengine.concurrency_limits)"
                       " + (SELECT count(*) FROM jobengine.rate_limits)") == 0


@pytest.mark.parametrize("verb", [
    ["queues"], ["pause"], ["resume"], ["schedule", "ls"], ["schedule", "add"], ["schedule", "rm"],
    ["schedule", "pause"], ["schedule", "resume"], ["limit", "ls"], ["limit", "set"],
    ["limit", "rm"],
])
def test_every_scheduling_verb_has_help_with_an_example(
    verb: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*verb, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text
    assert f"jobengine {verb[0]}" in text


@pytest.mark.anyio
async def test_the_shell_sees_exit_2_and_one_line(db_dsn: str) -> None:
    result = await cli("schedule", "add", "x", "--kind", "report", "--every", "0.5s", dsn=db_dsn)
    one_error_line(result, 2, "schedule x: every: must be at least 1 second")
    assert out(result) == ""
    done = await cli("limit", "set", "api", "--rate", "10/1s", dsn=db_dsn)
    assert (done.returncode, out(done)) == (0, "limit api: max_running -, rate 10/1s\n"), err(done)
