"""The dashboard in a real browser: Playwright driving Debian's Chromium (`/usr/bin/chromium`).

One browser for the module, a fresh context (cookies) and a fresh database
per test; the server is the real app on uvicorn with the test tokens, on a
pool whose connections carry actor `api` (as `jobengine api` makes it). What
changes "elsewhere" is written through the store, as a daemon would. Waits
are Playwright's own (`expect`, polling the page), never fixed sleeps.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from jobengine.api.tokens import TokenAuthorizer
from jobengine.domain import JobSpec
from jobengine.store import JobStore, create_pool
from tests.apiutil import READER, TOKENS, WRITER, live_server
from tests.uiutil import completed_job, run_to_completion

playwright = pytest.importorskip("playwright.async_api")
from playwright.async_api import Browser, Page, Route, async_playwright, expect  # noqa: E402

CHROMIUM = os.environ.get("JOBENGINE_TEST_CHROMIUM", "/usr/bin/chromium")
#: How long the page may take to show a change: generous, for a loaded 2-core CI machine
#: (and the event stream passes an event only once every older transaction has ended).
WAIT_MS = 30_000

pytestmark = [
    pytest.mark.anyio,
    # (skipped on a developer's machine without it; in CI, where .ci/run installs it, a
    # missing browser fails the launch instead of hiding the tests)
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def base_url(api_pool: asyncpg.Pool) -> AsyncIterator[str]:
    async with live_server(api_pool, authorizer=TokenAuthorizer(TOKENS)) as url:
        yield url


async def signed_in(browser: Browser, base_url: str, token: str) -> Page:
    """A new page (its own cookies) signed in with `token` through the form."""
    context = await browser.new_context(base_url=base_url)
    page = await context.new_page()
    await page.goto("/ui/")
    await expect(page).to_have_url(f"{base_url}/ui/login")
    await page.fill('input[name="token"]', token)
    await page.click('button[type="submit"]')
    await expect(page).to_have_url(f"{base_url}/ui/")
    return page


async def test_the_overview_shows_the_counts(browser: Browser, base_url: str,
                                             api_pool: asyncpg.Pool) -> None:
    store = JobStore(api_pool)
    for _ in range(3):
        await store.insert(JobSpec(kind="email"))
    await completed_job(api_pool, JobSpec(kind="resize"))
    page = await signed_in(browser, base_url, READER)
    await expect(page.locator('[data-status="pending"] .value')).to_have_text("3")
    await expect(page.locator('[data-status="completed"] .value')).to_have_text("1")
    await expect(page.locator("#charts canvas")).to_have_count(3)  # uPlot drew the charts
    # live: a job created elsewhere shows up without a reload
    await store.insert(JobSpec(kind="email"))
    await expect(page.locator('[data-status="pending"] .value')).to_have_text(
        "4", timeout=WAIT_MS)
    await page.context.close()


async def test_a_job_page_shows_its_history_and_follows_the_job(
        browser: Browser, base_url: str, api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email", payload={"to": "a@b"}))
    page = await signed_in(browser, base_url, READER)
    await page.goto(f"/ui/jobs/{job.id}")
    await expect(page.locator("#history tbody tr")).to_have_count(1)
    await expect(page.locator("#job-status")).to_have_text("pending")
    await expect(page.locator("#live-state")).to_have_text("live")
    # the job runs and completes elsewhere (a daemon): the open page follows
    await run_to_completion(api_pool, job.id, "email")
    await expect(page.locator("#job-status")).to_have_text("completed", timeout=WAIT_MS)
    await expect(page.locator("#history tbody tr")).to_have_count(4)
    await expect(page.locator("#result")).to_contain_text('"ok": true')
    await page.context.close()


async def test_cancel_from_the_page_is_in_the_history_as_the_api(
        browser: Browser, base_url: str, api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    page = await signed_in(browser, base_url, WRITER)
    await page.goto(f"/ui/jobs/{job.id}")
    await page.click("#cancel")
    await expect(page.locator("#job-status")).to_have_text("cancelled")
    last = page.locator("#history tbody tr").last
    await expect(last.locator(".actor")).to_have_text("api")
    await expect(last).to_contain_text("cancelled")
    await expect(page.locator("#cancel")).to_have_count(0)
    await page.context.close()


async def test_a_read_token_cannot_cancel(browser: Browser, base_url: str,
                                          api_pool: asyncpg.Pool) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    page = await signed_in(browser, base_url, READER)
    await page.goto(f"/ui/jobs/{job.id}")
    await expect(page.locator("#job-status")).to_have_text("pending")
    await expect(page.locator("#cancel")).to_have_count(0)
    csrf = await page.locator('input[name="csrf"]').first.get_attribute("value")
    # the same POST a form would send, with this browser's cookies: refused
    response = await page.request.post(f"/ui/jobs/{job.id}/cancel", form={"csrf": csrf or ""})
    assert response.status == 403
    assert (await JobStore(api_pool).get(job.id)).status.value == "pending"
    await page.context.close()


async def test_a_payload_with_a_script_is_shown_as_text(
        browser: Browser, base_url: str, api_pool: asyncpg.Pool) -> None:
    evil = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email", payload={"html": evil}))
    page = await signed_in(browser, base_url, READER)
    await page.goto(f"/ui/jobs/{job.id}")
    await expect(page.locator("#payload")).to_contain_text("<script>window.pwned = 1</script>")
    await page.goto("/ui/jobs?kind=email")
    await expect(page.locator(f'tr[data-job="{job.id}"] .payload')).to_contain_text("<script>")
    assert await page.evaluate("window.pwned") is None
    assert await page.locator("#payload img, .payload img").count() == 0
    await page.context.close()


async def test_a_lost_stream_resumes_from_its_cursor(
        browser: Browser, base_url: str, api_pool: asyncpg.Pool, db_dsn: str) -> None:
    job, _ = await JobStore(api_pool).insert(JobSpec(kind="email"))
    page = await signed_in(browser, base_url, READER)
    streams: list[dict[str, str]] = []
    page.on("request", lambda r: streams.append({"url": r.url, **r.headers})
            if "/v1/events" in r.url else None)
    # The page's first stream is lost at once (ended as a dropped connection ends it,
    # before any event): the browser must come back on its own, from its cursor.
    cut: list[str] = []

    async def lose_the_first(route: Route) -> None:
        if not cut:
            cut.append(route.request.url)
            await route.fulfill(status=200, headers={"content-type": "text/event-stream"},
                                body="retry: 200\n\n")
        else:
            await route.continue_()

    await page.route("**/v1/events*", lose_the_first)
    await page.goto(f"/ui/jobs/{job.id}")
    await expect(page.locator("#live-state")).to_have_text("live", timeout=WAIT_MS)
    elsewhere = await create_pool(db_dsn, actor="d1", min_size=1, max_size=2)
    try:
        await run_to_completion(elsewhere, job.id, "email")
    finally:
        await elsewhere.close()
    await expect(page.locator("#job-status")).to_have_text("completed", timeout=WAIT_MS)
    # the browser came back with the cursor it had reached, not from the start
    again = streams[1:]
    assert again, streams
    resumed = again[-1].get("last-event-id") or again[-1]["url"].split("after=")[-1]
    assert resumed, again
    assert resumed not in ("0", "0-0"), again
    await page.context.close()
