"""The web page at `/` in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import put_sources, serve, slow_origin
from worker import build_worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield launched
        await launched.close()


async def start(page: Page, base: str, ids: str) -> None:
    await page.goto(base + "/")
    await page.fill("#ids", ids)
    await page.click("#start button, #start [type=submit]")


async def test_start_follow_and_link(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000, 10_002: 3000})
    async with serve(settings) as (client, _), build_worker(env.client, settings, store):
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await start(page, str(client.base_url), "10001, 10002 99999")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=30_000)
        await expect(page.locator("#bar")).to_have_attribute("value", "100")
        await expect(page.locator("#files")).to_contain_text("99999: failed (not found)")
        await expect(page.locator("#files")).to_contain_text("10001: completed")
        href = await page.locator("#link").get_attribute("href")
        assert href is not None and await page.locator("#link").is_visible()
        archive = await page.request.get(href)
        assert archive.ok and (await archive.body())[:2] == b"PK"
        assert await page.locator("#cancel").is_hidden()
        assert errors == []


async def test_cancel_then_retry(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000})
    slow = slow_origin(settings, 3000)
    async with serve(settings) as (client, _), build_worker(env.client, slow, store):
        page = await browser.new_page()
        await start(page, str(client.base_url), "10001")
        await expect(page.locator("#cancel")).to_be_visible()
        await page.click("#cancel")
        await expect(page.locator("#job-status")).to_have_text("cancelled", timeout=30_000)
        await expect(page.locator("#retry")).to_be_visible()
        await page.click("#retry")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=30_000)
        await expect(page.locator("#link")).to_be_visible()
