"""A stateful property test: daemons, an app, an operator, a reaper and a lock holder, interleaved.

Hypothesis drives several real connections to one real database through any
order of claims, outcomes (some of them stale), renewals, reaps, operator
cancels and retries, hand-written UPDATEs (legal, illegal and forged) and a
transaction that holds a job's row. After every step the database must
still keep its promises:

- every job's history is a legal path through the transition table, ending
  at the job's status, with one timeline event per history row;
- a running job holds a bounded lease, and only its current attempt;
- a write by a worker succeeds only for the attempt it holds right now
  (a stale worker never overwrites a newer attempt's outcome).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import asyncpg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from jobengine.domain import TRANSITIONS, JobStatus
from tests.dbutil import admin, dsn_with_database

pytestmark = pytest.mark.slow

T = TypeVar("T")
OWNERS = ("d1", "d2")
STATUSES = [s.value for s in JobStatus]
#: What a refused write raises: the database's checks, role refusals, a busy row.
REFUSALS = (asyncpg.CheckViolationError, asyncpg.InsufficientPrivilegeError,
            asyncpg.LockNotAvailableError, asyncpg.ForeignKeyViolationError,
            asyncpg.exceptions.RaiseError)


class Lifecycle(RuleBasedStateMachine):
    """The model: which attempts each worker believes it holds (it may be wrong)."""

    server_dsn: str = ""
    template: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conns: dict[str, asyncpg.Connection] = {}
        self.jobs: list[int] = []
        self.believed: dict[str, set[tuple[int, int]]] = {o: set() for o in OWNERS}
        self.holder_open = False

    def run(self, aw: Awaitable[T]) -> T:
        return self.loop.run_until_complete(aw)

    @initialize()
    def connect(self) -> None:
        # A fresh database per example: a replay must see exactly what the first run saw.
        self.database = f"jobengine_t_{os.getpid()}_{uuid.uuid4().hex[:10]}"

        async def open_all() -> None:
            await admin(self.server_dsn,
                        f'CREATE DATABASE "{self.database}" TEMPLATE "{self.template}"')
            dsn = dsn_with_database(self.server_dsn, self.database)
            for name in (*OWNERS, "app", "operator", "reaper", "holder", "observer"):
                conn = await asyncpg.connect(dsn)
                await conn.execute(f"SET jobengine.actor = '{name}'")
                # A hand-written write never waits long on the holder's row.
                await conn.execute("SET lock_timeout = '100ms'")
                self.conns[name] = conn
        self.run(open_all())

    def teardown(self) -> None:
        async def close_all() -> None:
            for conn in self.conns.values():
                await conn.close()
            if self.conns:
                await admin(self.server_dsn, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self.run(close_all())
        self.loop.close()

    async def _try(self, who: str, sql: str, *args: Any) -> list[asyncpg.Record] | None:
        try:
            rows: list[asyncpg.Record] = await self.conns[who].fetch(sql, *args)
        except REFUSALS:
            return None
        return rows

    def job(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(self.jobs))

    # -- the app -------------------------------------------------------------------

    @rule(n=st.integers(1, 3), with_dep=st.booleans(), data=st.data())
    def insert(self, n: int, with_dep: bool, data: st.DataObject) -> None:
        deps = [self.job(data)] if with_dep and self.jobs else []
        rows = self.run(self.conns["app"].fetch(
            "INSERT INTO jobengine.jobs (kind, depends_on, max_retries)"
            " SELECT 'x', $1, 1 FROM generate_series(1, $2) RETURNING id", deps, n))
        self.jobs.extend(r["id"] for r in rows)

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), to=st.sampled_from(STATUSES),
          forged=st.sampled_from([None, "attempt = 9", "updated_at = '2001-01-01'",
                                  "lease_expires_at = 'infinity'", "status_reason = 'x'",
                                  "depends_on = '{}'", "released = 3"]))
    def hand_update(self, data: st.DataObject, to: str, forged: str | None) -> None:
        extra = f", {forged}" if forged else ""
        self.run(self._try("app", f"UPDATE jobengine.jobs SET status = $1{extra} WHERE id = $2",
                           to, self.job(data)))

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), column=st.sampled_from(
        ["attempt = attempt + 1", "status_reason = 'forged'", "lease_owner = 'thief'",
         "lease_expires_at = 'infinity'", "result = '{}'", "finished_at = now()"]))
    def forge_without_a_transition(self, data: st.DataObject, column: str) -> None:
        self.run(self._try("app", f"UPDATE jobengine.jobs SET {column} WHERE id = $1",
                           self.job(data)))

    # -- daemons -------------------------------------------------------------------

    @rule(owner=st.sampled_from(OWNERS), limit=st.integers(1, 4))
    def claim(self, owner: str, limit: int) -> None:
        rows = self.run(self.conns[owner].fetch(
            "SELECT id, attempt FROM jobengine.claim_v1($1, '{default}', '{x}', $2, '30 s')",
            owner, limit))
        self.believed[owner].update((r["id"], r["attempt"]) for r in rows)

    def _held(self, owner: str, data: st.DataObject) -> tuple[int, int] | None:
        held = sorted(self.believed[owner])
        return data.draw(st.sampled_from(held)) if held else None

    def _check_write(self, owner: str, key: tuple[int, int], before: asyncpg.Record | None,
                     outcome: str) -> None:
        holds = (before is not None and before["status"] == "running"
                 and before["attempt"] == key[1] and before["lease_owner"] == owner)
        if outcome == "done":
            assert holds, f"{owner} wrote for {key} though it did not hold it: {before}"
        if outcome == "moved":
            assert not holds, f"{owner}'s write for {key} was refused though it held it"
            self.believed[owner].discard(key)

    def _before(self, job_id: int) -> asyncpg.Record | None:
        return self.run(self.conns["observer"].fetchrow(
            "SELECT status::text, attempt, lease_owner FROM jobengine.jobs WHERE id = $1", job_id))

    @rule(owner=st.sampled_from(OWNERS), data=st.data(),
          how=st.sampled_from(["finish", "fail-retry", "fail-final", "release", "renew"]))
    def worker_writes(self, owner: str, data: st.DataObject, how: str) -> None:
        key = self._held(owner, data)
        if key is None:
            return
        before = self._before(key[0])
        ids, attempts = [key[0]], [key[1]]
        sql = {
            "finish": ("SELECT outcome FROM jobengine.finish_v1($1, $2, $3, '{null}')", ()),
            "fail-retry": ("SELECT outcome FROM jobengine.fail_v1($1, $2, $3, '{error}',"
                           " '{E: x}', '{0}')", ()),
            "fail-final": ("SELECT outcome FROM jobengine.fail_v1($1, $2, $3, '{error}',"
                           " '{E: x}', '{null}')", ()),
            "release": ("SELECT outcome FROM jobengine.release_v1($1, $2, $3)", ()),
            "renew": ("SELECT outcome FROM jobengine.renew_v1($1, $2, $3, '30 s')", ()),
        }[how][0]
        rows = self.run(self.conns[owner].fetch(sql, owner, ids, attempts))
        outcome = rows[0]["outcome"]
        self._check_write(owner, key, before, outcome)
        if outcome == "done" and how != "renew":
            self.believed[owner].discard(key)

    @precondition(lambda self: any(self.believed.values()))
    @rule(data=st.data())
    def moved_back_by_hand(self, data: st.DataObject) -> None:
        """A running job is put back by hand (so its worker may see it again, re-claimed)."""
        owner = data.draw(st.sampled_from([o for o in OWNERS if self.believed[o]]))
        key = self._held(owner, data)
        assert key is not None
        self.run(self._try("app", "UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1",
                           key[0]))

    @precondition(lambda self: any(self.believed.values()))
    @rule(data=st.data())
    def lease_runs_out(self, data: st.DataObject) -> None:
        """A worker stalls: its lease is cut to a moment and lapses (then the reaper may come)."""
        owner = data.draw(st.sampled_from([o for o in OWNERS if self.believed[o]]))
        key = self._held(owner, data)
        assert key is not None
        self.run(self._try(owner,
                           "UPDATE jobengine.jobs SET lease_expires_at = clock_timestamp()"
                           " + interval '1 ms' WHERE id = $1 AND attempt = $2 AND lease_owner = $3"
                           " AND status = 'running'", key[0], key[1], owner))

    @rule()
    def reap(self) -> None:
        async def reap() -> None:
            conn = self.conns["reaper"]
            # Poll briefly for leases cut a moment ago to have lapsed.
            await conn.execute("SELECT pg_sleep(0.002)")
            async with conn.transaction():
                rows = await conn.fetch("SELECT * FROM jobengine.reap_candidates_v1(100)")
                if rows:
                    await conn.fetch(
                        "SELECT * FROM jobengine.reap_v1($1, $2, $3, $4)",
                        [r["id"] for r in rows], [r["attempt"] for r in rows],
                        [r["lease_owner"] for r in rows],
                        [0.0 if r["attempt"] - r["released"] <= r["max_retries"] else None
                         for r in rows])
        self.run(reap())

    @rule()
    def scheduler(self) -> None:
        self.run(self.conns["reaper"].fetch("SELECT * FROM jobengine.cascade_v1(100)"))
        self.run(self.conns["reaper"].fetch("SELECT * FROM jobengine.promote_v1('{default}', 100)"))

    # -- the operator, and a lock holder --------------------------------------------------

    @precondition(lambda self: self.jobs)
    @rule(data=st.data(), verb=st.sampled_from(["cancel", "retry"]))
    def operator(self, data: st.DataObject, verb: str) -> None:
        job_id = self.job(data)
        sql = ("SELECT * FROM jobengine.cancel_v1($1)" if verb == "cancel"
               else "SELECT * FROM jobengine.retry_v1($1)")
        self.run(self._try("operator", sql, [job_id]))

    @precondition(lambda self: self.jobs and not self.holder_open)
    @rule(data=st.data())
    def hold_a_row(self, data: st.DataObject) -> None:
        async def hold() -> bool:
            # An app's cancel, left open (`BEGIN; UPDATE ...; SELECT pg_sleep(9)`).
            conn = self.conns["holder"]
            await conn.execute("BEGIN")
            try:
                await conn.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1",
                                   self.job(data))
            except REFUSALS:
                await conn.execute("ROLLBACK")
                return False
            return True
        self.holder_open = self.run(hold())

    @precondition(lambda self: self.holder_open)
    @rule()
    def let_go(self) -> None:
        self.run(self.conns["holder"].execute("ROLLBACK"))
        self.holder_open = False

    # -- what must always hold -------------------------------------------------------

    @invariant()
    def histories_are_legal_paths_with_one_event_each(self) -> None:
        if not self.conns:
            return
        for problem in self.run(_ledger_problems(self.conns["observer"])):
            raise AssertionError(problem)

    @invariant()
    def running_means_one_bounded_lease(self) -> None:
        if not self.conns:
            return
        bad = self.run(self.conns["observer"].fetch(
            "SELECT id, status::text, lease_owner, lease_expires_at FROM jobengine.jobs"
            " WHERE (status = 'running') <> (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)"
            "    OR lease_expires_at > statement_timestamp() + jobengine.max_lease_ttl()"))
        assert not bad, bad


async def _ledger_problems(conn: asyncpg.Connection) -> Iterator[str]:
    jobs = {r["id"]: r["status"] for r in await conn.fetch(
        "SELECT id, status::text AS status FROM jobengine.jobs")}
    history = await conn.fetch(
        "SELECT job_id, from_status::text AS f, to_status::text AS t FROM jobengine.job_history"
        " ORDER BY job_id, id")
    events = dict(await conn.fetch(
        "SELECT job_id, count(*) FROM jobengine.timeline_events"
        " WHERE event_type <> 'job.held' GROUP BY job_id"))
    steps: dict[int, list[tuple[str | None, str]]] = {}
    for r in history:
        steps.setdefault(r["job_id"], []).append((r["f"], r["t"]))
    problems: list[str] = []
    for job_id, status in jobs.items():
        path = steps.get(job_id, [])
        current: str | None = None
        for src, dst in path:
            if src != current or (JobStatus(src) if src else None, JobStatus(dst)) not in TRANSITIONS:
                problems.append(f"job {job_id}: {src} -> {dst} after {current}")
            current = dst
        if current != status:
            problems.append(f"job {job_id}: history ends at {current}, job is {status}")
        if events.get(job_id, 0) != len(path):
            problems.append(f"job {job_id}: {len(path)} history rows, {events.get(job_id)} events")
    return iter(problems)


def test_the_lifecycle_holds_whatever_the_interleaving(server_dsn: str, template_db: str) -> None:
    Lifecycle.server_dsn, Lifecycle.template = server_dsn, template_db
    run = Lifecycle.TestCase
    run.settings = settings(max_examples=60, stateful_step_count=50, deadline=None,
                            suppress_health_check=[HealthCheck.too_slow])
    run().runTest()
