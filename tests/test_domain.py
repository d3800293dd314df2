"""The pure core: lifecycle table, retry arithmetic, records, clock, errors.

No database and no event loop: everything here is plain Python.
"""

from __future__ import annotations

import inspect
import itertools
import random
from collections import deque
from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobengine.domain import (
    FINAL,
    SCHEMA_VERSION,
    SETTLED,
    TRANSITIONS,
    EventEnvelope,
    HistoryEntry,
    IllegalTransition,
    InvalidJob,
    Job,
    JobEngineError,
    JobSpec,
    JobStatus,
    ManualClock,
    RetryPolicy,
    RetryStrategy,
    SystemClock,
    TimelineEvent,
    check,
    decode_envelope,
    is_allowed,
    parse_retry_policy,
    retries_remain,
    targets,
)
from jobengine.domain import errors as errors_module

# ---------------------------------------------------------------------------
# The lifecycle table, written out from CONTRACT.md ("Allowed transitions").
# ---------------------------------------------------------------------------

CONTRACT_TRANSITIONS: dict[tuple[str | None, str], str] = {
    (None, "pending"): "job.created",
    ("pending", "scheduled"): "job.scheduled",
    ("pending", "cancelled"): "job.cancelled",
    ("scheduled", "running"): "job.started",
    ("scheduled", "cancelled"): "job.cancelled",
    ("running", "completed"): "job.completed",
    ("running", "failed"): "job.failed",
    ("running", "cancelled"): "job.cancelled",
    ("running", "scheduled"): "job.released",
    ("failed", "scheduled"): "job.retry_scheduled",
}

STATUSES = ["pending", "scheduled", "running", "completed", "failed", "cancelled"]
TERMINAL = {"completed", "failed", "cancelled"}

ALLOWED = sorted(CONTRACT_TRANSITIONS.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))

DISALLOWED = [
    (src, dst)
    for src, dst in itertools.product([None, *STATUSES], STATUSES)
    if (src, dst) not in CONTRACT_TRANSITIONS
]


def test_status_enum_is_the_contracts_six_states() -> None:
    assert [s.value for s in JobStatus] == STATUSES


def test_transition_table_equals_the_contract() -> None:
    actual = {
        (None if src is None else src.value, dst.value): event
        for (src, dst), event in TRANSITIONS.items()
    }
    assert actual == CONTRACT_TRANSITIONS
    assert len(TRANSITIONS) == 10


def test_transition_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[(JobStatus.COMPLETED, JobStatus.PENDING)] = "job.resurrected"  # type: ignore[index]


@pytest.mark.parametrize(("pair", "event_type"), ALLOWED)
def test_check_returns_the_event_type_of_each_allowed_transition(
    pair: tuple[str | None, str], event_type: str
) -> None:
    src, dst = pair
    # Plain strings (as read from the database) and enum members both work.
    assert check(src, dst) == event_type
    enum_src = None if src is None else JobStatus(src)
    assert check(enum_src, JobStatus(dst), job_id=1) == event_type
    assert is_allowed(enum_src, JobStatus(dst))


def test_the_contract_leaves_26_disallowed_pairs() -> None:
    # 6 x 6 status pairs plus 6 inserts, minus the 10 allowed ones.
    assert len(DISALLOWED) == 36 + 6 - 10


@pytest.mark.parametrize(("src", "dst"), DISALLOWED)
def test_check_refuses_every_disallowed_transition(src: str | None, dst: str) -> None:
    enum_src = None if src is None else JobStatus(src)
    assert not is_allowed(enum_src, JobStatus(dst))
    with pytest.raises(IllegalTransition) as info:
        check(src, dst, job_id=42)
    exc = info.value
    assert isinstance(exc, JobEngineError)
    assert exc.src == src
    assert exc.dst == dst
    assert exc.job_id == 42
    message = str(exc)
    assert "job 42" in message
    assert (src if src is not None else "(insert)") in message
    assert dst in message


def test_illegal_transition_message_without_job_id() -> None:
    with pytest.raises(IllegalTransition) as info:
        check(JobStatus.COMPLETED, JobStatus.RUNNING)
    assert info.value.job_id is None
    assert str(info.value) == "illegal transition completed -> running"


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("bogus", "pending"),
        ("pending", "bogus"),
        (None, "done"),
        ("PENDING", "SCHEDULED"),  # statuses are lower case
        ("running", "succeeded"),
    ],
)
def test_check_refuses_unknown_status_strings(src: str | None, dst: str) -> None:
    with pytest.raises(IllegalTransition) as info:
        check(src, dst, job_id=7)
    assert info.value.src == src
    assert info.value.dst == dst
    assert info.value.job_id == 7
    assert dst in str(info.value)
    if src is not None:
        assert src in str(info.value)


def test_completed_and_cancelled_are_final() -> None:
    assert targets(JobStatus.COMPLETED) == frozenset()
    assert targets(JobStatus.CANCELLED) == frozenset()
    assert {JobStatus.COMPLETED, JobStatus.CANCELLED} == FINAL
    for status in FINAL:
        assert not any(src == status for src, _ in TRANSITIONS)


def test_failed_only_leaves_for_a_retry() -> None:
    assert targets(JobStatus.FAILED) == {JobStatus.SCHEDULED}
    assert check("failed", "scheduled") == "job.retry_scheduled"
    assert {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED} == SETTLED


def test_targets_matches_the_table_for_every_source() -> None:
    assert targets(None) == {JobStatus.PENDING}
    for src in JobStatus:
        expected = {JobStatus(d) for (s, d) in CONTRACT_TRANSITIONS if s == src.value}
        assert targets(src) == expected


def _can_settle(start: JobStatus) -> bool:
    """BFS over `targets()`: is some terminal state reachable from `start`?"""
    seen = {start}
    queue = deque([start])
    while queue:
        status = queue.popleft()
        if status.value in TERMINAL:
            return True
        for nxt in targets(status) - seen:
            seen.add(nxt)
            queue.append(nxt)
    return False


def test_every_state_reachable_from_pending_can_settle() -> None:
    reachable = {JobStatus.PENDING}
    frontier = [JobStatus.PENDING]
    while frontier:
        for nxt in targets(frontier.pop()):
            if nxt not in reachable:
                reachable.add(nxt)
                frontier.append(nxt)
    assert reachable == set(JobStatus)
    assert all(_can_settle(s) for s in reachable)


@given(choices=st.lists(st.integers(min_value=0, max_value=10**6), max_size=60))
def test_random_walks_from_pending_can_always_reach_a_terminal_state(
    choices: list[int],
) -> None:
    status = JobStatus(next(iter(targets(None))))  # the insert
    assert status is JobStatus.PENDING
    path: list[JobStatus] = [status]
    for choice in choices:
        assert _can_settle(status), path
        options = sorted(targets(status))
        if not options:
            assert status in FINAL
            break
        nxt = options[choice % len(options)]
        # Each step of the walk is one `check` accepts.
        assert check(status, nxt).startswith("job.")
        status = nxt
        path.append(status)
    assert _can_settle(status), path


# ---------------------------------------------------------------------------
# Retry policies
# ---------------------------------------------------------------------------


class FixedRandom(random.Random):
    """A random source whose `random()` always returns the same value."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


strategies = st.sampled_from(list(RetryStrategy))
# Attempts from below 1 (treated as 1) up to PostgreSQL's integer maximum.
attempts = st.one_of(
    st.integers(min_value=-3, max_value=100),
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([1000, 1024, 1025, 10**6, 2**31 - 1]),
)
# Subnormal delays are left out: halving one can round up by 5e-324 s.
base_delays = st.floats(min_value=0, allow_nan=False, allow_infinity=True, allow_subnormal=False)
max_delays = st.floats(min_value=0, max_value=1e300, allow_subnormal=False)


def _raw_delay(strategy: RetryStrategy, base: float, attempt: int) -> float:
    n = max(attempt, 1)
    if strategy is RetryStrategy.FIXED:
        return base
    if strategy is RetryStrategy.LINEAR:
        return base * n
    return base * 2.0 ** (n - 1)


def test_default_policy_matches_the_contracts_retry_section() -> None:
    policy = RetryPolicy()
    assert policy.strategy is RetryStrategy.EXPONENTIAL
    assert policy.base_delay == 1.0
    assert policy.max_delay == 300.0
    assert policy.jitter is True


@settings(deadline=None)
@given(
    strategy=strategies,
    attempt=attempts,
    base=base_delays,
    max_delay=max_delays,
    jitter=st.booleans(),
    r=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_backoff_never_exceeds_max_delay(
    strategy: RetryStrategy, attempt: int, base: float, max_delay: float, jitter: bool, r: float
) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=jitter)
    delay = policy.delay(attempt, FixedRandom(r))
    assert 0 <= delay <= max_delay


@settings(deadline=None)
@given(strategy=strategies, attempt=attempts, base=base_delays, max_delay=max_delays)
def test_without_jitter_the_delay_is_the_capped_delay(
    strategy: RetryStrategy, attempt: int, base: float, max_delay: float
) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=False)
    delay = policy.delay(attempt)
    if strategy is not RetryStrategy.EXPONENTIAL or attempt <= 1001:
        assert delay == min(_raw_delay(strategy, base, attempt), max_delay)
    else:
        # 2**1000 is past every cap for any sensible base: the delay is the cap
        # (0 when the base is 0), and never shorter than at attempt 1001.
        assert policy.delay(1001) <= delay <= max_delay
        if base == 0 or base >= 1:
            assert delay == min(base * 2.0**1000, max_delay)


@settings(deadline=None)
@given(
    strategy=strategies,
    attempt=attempts,
    base=base_delays,
    max_delay=max_delays,
    r=st.floats(min_value=0, max_value=1, exclude_max=True),
    seed=st.integers(),
)
def test_with_jitter_the_delay_lies_between_half_and_all_of_the_capped_delay(
    strategy: RetryStrategy, attempt: int, base: float, max_delay: float, r: float, seed: int
) -> None:
    plain = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=False)
    jittered = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=True)
    capped = plain.delay(attempt)
    for rng in (FixedRandom(r), random.Random(seed), None):
        delay = jittered.delay(attempt, rng)
        assert capped / 2 <= delay <= capped
    # The extremes of the random source map to the ends of the range.
    assert jittered.delay(attempt, FixedRandom(0.0)) == capped / 2


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (RetryStrategy.FIXED, [2.0, 2.0, 2.0, 2.0, 2.0, 2.0]),
        (RetryStrategy.LINEAR, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]),
        (RetryStrategy.EXPONENTIAL, [2.0, 4.0, 8.0, 16.0, 32.0, 50.0]),
    ],
)
def test_strategy_formulas_for_the_first_attempts(
    strategy: RetryStrategy, expected: list[float]
) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=2.0, max_delay=50.0, jitter=False)
    assert [policy.delay(n) for n in range(1, 7)] == expected
    # Attempt 0 (or less) is treated like the first attempt.
    assert policy.delay(0) == policy.delay(1)


@pytest.mark.parametrize("strategy", list(RetryStrategy))
@pytest.mark.parametrize("attempt", [10**3, 10**4, 10**6, 2**31 - 1])
def test_huge_attempts_do_not_overflow(strategy: RetryStrategy, attempt: int) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=1.5, max_delay=300.0, jitter=False)
    expected = 1.5 if strategy is RetryStrategy.FIXED else 300.0
    assert policy.delay(attempt) == expected
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert policy.next_run_at(attempt, now) == now + timedelta(seconds=expected)


@settings(deadline=None)
@given(
    strategy=strategies,
    attempt=st.integers(min_value=1, max_value=10**6),
    base=st.floats(min_value=0, max_value=1e6),
    max_delay=st.floats(min_value=0, max_value=1e6),
    jitter=st.booleans(),
    seed=st.integers(),
)
def test_next_run_at_is_pure_and_is_now_plus_the_delay(
    strategy: RetryStrategy, attempt: int, base: float, max_delay: float, jitter: bool, seed: int
) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=jitter)
    now = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
    first = policy.next_run_at(attempt, now, random.Random(seed))
    second = policy.next_run_at(attempt, now, random.Random(seed))
    assert first == second
    assert first == now + timedelta(seconds=policy.delay(attempt, random.Random(seed)))
    assert now <= first <= now + timedelta(seconds=max_delay)
    assert first.tzinfo is not None


def test_next_run_at_with_a_delay_past_the_calendar_does_not_raise() -> None:
    # The database accepts any max_delay >= 0; 1e12 s is ~31,700 years.
    policy = parse_retry_policy({"base_delay": 1e12, "max_delay": 1e12, "jitter": False})
    assert policy is not None
    now = datetime(2030, 1, 1, tzinfo=UTC)
    later = policy.next_run_at(5, now)
    assert later > now + timedelta(days=365 * 7000)
    assert later.tzinfo is not None


def test_next_run_at_keeps_the_callers_timezone() -> None:
    policy = RetryPolicy(strategy=RetryStrategy.FIXED, base_delay=30, jitter=False)
    now = datetime(2030, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=2)))
    assert policy.next_run_at(1, now) == now + timedelta(seconds=30)


@pytest.mark.parametrize("max_retries", range(21))
def test_max_retries_n_means_at_most_n_plus_one_attempts(max_retries: int) -> None:
    attempts_counted = 0
    while True:
        attempts_counted += 1  # the job runs and fails
        if not retries_remain(attempts_counted, max_retries):
            break
        assert attempts_counted <= 100, "retries never ran out"
    assert attempts_counted == max_retries + 1


def test_max_retries_three_means_four_attempts() -> None:
    assert [retries_remain(n, 3) for n in range(1, 6)] == [True, True, True, False, False]


def test_attempts_given_back_at_shutdown_do_not_count() -> None:
    job = Job(id=1, kind="email", attempt=5, releases=2, max_retries=3)
    assert job.attempts_counted == 3
    assert retries_remain(job.attempts_counted, job.max_retries)
    assert not retries_remain(Job(id=2, kind="email", attempt=4).attempts_counted, 3)


# parse_retry_policy ---------------------------------------------------------


def test_parse_retry_policy_none_means_the_daemon_default() -> None:
    assert parse_retry_policy(None) is None


def test_parse_retry_policy_reads_the_contracts_shape() -> None:
    policy = parse_retry_policy(
        {"strategy": "linear", "base_delay": 2, "max_delay": 60.5, "jitter": False}
    )
    assert policy == RetryPolicy(
        strategy=RetryStrategy.LINEAR, base_delay=2.0, max_delay=60.5, jitter=False
    )
    assert parse_retry_policy({}) == RetryPolicy()


@given(
    strategy=strategies,
    base=st.floats(min_value=0, max_value=1e9),
    max_delay=st.floats(min_value=0, max_value=1e9),
    jitter=st.booleans(),
)
def test_retry_policy_round_trips_through_its_stored_json(
    strategy: RetryStrategy, base: float, max_delay: float, jitter: bool
) -> None:
    policy = RetryPolicy(strategy=strategy, base_delay=base, max_delay=max_delay, jitter=jitter)
    stored = msgspec.json.decode(msgspec.json.encode(policy.to_json()))
    assert stored["strategy"] == strategy.value
    assert parse_retry_policy(stored) == policy


@pytest.mark.parametrize("strategy", ["bogus", "Exponential", "", None, 3, ["fixed"], {"a": 1}])
def test_parse_retry_policy_refuses_an_unknown_strategy(strategy: object) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_retry_policy({"strategy": strategy})
    assert info.value.field == "retry_policy.strategy"
    message = str(info.value)
    assert "retry_policy.strategy" in message
    assert repr(strategy) in message


def test_parse_retry_policy_names_the_strategy_it_refuses() -> None:
    with pytest.raises(InvalidJob, match=r"retry_policy\.strategy 'quadratic' is unknown"):
        parse_retry_policy({"strategy": "quadratic", "base_delay": 1})


@pytest.mark.parametrize(
    "raw",
    [
        {"backoff": 2},
        {"strategy": "fixed", "base_delay": 1, "extra": True},
        {"max_delays": 10},
    ],
)
def test_parse_retry_policy_refuses_unknown_keys(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_retry_policy(raw)
    assert info.value.field == "retry_policy"
    unknown = next(k for k in raw if k not in {"strategy", "base_delay", "max_delay", "jitter"})
    assert unknown in str(info.value)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"base_delay": -1}, "retry_policy.base_delay"),
        ({"base_delay": -0.001}, "retry_policy.base_delay"),
        ({"base_delay": float("nan")}, "retry_policy.base_delay"),
        ({"max_delay": -5}, "retry_policy.max_delay"),
    ],
)
def test_parse_retry_policy_refuses_negative_delays(raw: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_retry_policy(raw)
    assert info.value.field == field
    assert field in str(info.value)
    assert ">= 0" in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [{"base_delay": "1"}, {"jitter": "yes"}, {"max_delay": None}, {"base_delay": True}],
)
def test_parse_retry_policy_refuses_wrong_types(raw: dict[str, object]) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_retry_policy(raw)
    assert info.value.field == "retry_policy"


@pytest.mark.parametrize("raw", [[], ["fixed"], "exponential", 3, 1.5, True])
def test_parse_retry_policy_refuses_a_non_object(raw: object) -> None:
    with pytest.raises(InvalidJob) as info:
        parse_retry_policy(raw)
    assert info.value.field == "retry_policy"
    assert "JSON object" in str(info.value)


def test_retry_policy_constructor_validates_too() -> None:
    with pytest.raises(InvalidJob):
        RetryPolicy(base_delay=-1)
    with pytest.raises(InvalidJob):
        RetryPolicy(max_delay=float("nan"))


# ---------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------

ENVELOPE_KEYS = {
    "event_id",
    "event_type",
    "schema_version",
    "occurred_at",
    "job_id",
    "kind",
    "queue",
    "from_status",
    "to_status",
    "attempt",
    "actor",
    "reason",
}


def _created_envelope() -> EventEnvelope:
    return EventEnvelope(
        event_id="0b7d1f0e-6f5c-4c1e-9a55-3f1b1c2d3e4f",
        event_type=check(None, JobStatus.PENDING),
        occurred_at=datetime(2030, 1, 1, 12, 30, 15, 123456, tzinfo=UTC),
        job_id=17,
        kind="email",
        queue="default",
        to_status=JobStatus.PENDING,
        actor="sql",
    )


def test_envelope_round_trips_through_json_with_no_from_status_on_creation() -> None:
    envelope = _created_envelope()
    assert envelope.schema_version == SCHEMA_VERSION == 1
    raw = msgspec.json.encode(envelope)
    as_json = msgspec.json.decode(raw)
    assert set(as_json) == ENVELOPE_KEYS
    assert as_json["from_status"] is None
    assert as_json["to_status"] == "pending"
    assert as_json["event_type"] == "job.created"
    assert as_json["schema_version"] == 1
    decoded = decode_envelope(raw)
    assert decoded == envelope
    assert decoded.from_status is None
    assert decoded.to_status is JobStatus.PENDING
    assert decode_envelope(raw.decode()) == envelope
    # Far below the 8000-byte NOTIFY limit.
    assert len(raw) < 8000


def test_envelope_schema_version_defaults_to_1_when_absent() -> None:
    raw = (
        b'{"event_id": "e1", "event_type": "job.failed", '
        b'"occurred_at": "2030-01-01T00:00:00Z", "job_id": 3, "kind": "k", "queue": "q", '
        b'"from_status": "running", "to_status": "failed", "attempt": 2, "reason": "timeout"}'
    )
    envelope = decode_envelope(raw)
    assert envelope.schema_version == 1
    assert envelope.from_status is JobStatus.RUNNING
    assert envelope.to_status is JobStatus.FAILED
    assert envelope.occurred_at == datetime(2030, 1, 1, tzinfo=UTC)


def test_envelope_refuses_an_unknown_status() -> None:
    raw = msgspec.json.encode(_created_envelope())
    bad = raw.replace(b'"to_status":"pending"', b'"to_status":"done"')
    assert bad != raw
    with pytest.raises(msgspec.ValidationError):
        decode_envelope(bad)


@given(
    src=st.sampled_from([pair for pair, _ in ALLOWED]),
    attempt=st.integers(min_value=0, max_value=2**31 - 1),
    job_id=st.integers(min_value=1, max_value=2**63 - 1),
    reason=st.none() | st.text(max_size=40),
)
def test_envelope_round_trips_for_every_transition(
    src: tuple[str | None, str], attempt: int, job_id: int, reason: str | None
) -> None:
    from_status, to_status = src
    envelope = EventEnvelope(
        event_id="id",
        event_type=check(from_status, to_status),
        occurred_at=datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC),
        job_id=job_id,
        kind="k",
        queue="q",
        from_status=None if from_status is None else JobStatus(from_status),
        to_status=JobStatus(to_status),
        attempt=attempt,
        reason=reason,
    )
    assert decode_envelope(msgspec.json.encode(envelope)) == envelope


def test_timeline_event_and_history_entry_round_trip() -> None:
    envelope = _created_envelope()
    event = TimelineEvent(
        id=1,
        event_id=envelope.event_id,
        job_id=envelope.job_id,
        event_type=envelope.event_type,
        occurred_at=envelope.occurred_at,
        envelope=envelope,
    )
    assert msgspec.json.decode(msgspec.json.encode(event), type=TimelineEvent) == event
    entry = HistoryEntry(
        id=1,
        job_id=17,
        from_status=None,
        to_status=JobStatus.PENDING,
        attempt=0,
        occurred_at=envelope.occurred_at,
        actor="sql",
    )
    decoded = msgspec.json.decode(msgspec.json.encode(entry), type=HistoryEntry)
    assert decoded == entry
    assert decoded.from_status is None


def test_job_spec_defaults_follow_the_jobs_table() -> None:
    spec = msgspec.convert({"kind": "email"}, JobSpec)
    assert spec.queue == "default"
    assert spec.payload == {}
    assert spec.priority == 0
    assert spec.depends_on == []
    assert spec.max_retries == 3
    assert spec.retry_policy is None
    assert spec.requires_network is False
    assert spec.idempotency_key is None
    with pytest.raises(msgspec.ValidationError, match="colour"):
        msgspec.convert({"kind": "email", "colour": "red"}, JobSpec)
    with pytest.raises(msgspec.ValidationError, match="kind"):
        msgspec.convert({"queue": "default"}, JobSpec)


def test_a_new_job_is_pending_with_no_attempts() -> None:
    job = Job(id=1, kind="email")
    assert job.status is JobStatus.PENDING
    assert job.attempt == 0
    assert job.attempts_counted == 0


# ---------------------------------------------------------------------------
# Clock
# ---------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    start = datetime(2030, 5, 1, tzinfo=UTC)
    clock = ManualClock(start)
    assert clock.now() == start
    assert clock.now() == start
    assert clock.advance(1.5) == start + timedelta(seconds=1.5)
    assert clock.now() == start + timedelta(seconds=1.5)
    clock.advance(3600)
    assert clock.now() == start + timedelta(seconds=3601.5)


def test_manual_clock_default_start_is_aware_utc() -> None:
    now = ManualClock().now()
    assert now.tzinfo is not None
    assert now.utcoffset() == timedelta(0)


def test_manual_clock_set_refuses_naive_datetimes() -> None:
    start = datetime(2030, 5, 1, tzinfo=UTC)
    clock = ManualClock(start)
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2031, 1, 1))  # naive on purpose
    assert clock.now() == start
    later = datetime(2031, 1, 1, tzinfo=UTC)
    clock.set(later)
    assert clock.now() == later


def test_system_clock_is_aware_utc_and_current() -> None:
    before = datetime.now(UTC)
    now = SystemClock().now()
    after = datetime.now(UTC)
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= after


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors_module, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors_module.__name__
]


def test_the_error_tree_is_complete() -> None:
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert names >= {
        "JobEngineError",
        "IllegalTransition",
        "JobNotFound",
        "InvalidJob",
        "DuplicateJob",
        "JobBusy",
        "ConfigError",
        "HandlerNotFound",
        "EgressBlocked",
        "DatabaseUnavailable",
    }


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_derives_from_the_root_and_says_when_it_is_raised(
    cls: type[BaseException],
) -> None:
    assert issubclass(cls, JobEngineError)
    doc = cls.__doc__ or ""
    assert doc.startswith("Raised when"), doc
    assert "\n" not in doc.strip()


def test_error_messages_name_what_went_wrong() -> None:
    assert str(errors_module.JobNotFound(9)) == "job 9 not found"
    dup = errors_module.DuplicateJob("k-1", existing_id=4)
    assert "'k-1'" in str(dup)
    assert dup.existing_id == 4
    assert str(errors_module.JobBusy(5)) == "job 5 is locked by another transaction; try again"
    assert "egress blocked" in str(errors_module.EgressBlocked("1.2.3.4:443"))
    assert issubclass(errors_module.HandlerNotFound, errors_module.ConfigError)
