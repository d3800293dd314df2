"""Helpers the dashboard's tests share (this module holds no tests)."""

from __future__ import annotations

import re
from datetime import timedelta

import asyncpg
import httpx

from jobengine.domain import Job, JobSpec
from jobengine.store import Completion, JobStore

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def completed_job(pool: asyncpg.Pool, spec: JobSpec) -> Job:
    """A job that was claimed and finished (result {"ok": true})."""
    store = JobStore(pool)
    job, _ = await store.insert(spec)
    await run_to_completion(pool, job.id, spec.kind)
    return await store.get(job.id)


async def claim(pool: asyncpg.Pool, job_id: int, kind: str) -> Job:
    """Claim `job_id` (the only job of its kind waiting) as daemon d1."""
    claimed = await JobStore(pool).claim(
        owner="d1", queues=["default"], kinds=[kind], limit=1, lease_ttl=timedelta(seconds=30))
    assert [j.id for j in claimed] == [job_id]
    return claimed[0]


async def run_to_completion(pool: asyncpg.Pool, job_id: int, kind: str) -> None:
    """Claim the job and finish it, as a daemon elsewhere would."""
    running = await claim(pool, job_id, kind)
    await JobStore(pool).finish("d1", [Completion(job_id, running.attempt, {"ok": True})])


def csrf_of(page: httpx.Response) -> str:
    """The CSRF token a rendered page carries in its forms."""
    match = _CSRF.search(page.text)
    assert match, "the page has no form with a CSRF token"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """Sign in through the form, as a browser does (the client keeps the cookies)."""
    form = await client.get("/ui/login")
    return await client.post("/ui/login", data={"token": token, "csrf": csrf_of(form)})
