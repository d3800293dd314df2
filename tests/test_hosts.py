"""Daemons on several hosts, and one host cut off from the database while its jobs run.

Each daemon runs in a network namespace of its own (`tests.netns.Host`),
joined to this one by a veth pair; the database is a cluster of the embedded
binaries listening on this side of every pair. Host 1's cable is pulled
while it runs four jobs: two that end during the cut (their outcomes cannot
be written) and two that would run on for long. It must stop its handlers
before its leases expire; hosts 2 and 3 take the jobs over once they have;
when the cable is back, host 1's late outcomes are refused and it claims again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from jobengine.store import migrate
from tests.daemon_helpers import assert_every_history_is_a_valid_path, daemon_ready, read_spans
from tests.dbutil import wait_for
from tests.netns import Host, can_make_namespaces, daemon_env, spawn, stop
from tests.servers import Clusters
from tests.test_cli import JOBENGINE

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not can_make_namespaces(), reason="needs root and iproute2"),
]

LEASE_TTL = 6.0  # renewed every 2 s; a handler is stopped 1 s before its lease could expire


@pytest.fixture
def hosts() -> Iterator[list[Host]]:
    made: list[Host] = []
    try:
        for n in (1, 2, 3):
            made.append(Host(n).__enter__())
        yield made
    finally:
        for host in made:
            host.__exit__()


def log_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_a_host_cut_off_fences_itself_and_its_late_outcomes_are_refused(
    hosts: list[Host], clusters: Clusters, tmp_path: Path
) -> None:
    db = clusters.new("db", host=hosts[0].db_address).initdb(hba=("host all all 10.214.0.0/16 trust",))
    db.start(listen_addresses="'" + ",".join(h.db_address for h in hosts) + "'")
    conn = await asyncpg.connect(db.dsn())
    await conn.execute("CREATE DATABASE jobs")
    await conn.close()
    conn = await asyncpg.connect(db.dsn("jobs"))
    procs = []
    try:
        await migrate(conn)
        spans = tmp_path / "spans.log"

        def start(host: Host, queues: str) -> None:
            env = daemon_env(f"postgresql://postgres@{host.db_address}:{db.port}/jobs",
                             JOBENGINE_DAEMON_ID=f"h{host.n}", JOBENGINE_DAEMON_QUEUES=queues,
                             JOBENGINE_DAEMON_LEASE_TTL=str(LEASE_TTL),
                             JOBENGINE_DAEMON_CONCURRENCY="4",
                             JOBENGINE_HANDLERS_NAP="tests.handlers:nap",
                             JOBENGINE_TEST_SPANS=str(spans))
            procs.append(spawn(host.argv([*JOBENGINE, "run"]), env, tmp_path / f"h{host.n}.log"))

        start(hosts[0], "default,h1")
        await daemon_ready(tmp_path / "h1.log")
        short = [await conn.fetchval(
            "INSERT INTO jobengine.jobs (kind, payload) VALUES ('nap', '{\"sleep\": 2}')"
            " RETURNING id") for _ in range(2)]
        long = [await conn.fetchval(
            "INSERT INTO jobengine.jobs (kind, payload) VALUES ('nap', '{\"sleep\": 60, \"then\": 0.2}')"
            " RETURNING id") for _ in range(2)]

        async def all_four_run_on_host_1() -> bool:
            started = {k[0] for k in read_spans(spans)} if spans.exists() else set()
            return set(short + long) <= started

        await wait_for(all_four_run_on_host_1, within=30, message="host 1 to run all four")
        for n in (1, 2):
            start(hosts[n], "default")
        for n in (2, 3):
            await daemon_ready(tmp_path / f"h{n}.log")

        hosts[0].cut()
        cut_at = time.time()

        async def taken_over() -> bool:
            return bool(await conn.fetchval(
                "SELECT count(*) = 4 FROM jobengine.jobs WHERE id = ANY($1) AND status = 'completed'",
                short + long))

        await wait_for(taken_over, within=60, message="hosts 2 and 3 to finish host 1's jobs")
        hosts[0].restore()

        # Host 1 stopped each handler before its lease expired (the reaper's
        # `lease_expired` row is written only after that), and before attempt 2 began.
        run = read_spans(spans)
        for job_id in long:
            stopped = run[(job_id, 1)][1]
            assert stopped is not None, f"job {job_id}: host 1 never stopped its handler"
            assert stopped < cut_at + LEASE_TTL
            reaped = await conn.fetchval(
                "SELECT occurred_at FROM jobengine.job_history WHERE job_id = $1 AND attempt = 1"
                " AND reason = 'lease_expired'", job_id)
            assert reaped is not None
            assert stopped < reaped.timestamp()
        for job_id in short + long:
            (_s1, e1), (s2, _e2) = run[(job_id, 1)], run[(job_id, 2)]
            assert e1 is not None
            assert e1 <= s2, f"job {job_id}: its two attempts overlapped"
        owners = {r["actor"] for r in await conn.fetch(
            "SELECT actor FROM jobengine.job_history WHERE job_id = ANY($1) AND to_status = 'completed'",
            short + long)}
        assert owners <= {"h2", "h3"}

        # The link is back: host 1's two late completions are refused, and it claims again.
        async def refused() -> set[int] | None:
            gone = {int(str(e["job_id"])) for e in log_events(tmp_path / "h1.log")
                    if e.get("event") == "outcome.refused"
                    or (e.get("event") == "outcome.resolved" and e.get("landed") is False)}
            return gone if set(short) <= gone else None

        await wait_for(refused, within=60, message="host 1's late outcomes to be refused")
        fresh = await conn.fetchval(
            "INSERT INTO jobengine.jobs (kind, queue) VALUES ('nap', 'h1') RETURNING id")

        async def host_1_claims_again() -> bool:
            return bool(await conn.fetchval(
                "SELECT status = 'completed' FROM jobengine.jobs WHERE id = $1", fresh))

        await wait_for(host_1_claims_again, within=60, message="host 1 to claim again")
        assert await conn.fetchval(
            "SELECT count(*) FROM jobengine.job_history WHERE to_status = 'completed'") == 5
        await assert_every_history_is_a_valid_path(conn)
        for proc in procs:
            assert stop(proc) == 0
    finally:
        for proc in procs:
            stop(proc)
        await conn.close()
