"""The database guards the lifecycle and records every change, whoever makes it.

These tests write plain SQL, as an app or an operator in psql would.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import anyio
import asyncpg
import pytest

from jobengine.domain import TRANSITIONS, JobStatus
from jobengine.store.pool import connect
from tests.dbutil import wait_for

pytestmark = pytest.mark.anyio

STATUSES = list(JobStatus)
ENVELOPE_KEYS = {
    "event_id", "event_type", "schema_version", "occurred_at", "job_id", "kind", "queue",
    "from_status", "to_status", "attempt", "actor", "reason",
}

# How to bring a fresh job to each status with plain SQL (each step allowed).
PATH_TO = {
    JobStatus.PENDING: [],
    JobStatus.SCHEDULED: ["scheduled"],
    JobStatus.RUNNING: ["scheduled", "running"],
    JobStatus.COMPLETED: ["scheduled", "running", "completed"],
    JobStatus.FAILED: ["scheduled", "running", "failed"],
    JobStatus.CANCELLED: ["cancelled"],
}


async def insert_job(conn: asyncpg.Connection, kind: str = "email", **cols: Any) -> int:
    names = ["kind", *cols]
    values = [kind, *cols.values()]
    placeholders = ", ".join(f"${i}" for i in range(1, len(values) + 1))
    job_id: int = await conn.fetchval(
        f"INSERT INTO jobengine.jobs ({', '.join(names)}) VALUES ({placeholders}) RETURNING id",
        *values,
    )
    return job_id


async def job_in(conn: asyncpg.Connection, status: JobStatus) -> int:
    job_id = await insert_job(conn)
    for step in PATH_TO[status]:
        await conn.execute("UPDATE jobengine.jobs SET status = $1 WHERE id = $2", step, job_id)
    return job_id


async def counts(conn: asyncpg.Connection, job_id: int) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM jobengine.job_history WHERE job_id = $1) AS h,"
        "       (SELECT count(*) FROM jobengine.timeline_events WHERE job_id = $1) AS t",
        job_id,
    )
    return row["h"], row["t"]


class Listener:
    """A second connection LISTENing on jobengine_events."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.conn: asyncpg.Connection | None = None

    async def start(self, dsn: str) -> None:
        self.conn = await asyncpg.connect(dsn)
        await self.conn.add_listener("jobengine_events", self._on)

    def _on(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self.raw.append(payload)
        self.messages.append(json.loads(payload))

    async def close(self) -> None:
        assert self.conn is not None
        await self.conn.close()

    async def expect(self, n: int) -> list[dict[str, Any]]:
        async def enough() -> bool:
            return len(self.messages) >= n

        await wait_for(enough, message=f"{n} notifications")
        return self.messages


@pytest.fixture
async def listener(db_dsn: str) -> Any:
    lst = Listener()
    await lst.start(db_dsn)
    yield lst
    await lst.close()


@pytest.fixture
async def app(db_dsn: str) -> Any:
    """A plain connection, as an app's own driver would open (no jobengine.actor)."""
    conn = await asyncpg.connect(db_dsn)
    yield conn
    await conn.close()


# -- the transition table -------------------------------------------------------


async def test_python_table_equals_database_table(tx: asyncpg.Connection) -> None:
    db: dict[tuple[JobStatus | None, JobStatus], str] = {}
    for src in [None, *STATUSES]:
        for dst in STATUSES:
            event = await tx.fetchval(
                "SELECT jobengine.transition_event_type($1::jobengine.job_status,"
                " $2::jobengine.job_status)",
                src, dst,
            )
            if event is not None:
                db[(src, dst)] = event
    assert db == dict(TRANSITIONS)


async def test_enum_labels_match(tx: asyncpg.Connection) -> None:
    labels = await tx.fetchval("SELECT enum_range(NULL::jobengine.job_status)::text[]")
    assert labels == [s.value for s in JobStatus]


@pytest.mark.parametrize(("src", "dst"), [k for k in TRANSITIONS if k[0] is not None])
async def test_allowed_transition_by_plain_update_is_recorded_once(
    db_dsn: str, app: asyncpg.Connection, listener: Listener, src: JobStatus, dst: JobStatus
) -> None:
    job_id = await job_in(app, src)
    before_h, before_t = await counts(app, job_id)
    await listener.expect(1 + len(PATH_TO[src]))
    seen = len(listener.messages)

    await app.execute("UPDATE jobengine.jobs SET status = $1 WHERE id = $2", dst.value, job_id)

    after_h, after_t = await counts(app, job_id)
    assert (after_h - before_h, after_t - before_t) == (1, 1)
    history = await app.fetchrow(
        "SELECT * FROM jobengine.job_history WHERE job_id = $1 ORDER BY id DESC LIMIT 1", job_id
    )
    assert (history["from_status"], history["to_status"]) == (src.value, dst.value)
    assert history["actor"] == "sql"
    # A later commit (a new job) proves every notification of the update has
    # arrived: NOTIFYs are delivered in commit order.
    marker = await insert_job(app, kind="marker")
    messages = await listener.expect(seen + 2)
    for_job = [m for m in messages[seen:] if m["job_id"] == job_id]
    assert len(for_job) == 1, "exactly one notification per transition"
    assert messages[-1]["job_id"] == marker
    envelope = for_job[0]
    assert set(envelope) == ENVELOPE_KEYS
    assert envelope["job_id"] == job_id
    assert envelope["from_status"] == src.value
    assert envelope["to_status"] == dst.value
    assert envelope["event_type"] == TRANSITIONS[(src, dst)]
    assert envelope["schema_version"] == 1
    assert envelope["kind"] == "email"
    assert envelope["queue"] == "default"
    assert envelope["actor"] == "sql"
    stored = await app.fetchval(
        "SELECT envelope::text FROM jobengine.timeline_events WHERE job_id = $1"
        " ORDER BY id DESC LIMIT 1",
        job_id,
    )
    assert json.loads(stored) == envelope


async def test_insert_is_recorded_with_notification(
    app: asyncpg.Connection, listener: Listener
) -> None:
    job_id = await insert_job(app, payload=json.dumps({"to": "a@b"}))
    assert await counts(app, job_id) == (1, 1)
    (envelope,) = await listener.expect(1)
    assert envelope["event_type"] == "job.created"
    assert envelope["from_status"] is None
    assert envelope["to_status"] == "pending"
    assert "payload" not in envelope


async def test_notified_envelope_is_the_stored_envelope_byte_for_byte(
    db_dsn: str, listener: Listener
) -> None:
    """What is sent (written directly as text) is what the timeline reads (built as jsonb)."""
    conn = await asyncpg.connect(db_dsn, server_settings={"TimeZone": "Asia/Kathmandu"})
    try:
        await conn.execute("SET jobengine.actor = $$d\"1 \\ é\n\t\u263a$$")
        job_id = await insert_job(conn, kind="k.x:y-z")
        await conn.execute("UPDATE jobengine.jobs SET status = 'cancelled', status_reason ="
                           " $$why \"not\" \u00e9\u0001$$ WHERE id = $1", job_id)
        await listener.expect(2)
        sent = listener.raw[:2]
        stored = await conn.fetch("SELECT envelope::text AS e FROM jobengine.timeline_events"
                                  " WHERE job_id = $1 ORDER BY id", job_id)
    finally:
        await conn.close()
    assert sent == [r["e"] for r in stored]
    assert json.loads(sent[1])["reason"] == 'why "not" \u00e9\u0001'


async def test_envelope_text_matches_envelope_for_nulls_and_odd_values(
    tx: asyncpg.Connection,
) -> None:
    args = ("'00000000-0000-0000-0000-00000000002a'::uuid, $1, $2::text::timestamptz, $3::bigint, $4, $5,"
            " $6::jobengine.job_status, $7::jobengine.job_status, $8::int, $9, $10")
    cases = [
        ("job.created", "2026-03-29 01:30:00.5+00", 1, "k", "q", None, "pending", 0, None, None),
        ("job.note_x", "1999-12-31 23:59:59.999999-11", 2**62, "é", "\\", "running", "running",
         2**31 - 1, 'x"\b\f/', "tab\there"),
    ]
    for case in cases:
        row = await tx.fetchrow(f"SELECT jobengine.envelope({args})::text AS j,"
                                f" jobengine.envelope_text({args}) AS t", *case)
        assert row["t"] == row["j"]


DISALLOWED = [
    (s, d) for s, d in itertools.product(STATUSES, STATUSES) if (s, d) not in TRANSITIONS and s != d
]


@pytest.mark.parametrize(("src", "dst"), DISALLOWED)
async def test_disallowed_transition_is_refused_and_changes_nothing(
    tx: asyncpg.Connection, src: JobStatus, dst: JobStatus
) -> None:
    job_id = await job_in(tx, src)
    before = await tx.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id)
    before_counts = await counts(tx, job_id)
    with pytest.raises(asyncpg.CheckViolationError) as err:
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET status = $1 WHERE id = $2", dst.value, job_id)
    message = str(err.value)
    assert f"job {job_id}" in message
    assert f"{src.value} -> {dst.value}" in message
    assert await tx.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id) == before
    assert await counts(tx, job_id) == before_counts


async def test_insert_in_another_status_is_refused(tx: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="must be inserted as pending"):
        await tx.execute("INSERT INTO jobengine.jobs (kind, status) VALUES ('x', 'running')")


async def test_rolled_back_change_leaves_no_trace(
    app: asyncpg.Connection, listener: Listener
) -> None:
    job_id = await insert_job(app)
    await listener.expect(1)
    tr = app.transaction()
    await tr.start()
    await app.execute("UPDATE jobengine.jobs SET status = 'scheduled' WHERE id = $1", job_id)
    await app.execute("INSERT INTO jobengine.jobs (kind) VALUES ('other')")
    await tr.rollback()
    # A later committed change proves the listener is live; nothing else arrived.
    await app.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
    messages = await listener.expect(2)
    assert [m["event_type"] for m in messages] == ["job.created", "job.cancelled"]
    assert await counts(app, job_id) == (2, 2)
    assert await app.fetchval("SELECT count(*) FROM jobengine.jobs") == 1


async def test_actor_names_the_writer(db_dsn: str, app: asyncpg.Connection) -> None:
    conn = await connect(db_dsn, actor="daemon-7")
    try:
        job_id = await insert_job(conn)
    finally:
        await conn.close()
    await app.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
    actors = await app.fetch(
        "SELECT actor FROM jobengine.job_history WHERE job_id = $1 ORDER BY id", job_id
    )
    assert [r["actor"] for r in actors] == ["daemon-7", "sql"]


async def test_two_writers_racing_on_one_job_exactly_one_wins(db_dsn: str) -> None:
    setup = await asyncpg.connect(db_dsn)
    job_id = await job_in(setup, JobStatus.SCHEDULED)
    a, b = await asyncpg.connect(db_dsn), await asyncpg.connect(db_dsn)
    results: dict[str, str] = {}
    claim = (
        "UPDATE jobengine.jobs SET status = 'running', lease_owner = $2,"
        " lease_expires_at = now() + interval '30 s' WHERE id = $1 AND status = 'scheduled'"
    )
    try:
        # a holds the row lock; b queues behind it and must find the job moved.
        ta = a.transaction()
        await ta.start()
        results["a"] = await a.execute(claim, job_id, "a")

        async def b_claims() -> None:
            results["b"] = await b.execute(claim, job_id, "b")

        async with anyio.create_task_group() as tg:
            tg.start_soon(b_claims)

            async def b_is_waiting() -> bool:
                n = await setup.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"
                )
                return bool(n)

            await wait_for(b_is_waiting, message="the second writer to block on the row")
            await ta.commit()
        assert sorted(results.values()) == ["UPDATE 0", "UPDATE 1"]
        row = await setup.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id)
        assert row["lease_owner"] == "a"
        assert row["attempt"] == 1
        starts = await setup.fetchval(
            "SELECT count(*) FROM jobengine.job_history WHERE job_id = $1 AND to_status = 'running'",
            job_id,
        )
        assert starts == 1
    finally:
        for c in (a, b, setup):
            await c.close()


# -- bookkeeping the guard does ------------------------------------------------


async def test_entering_running_counts_an_attempt_and_always_holds_a_lease(
    tx: asyncpg.Connection,
) -> None:
    job_id = await job_in(tx, JobStatus.RUNNING)
    row = await tx.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id)
    assert row["attempt"] == 1
    assert row["lease_owner"] == "tests"  # the connection's actor
    assert row["lease_expires_at"] > row["started_at"]
    await tx.execute("UPDATE jobengine.jobs SET status = 'completed' WHERE id = $1", job_id)
    row = await tx.fetchrow("SELECT * FROM jobengine.jobs WHERE id = $1", job_id)
    assert row["lease_owner"] is None
    assert row["lease_expires_at"] is None
    assert row["finished_at"] is not None
    assert row["status_reason"] == "completed"


async def test_release_is_not_counted_against_retries(tx: asyncpg.Connection) -> None:
    job_id = await job_in(tx, JobStatus.RUNNING)
    await tx.execute(
        "UPDATE jobengine.jobs SET status = 'scheduled', status_reason = 'shutdown' WHERE id = $1",
        job_id,
    )
    row = await tx.fetchrow("SELECT attempt, released, status_reason FROM jobengine.jobs WHERE id = $1", job_id)
    assert (row["attempt"], row["released"], row["status_reason"]) == (1, 1, "shutdown")
    reason = await tx.fetchval(
        "SELECT reason FROM jobengine.job_history WHERE job_id = $1 ORDER BY id DESC LIMIT 1", job_id
    )
    assert reason == "shutdown"


async def test_hand_written_cancel_gets_a_default_reason(tx: asyncpg.Connection) -> None:
    job_id = await job_in(tx, JobStatus.RUNNING)
    await tx.execute("UPDATE jobengine.jobs SET status = 'cancelled' WHERE id = $1", job_id)
    reason = await tx.fetchval(
        "SELECT reason FROM jobengine.job_history WHERE job_id = $1 ORDER BY id DESC LIMIT 1", job_id
    )
    assert reason == "cancelled_by_user"


async def test_one_statement_moving_many_jobs_records_each(
    app: asyncpg.Connection, listener: Listener
) -> None:
    await app.execute(
        "INSERT INTO jobengine.jobs (kind, payload)"
        " SELECT 'bulk', jsonb_build_object('i', i) FROM generate_series(1, 300) i"
    )
    await app.execute("UPDATE jobengine.jobs SET status = 'scheduled'")
    assert await app.fetchval("SELECT count(*) FROM jobengine.job_history") == 600
    assert await app.fetchval("SELECT count(*) FROM jobengine.timeline_events") == 600
    messages = await listener.expect(600)
    scheduled = [m for m in messages if m["event_type"] == "job.scheduled"]
    assert sorted(m["job_id"] for m in scheduled) == sorted(
        r["id"] for r in await app.fetch("SELECT id FROM jobengine.jobs")
    )
    assert len({m["event_id"] for m in messages}) == 600


# -- the audit trail cannot be rewritten -----------------------------------------


@pytest.mark.parametrize(
    ("statement", "why"),
    [
        ("UPDATE jobengine.job_history SET to_status = 'completed'", "append-only"),
        ("DELETE FROM jobengine.job_history", "append-only"),
        ("UPDATE jobengine.timeline_events SET event_type = 'job.completed'", "append-only"),
        ("DELETE FROM jobengine.timeline_events", "append-only"),
        ("UPDATE jobengine.ledger SET reason = 'forged'", "append-only"),
        ("DELETE FROM jobengine.ledger", "append-only"),
        ("TRUNCATE jobengine.ledger", "append-only"),
        ("TRUNCATE jobengine.ledger_default", "append-only"),
        ("DELETE FROM jobengine.jobs", "removed only by the retention policy"),
        ("TRUNCATE jobengine.jobs CASCADE", "append-only"),
    ],
)
async def test_audit_trail_is_append_only(tx: asyncpg.Connection, statement: str, why: str) -> None:
    await job_in(tx, JobStatus.COMPLETED)
    before = await tx.fetchval(
        "SELECT (SELECT count(*) FROM jobengine.job_history)"
        " + (SELECT count(*) FROM jobengine.timeline_events) + (SELECT count(*) FROM jobengine.jobs)"
    )
    with pytest.raises(asyncpg.RestrictViolationError, match=why):
        async with tx.transaction():
            await tx.execute(statement)
    after = await tx.fetchval(
        "SELECT (SELECT count(*) FROM jobengine.job_history)"
        " + (SELECT count(*) FROM jobengine.timeline_events) + (SELECT count(*) FROM jobengine.jobs)"
    )
    assert after == before


async def test_job_id_cannot_change(tx: asyncpg.Connection) -> None:
    job_id = await job_in(tx, JobStatus.PENDING)
    with pytest.raises(asyncpg.GeneratedAlwaysError):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET id = id + 1000 WHERE id = $1", job_id)
    # DEFAULT is the one value an identity column accepts; the guard refuses it too.
    with pytest.raises(asyncpg.CheckViolationError, match="id cannot change"):
        async with tx.transaction():
            await tx.execute("UPDATE jobengine.jobs SET id = DEFAULT WHERE id = $1", job_id)
    assert await tx.fetchval("SELECT count(*) FROM jobengine.jobs WHERE id = $1", job_id) == 1


# -- refusals ------------------------------------------------------------------


async def _refused(tx: asyncpg.Connection, sql: str, *args: Any) -> asyncpg.PostgresError:
    jobs_before = await tx.fetchval("SELECT count(*) FROM jobengine.jobs")
    history_before = await tx.fetchval("SELECT count(*) FROM jobengine.job_history")
    with pytest.raises(asyncpg.PostgresError) as err:
        async with tx.transaction():
            await tx.execute(sql, *args)
    assert await tx.fetchval("SELECT count(*) FROM jobengine.jobs") == jobs_before
    assert await tx.fetchval("SELECT count(*) FROM jobengine.job_history") == history_before
    return err.value


@pytest.mark.parametrize("payload", ["[1, 2]", '"text"', "42", "null", "true"])
async def test_payload_must_be_a_json_object(tx: asyncpg.Connection, payload: str) -> None:
    err = await _refused(
        tx, "INSERT INTO jobengine.jobs (kind, payload) VALUES ('x', $1::jsonb)", payload
    )
    assert "payload_must_be_a_json_object" in str(err) or "null value" in str(err)


async def test_dependency_on_a_missing_job_is_refused(tx: asyncpg.Connection) -> None:
    err = await _refused(
        tx, "INSERT INTO jobengine.jobs (kind, depends_on) VALUES ('x', '{987654}')"
    )
    assert isinstance(err, asyncpg.ForeignKeyViolationError)
    assert "depends on job 987654, which does not exist" in str(err)


async def test_dependency_cycle_is_refused(tx: asyncpg.Connection) -> None:
    a = await insert_job(tx)
    b = await insert_job(tx, depends_on=[a])
    c = await insert_job(tx, depends_on=[b])
    err = await _refused(tx, "UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [c], a)
    assert "dependency cycle" in str(err)
    err = await _refused(tx, "UPDATE jobengine.jobs SET depends_on = $1 WHERE id = $2", [a], a)
    assert "dependency cycle" in str(err)
    assert await tx.fetchval("SELECT depends_on FROM jobengine.jobs WHERE id = $1", a) == []


async def test_second_job_with_same_idempotency_key_is_refused(tx: asyncpg.Connection) -> None:
    await insert_job(tx, idempotency_key="order-42")
    err = await _refused(
        tx, "INSERT INTO jobengine.jobs (kind, idempotency_key) VALUES ('x', 'order-42')"
    )
    assert isinstance(err, asyncpg.UniqueViolationError)
    assert "jobs_idempotency_key_unique" in str(err)


async def test_negative_max_retries_is_refused(tx: asyncpg.Connection) -> None:
    err = await _refused(tx, "INSERT INTO jobengine.jobs (kind, max_retries) VALUES ('x', -1)")
    assert "max_retries_must_not_be_negative" in str(err)


async def test_unknown_retry_strategy_is_refused(tx: asyncpg.Connection) -> None:
    err = await _refused(
        tx,
        "INSERT INTO jobengine.jobs (kind, retry_policy) VALUES ('x', '{\"strategy\": \"random\"}')",
    )
    assert "retry_policy.strategy 'random' is unknown" in str(err)


@pytest.mark.parametrize(
    ("column", "value", "needle"),
    [
        ("kind", "", "kind '' is invalid"),
        ("kind", "x" * 101, "is invalid"),
        ("kind", "has space", "is invalid"),
        ("queue", "bad/queue", "queue 'bad/queue' is invalid"),
    ],
)
async def test_kind_and_queue_are_short_names(
    tx: asyncpg.Connection, column: str, value: str, needle: str
) -> None:
    cols = {"kind": "ok", column: value}
    err = await _refused(
        tx, "INSERT INTO jobengine.jobs (kind, queue) VALUES ($1, coalesce($2, 'default'))",
        cols["kind"], cols.get("queue"),
    )
    assert needle in str(err)


BIG_PAYLOAD = "INSERT INTO jobengine.jobs (kind, payload) VALUES ('x', jsonb_build_object('b', repeat(md5(random()::text), 100)))"


async def test_payload_over_the_size_limit_is_refused(tx: asyncpg.Connection) -> None:
    # The owner sets the limit in jobengine.settings.
    await tx.execute("UPDATE jobengine.settings SET value = '1000' WHERE name = 'max_payload_bytes'")
    err = await _refused(tx, BIG_PAYLOAD)
    assert "over the limit of 1000 bytes" in str(err)


async def test_a_session_setting_cannot_lift_the_payload_limit(tx: asyncpg.Connection) -> None:
    await tx.execute("UPDATE jobengine.settings SET value = '1000' WHERE name = 'max_payload_bytes'")
    # (0001 read this session setting: anyone could lift the limit for themselves)
    await tx.execute("SET LOCAL jobengine.max_payload_bytes = 100000000")
    err = await _refused(tx, BIG_PAYLOAD)
    assert "over the limit of 1000 bytes" in str(err)


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [("max_payload_bytes", "-5", "settings_value_valid"),
     ("max_payload_bytes", "lots", "settings_value_valid"),
     ("max_lease_ttl", "5 seconds", "at least 1 minute"),
     ("max_lease_ttl", "soon", "invalid input syntax"),
     ("max_retries", "3", "settings_name_known")],
)
async def test_bad_settings_are_refused(tx: asyncpg.Connection, name: str, value: str, needle: str) -> None:
    with pytest.raises(asyncpg.PostgresError) as err:
        async with tx.transaction():
            await tx.execute(
                "INSERT INTO jobengine.settings (name, value) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value", name, value)
    assert needle in str(err.value) or needle in (getattr(err.value, "constraint_name", "") or "")


async def test_invalid_retry_policy_fields_are_refused(tx: asyncpg.Connection) -> None:
    err = await _refused(
        tx,
        "INSERT INTO jobengine.jobs (kind, retry_policy) VALUES ('x', '{\"base_delay\": -1}')",
    )
    assert "retry_policy" in str(err)
