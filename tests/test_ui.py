"""The dashboard over HTTP: what its pages show, who may see and act, and its bounded reads.

Through the app itself (httpx's ASGI transport, no browser): the browser's
side (live updates, clicks) is `tests/test_ui_browser.py`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import httpx
import pytest

from jobengine.api.tokens import TokenAuthorizer
from jobengine.domain import JobSpec, JobStatus
from jobengine.domain.schedules import ScheduleSpec
from jobengine.store import Completion, Failure, JobStore, SchedulingStore
from jobengine.store.dashboard import DashboardStore
from tests.apiutil import READER, TOKENS, WRITER, app_client, failed_job
from tests.dbutil import wait_for
from tests.uiutil import claim, completed_job, csrf_of, sign_in

pytestmark = pytest.mark.anyio


@pytest.fixture
async def ui(api_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The app without tokens (loopback): everyone may read and act."""
    async with app_client(api_pool) as client:
        yield client


@pytest.fixture
async def secured(api_pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the read and write tokens of `tests.apiutil`."""
    async with app_client(api_pool, authorizer=TokenAuthorizer(TOKENS)) as client:
        yield client


def card(page: httpx.Response, status: str) -> int:
    match = re.search(rf'data-status="{status}">\s*<span class="label">{status}</span>\s*'
                      r'<span class="value" data-count="(\d+)" data-exact="yes"', page.text)
    assert match, f"no exact count for {status}"
    return int(match.group(1))


async def test_overview_counts_jobs_by_status_and_queue(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    for _ in range(3):
        await store.insert(JobSpec(kind="email"))
    await store.insert(JobSpec(kind="email", queue="reports"))
    await completed_job(api_pool, JobSpec(kind="resize"))
    await failed_job(api_pool)
    page = await ui.get("/ui/")
    assert page.status_code == 200
    counts = {s.value: card(page, s.value) for s in JobStatus}
    assert counts == {"pending": 4, "scheduled": 0, "running": 0, "completed": 1, "failed": 1,
                      "cancelled": 0}
    row = re.search(r'<tr data-queue="reports">(.*?)</tr>', page.text, re.S)
    assert row
    assert ">1</a>" in row.group(1)
    assert "Oldest waiting job" in page.text
    assert 'href="/ui/jobs/1"' in page.text


async def test_counts_past_the_exact_limit_are_the_planners_estimates(
        api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    for _ in range(6):
        await store.insert(JobSpec(kind="email"))
    await api_pool.execute("ANALYZE jobengine.jobs")
    counts = await DashboardStore(api_pool, exact_up_to=3).counts()
    pending = counts.total[JobStatus.PENDING]
    assert not pending.exact
    assert pending.n >= 3
    assert counts.total[JobStatus.RUNNING].exact
    assert counts.total[JobStatus.RUNNING].n == 0
    assert not counts.by_queue["default"][JobStatus.PENDING].exact
    exact = await DashboardStore(api_pool).counts()
    assert exact.total[JobStatus.PENDING].n == 6
    assert exact.total[JobStatus.PENDING].exact


async def test_the_last_hour_counts_finished_jobs_by_minute(api_pool: asyncpg.Pool) -> None:
    await completed_job(api_pool, JobSpec(kind="email"))
    await completed_job(api_pool, JobSpec(kind="email"))
    await failed_job(api_pool)
    minutes = await DashboardStore(api_pool).minutes()
    assert len(minutes) == 60
    assert sum(m.completed for m in minutes) == 2
    assert sum(m.failed for m in minutes) == 1
    assert all(m.exact for m in minutes)
    latencies = [m.latency_p50 for m in minutes if m.latency_p50 is not None]
    assert latencies
    assert all(v >= 0 for v in latencies)
    # a full minute is scaled from the part its sample covers: never below what was read
    sampled = await DashboardStore(api_pool, minute_sample=1).minutes()
    busy = [m for m in sampled if not m.exact]
    assert busy
    assert sum(m.completed + m.failed for m in sampled) >= 1


async def test_the_last_hour_samples_a_burst_as_much_as_it_weighs(api_pool: asyncpg.Pool) -> None:
    # 20 jobs fail, then 180 complete: the first jobs of the minute are all failures.
    await api_pool.execute("INSERT INTO jobengine.jobs (kind) SELECT 'burst' FROM generate_series(1, 200)")
    store = JobStore(api_pool)
    lease = timedelta(seconds=30)
    failing = await store.claim(owner="d1", queues=["default"], kinds=["burst"], limit=20, lease_ttl=lease)
    await store.fail("d1", [Failure(j.id, j.attempt, "boom") for j in failing])
    rest = await store.claim(owner="d1", queues=["default"], kinds=["burst"], limit=180, lease_ttl=lease)
    await store.finish("d1", [Completion(j.id, j.attempt) for j in rest])
    # ten picks spread over the 200 (not the first ten): one in ten is a failure
    minutes = await DashboardStore(api_pool, minute_sample=10).minutes()
    assert sum(m.failed for m in minutes) == pytest.approx(20)
    assert sum(m.completed for m in minutes) == pytest.approx(180)


async def test_the_oldest_waiting_job_may_be_one_waiting_on_its_dependencies(
    api_pool: asyncpg.Pool,
) -> None:
    # (jobs waiting on dependencies sort last in the claim order: they are read apart)
    store = JobStore(api_pool)
    now = await api_pool.fetchval("SELECT statement_timestamp()")
    parent = (await store.insert(JobSpec(kind="email", run_at=now - timedelta(hours=2))))[0]
    blocked = (await store.insert(JobSpec(kind="email", run_at=now - timedelta(hours=3),
                                          depends_on=[parent.id])))[0]
    await store.insert(JobSpec(kind="email", run_at=now - timedelta(hours=1)))
    # (each index's first one only: the blocked job would be past the first in claim order)
    oldest = await DashboardStore(api_pool).oldest_waiting(heads=1)
    assert oldest is not None
    assert oldest.job.id == blocked.id


async def test_a_job_page_shows_fields_history_timeline_and_escapes_the_payload(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    evil = "<script>alert(1)</script>"
    job = await completed_job(api_pool, JobSpec(kind="email", payload={"to": evil}))
    page = await ui.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    assert evil not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    history = re.search(r'<table class="grid" id="history">(.*?)</table>', page.text, re.S)
    assert history is not None
    assert history.group(1).count("<tr>") == 1 + 4  # header, created/scheduled/started/completed
    assert "job.completed" in page.text
    assert "&#34;ok&#34;: true" in page.text


async def test_pages_carry_a_csp_and_no_inline_script(ui: httpx.AsyncClient,
                                                      api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job.id}", "/ui/queues", "/ui/schedules"):
        page = await ui.get(path)
        assert page.status_code == 200, path
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert page.headers["x-frame-options"] == "DENY"
        scripts = re.findall(r"<script([^>]*)>", page.text)
        assert scripts, path
        assert all('src="/ui/static/' in s for s in scripts), path
        assert not re.search(r"<[^>]+\son[a-z]+=", page.text), path
        assert "javascript:" not in page.text, path
    static = await ui.get("/ui/static/vendor/uplot/uPlot.iife.min.js")
    assert static.status_code == 200
    assert "uPlot" in static.text


async def test_a_job_page_links_its_dag_parents_and_children(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    parent, _ = await store.insert(JobSpec(kind="fetch"))
    middle, _ = await store.insert(JobSpec(kind="parse", depends_on=[parent.id]))
    child, _ = await store.insert(JobSpec(kind="store", depends_on=[middle.id]))
    page = await ui.get(f"/ui/jobs/{middle.id}")
    dag = re.search(r'<svg class="dag".*?</svg>', page.text, re.S)
    assert dag is not None
    assert f'href="/ui/jobs/{parent.id}"' in dag.group(0)
    assert f'href="/ui/jobs/{child.id}"' in dag.group(0)
    assert f"#{child.id} · pending" in dag.group(0)


async def test_the_jobs_list_filters_and_pages_newest_first(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    ids = [(await store.insert(JobSpec(kind="bill", payload={"customer": i % 3, "n": i})))[0].id
           for i in range(9)]
    await store.insert(JobSpec(kind="other", queue="q2", payload={"customer": 1}))
    page = await ui.get("/ui/jobs", params={"kind": "bill", "payload": '{"customer": 1}',
                                            "status": "", "queue": ""})
    assert page.status_code == 200
    shown = [int(x) for x in re.findall(r'<tr data-job="(\d+)">', page.text)]
    assert shown == [ids[7], ids[4], ids[1]]
    bad = await ui.get("/ui/jobs", params={"payload": "[1, 2]"})
    assert bad.status_code == 422
    assert "a JSON object" in bad.text
    dash = DashboardStore(api_pool)
    first = await dash.jobs(kind="bill", limit=4)
    assert [j.id for j in first.jobs] == ids[:-5:-1]
    assert first.next_before == ids[5]
    second = await dash.jobs(kind="bill", limit=4, before=first.next_before)
    assert [j.id for j in second.jobs] == ids[4:0:-1]
    # a scan bound stops early and says where to go on
    bounded = await dash.jobs(payload={"customer": 2}, limit=10, scan=3)
    assert bounded.scanned == 3
    assert bounded.next_before is not None
    assert all(j.payload["customer"] == 2 for j in bounded.jobs)


async def test_cancel_and_retry_from_the_dashboard_are_recorded_as_the_api(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    job, _ = await store.insert(JobSpec(kind="email"))
    page = await ui.get(f"/ui/jobs/{job.id}")
    assert 'id="cancel"' in page.text
    done = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    assert done.headers["location"] == f"/ui/jobs/{job.id}"
    history = await store.history(job.id)
    assert (history[-1].to_status, history[-1].actor) == (JobStatus.CANCELLED, "api")
    again = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(page)})
    assert again.status_code == 409
    assert "cannot move from cancelled" in again.text
    failed = await failed_job(api_pool)
    retried = await ui.post(f"/ui/jobs/{failed.id}/retry", data={"csrf": csrf_of(page)})
    assert retried.status_code == 303
    assert (await store.get(failed.id)).status is JobStatus.SCHEDULED
    assert (await store.history(failed.id))[-1].actor == "api"


async def test_bulk_cancel_reports_each_job(ui: httpx.AsyncClient,
                                            api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    a, _ = await store.insert(JobSpec(kind="email"))
    b, _ = await store.insert(JobSpec(kind="email"))
    done = await completed_job(api_pool, JobSpec(kind="resize"))
    page = await ui.get("/ui/jobs")
    result = await ui.post("/ui/jobs/bulk", data={
        "csrf": csrf_of(page), "action": "cancel", "ids": [str(a.id), str(b.id), str(done.id)]})
    assert result.status_code == 200
    assert "2 of 3 done" in result.text
    assert "cannot move from completed" in result.text
    assert {(await store.get(i)).status for i in (a.id, b.id)} == {JobStatus.CANCELLED}


async def test_actions_need_the_csrf_token_and_this_origin(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    page = await ui.get(f"/ui/jobs/{job.id}")
    token = csrf_of(page)
    missing = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"other": "1"})
    wrong = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": "x" * 43})
    elsewhere = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": token},
                              headers={"origin": "https://evil.example"})
    cross = await ui.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": token},
                          headers={"sec-fetch-site": "cross-site"})
    assert [r.status_code for r in (missing, wrong, elsewhere, cross)] == [403] * 4
    assert (await JobStore(api_pool).get(job.id)).status is JobStatus.PENDING


async def test_with_tokens_nothing_shows_without_signing_in(
        secured: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email", payload={"secret": 1}))
    for path in ("/ui/", "/ui/jobs", f"/ui/jobs/{job.id}", "/ui/queues", "/ui/schedules"):
        page = await secured.get(path)
        assert page.status_code == 303, path
        assert page.headers["location"] == "/ui/login", path
    assert (await secured.get("/v1/events")).status_code == 401
    refused = await sign_in(secured, "je_not-a-token")
    assert refused.status_code == 401
    assert "not valid" in refused.text
    assert "jobengine_session" not in secured.cookies


async def test_a_read_token_sees_but_cannot_act(secured: httpx.AsyncClient,
                                                api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    signed = await sign_in(secured, READER)
    assert signed.status_code == 303
    set_cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in set_cookie
    assert "SameSite=strict" in set_cookie
    assert READER not in signed.headers.get("location", "")
    page = await secured.get(f"/ui/jobs/{job.id}")
    assert page.status_code == 200
    assert 'id="cancel"' not in page.text
    assert "(read only)" in page.text
    refused = await secured.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(page)})
    assert refused.status_code == 403
    assert (await JobStore(api_pool).get(job.id)).status is JobStatus.PENDING
    assert (await secured.get("/v1/jobs")).status_code == 200  # the cookie reads the API too


async def test_a_write_token_acts_and_the_cookie_never_writes_the_rest_api(
        secured: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    await sign_in(secured, WRITER)
    rest = await secured.post(f"/v1/jobs/{job.id}/cancel")
    assert rest.status_code == 401  # a REST write takes the bearer header only (no CSRF there)
    page = await secured.get(f"/ui/jobs/{job.id}")
    assert 'id="cancel"' in page.text
    done = await secured.post(f"/ui/jobs/{job.id}/cancel", data={"csrf": csrf_of(page)})
    assert done.status_code == 303
    assert (await JobStore(api_pool).get(job.id)).status is JobStatus.CANCELLED
    out = await secured.post("/ui/logout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    assert (await secured.get("/ui/")).status_code == 303


async def test_queues_pause_and_resume_and_show_limits(
        ui: httpx.AsyncClient, api_pool: asyncpg.Pool) -> None:
    await JobStore(api_pool).insert(JobSpec(kind="email", queue="mail"))
    scheduling = SchedulingStore(api_pool)
    await scheduling.set_concurrency_limit("customer-7", 2)
    page = await ui.get("/ui/queues")
    assert '<tr data-queue="mail">' in page.text
    assert "customer-7" in page.text
    paused = await ui.post("/ui/queues/mail/pause", data={"csrf": csrf_of(page)})
    assert paused.status_code == 303
    assert await scheduling.paused() == ["mail"]
    page = await ui.get("/ui/queues")
    assert 'action="/ui/queues/mail/resume"' in page.text
    await ui.post("/ui/queues/mail/resume", data={"csrf": csrf_of(page)})
    assert await scheduling.paused() == []


async def test_schedules_show_next_ticks_and_pause(ui: httpx.AsyncClient,
                                                   api_pool: asyncpg.Pool) -> None:
    scheduling = SchedulingStore(api_pool)
    await scheduling.upsert_schedule(ScheduleSpec(name="nightly", kind="report",
                                                  every=timedelta(hours=1)))
    page = await ui.get("/ui/schedules")
    row = re.search(r'<tr data-schedule="nightly">(.*?)</tr>', page.text, re.S)
    assert row
    assert row.group(1).count("<br>") == 2
    await ui.post("/ui/schedules/nightly/pause", data={"csrf": csrf_of(page)})
    stored = await scheduling.schedule("nightly")
    assert stored is not None
    assert not stored.enabled
    missing = await ui.post("/ui/schedules/nope/pause", data={"csrf": csrf_of(page)})
    assert missing.status_code == 404


async def test_the_event_head_is_where_later_events_start(api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    await store.insert(JobSpec(kind="email"))
    head, committed = await store.events_head()
    assert [e for e in (await store.events_after(head)).events
            if e["event_id"] not in committed] == []
    job, _ = await store.insert(JobSpec(kind="email"))
    await claim(api_pool, 1, "email")

    async def later() -> set[int] | None:
        # (events wait for every older transaction in the cluster to end: poll)
        ids = {e["job_id"] for e in (await store.events_after(head)).events
               if e["event_id"] not in committed}
        return ids if job.id in ids else None

    assert await wait_for(later, within=60, message="the later events") == {1, job.id}
