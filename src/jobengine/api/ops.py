"""Operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`.

`/readyz` also lists the paused queues (a paused queue is not a failed check:
it is what an operator asked for, and worth seeing next to the checks).

`/healthz`, `/readyz` and `/openapi.json` are public: probes carry no token.
`/metrics` needs the read scope when tokens are configured (Prometheus sends
one with `authorization: {credentials: ...}` / `bearer_token`).
"""

from __future__ import annotations

import anyio
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from jobengine.api.auth import requires_scope
from jobengine.api.errors import UNAVAILABLE, json_response
from jobengine.api.inputs import ApiContext, context
from jobengine.api.wire import Health, Readiness
from jobengine.domain.status import JobStatus
from jobengine.metrics import (
    DEAD_ROWS,
    JOBS,
    LEDGER_DEFAULT_ROWS,
    LIMIT_HELD,
    LIMIT_RUNNING,
    OLDEST_TRANSACTION,
    QUEUE_PAUSED,
    REGISTRY,
    RETENTION_AGE,
    TABLE_BYTES,
    XMIN_AGE,
)
from jobengine.store.health import HealthStore
from jobengine.store.scheduling import SchedulingStore

#: Seconds a readiness or metrics query may take before the database counts as down.
PROBE_TIMEOUT = 3.0

_log = structlog.get_logger("jobengine.api")


async def healthz(request: Request) -> Response:
    """`GET /healthz`: 200 while the process can answer at all."""
    return json_response(Health())


async def database_reachable(ctx: ApiContext) -> bool:
    """True if the database answers `SELECT 1` within `PROBE_TIMEOUT`."""
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            await ctx.store.db.fetchval("SELECT 1")
    except UNAVAILABLE:
        return False
    return True


async def readiness_checks(ctx: ApiContext) -> dict[str, bool]:
    """Every readiness check by name: the database, the API's listener, and the caller's."""
    checks = {"database": await database_reachable(ctx), "listener": ctx.hub.connected}
    if ctx.readiness is not None:
        try:
            extra = await ctx.readiness()
        except Exception as exc:  # a broken callback means "not ready", not a 500
            _log.warning("api.readiness_callback_failed", error=repr(exc))
            extra = {"readiness_callback": False}
        for name, ok in extra.items():
            key = name if name not in checks else f"daemon_{name}"
            checks[key] = bool(ok)
    return checks


async def readyz(request: Request) -> Response:
    """`GET /readyz`: 200 when every check passes, else 503 with the same body."""
    ctx = context(request)
    checks = await readiness_checks(ctx)
    ready = all(checks.values())
    paused: list[str] = []
    if checks["database"]:
        try:
            with anyio.fail_after(PROBE_TIMEOUT):
                paused = await SchedulingStore(ctx.store.db).paused()
        except UNAVAILABLE as exc:
            _log.warning("api.readiness_without_paused_queues",
                         error=str(exc) or type(exc).__name__)
    return json_response(Readiness(ready=ready, checks=checks, paused_queues=paused),
                         200 if ready else 503)


@requires_scope("read")
async def metrics(request: Request) -> Response:
    """`GET /metrics`: Prometheus text format; jobs, queues and limits are counted now."""
    ctx = context(request)
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            await _scheduling_metrics(SchedulingStore(ctx.store.db))
    except UNAVAILABLE as exc:
        # Better no series than stale ones; the rest still renders.
        _log.warning("api.metrics_without_job_counts", error=str(exc) or type(exc).__name__)
        for gauge in (JOBS, QUEUE_PAUSED, LIMIT_HELD, LIMIT_RUNNING):
            gauge.clear()
    try:
        with anyio.fail_after(PROBE_TIMEOUT):
            await _health_metrics(HealthStore(ctx.store.db))
    except UNAVAILABLE as exc:
        _log.warning("api.metrics_without_health", error=str(exc) or type(exc).__name__)
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def _scheduling_metrics(store: SchedulingStore) -> None:
    """Jobs by status and per queue (one read of the jobs table), paused queues, limits."""
    queues = await store.queues()
    limits = await store.limits()
    # Cleared and set with no await in between: a scrape never sees half, and
    # a queue or limit key that went away leaves no stale series.
    totals = dict.fromkeys((s.value for s in JobStatus), 0)
    QUEUE_PAUSED.clear()
    for queue in queues:
        QUEUE_PAUSED.labels(queue.name).set(1 if queue.paused else 0)
        for status, n in queue.counts.items():
            totals[status] = totals.get(status, 0) + n
    for status, n in totals.items():
        JOBS.labels(status).set(n)
    LIMIT_HELD.clear()
    LIMIT_RUNNING.clear()
    for limit in limits:
        LIMIT_HELD.labels(limit.key).set(limit.held)
        LIMIT_RUNNING.labels(limit.key).set(limit.running)


async def _health_metrics(health: HealthStore) -> None:
    """The figures `jobengine doctor` judges, as gauges."""
    for table in await health.tables():
        TABLE_BYTES.labels(table.name).set(table.table_bytes + table.index_bytes)
        DEAD_ROWS.labels(table.name).set(table.dead_rows)
    horizon = await health.horizon()
    OLDEST_TRANSACTION.set(horizon.oldest_transaction_seconds)
    for holder, age in (("session", horizon.session_xmin_age), ("slot", horizon.slot_xmin_age),
                        ("prepared", horizon.prepared_xact_age)):
        XMIN_AGE.labels(holder).set(age)
    retention = await health.retention()
    if retention.last_pass is not None:
        RETENTION_AGE.set((retention.now - retention.last_pass).total_seconds())
    LEDGER_DEFAULT_ROWS.set(retention.default_rows)


async def openapi(request: Request) -> Response:
    """`GET /openapi.json`: the OpenAPI 3.1 document (built once per app)."""
    document: bytes = request.app.state.openapi
    return Response(document, media_type="application/json")


ROUTES = [
    Route("/healthz", healthz, methods=["GET"], name="healthz"),
    Route("/readyz", readyz, methods=["GET"], name="readyz"),
    Route("/metrics", metrics, methods=["GET"], name="metrics"),
    Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
]
