"""Take the README's screenshots of the dashboard (Playwright driving Debian's Chromium).

    python docs/screenshots/take.py http://127.0.0.1:8080 MERGE_JOB_ID

against a server whose database holds something to see (the README's
pictures: the bench's 10M-job database with a live hour, a small DAG).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from playwright.async_api import async_playwright

HERE = Path(__file__).resolve().parent


async def main(base: str, job: str) -> None:
    pages = {
        "overview": "/ui/",
        "jobs": '/ui/jobs?payload={"customer": 42}',
        "job": f"/ui/jobs/{job}",
        "queues": "/ui/queues",
        "schedules": "/ui/schedules",
    }
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium")
        page = await browser.new_page(viewport={"width": 1360, "height": 860})
        for name, path in pages.items():
            await page.goto(base + path)
            await page.wait_for_load_state("networkidle")
            await page.screenshot(path=str(HERE / f"{name}.png"), full_page=name != "jobs")
        await browser.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
