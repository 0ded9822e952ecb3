"""The web page at `/` in a real browser (Debian's chromium driven by Playwright), against the real
API, a real worker, Temporal and S3. Every test also checks that the page stays on loopback, raises
no script error and trips no Content-Security-Policy rule.

Screenshots of the page (desktop and phone) are written to `artifacts/screenshots/` (git-ignored).
"""

from __future__ import annotations

import io
import re
import shutil
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Browser, Locator, Page, Route, async_playwright, expect
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import put_sources, serve, slow_origin, sse_events, wait_for
from worker import build_worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)
FINISHED = 30_000  # ms: how long a small job may take on a loaded machine
PHONE = {"width": 375, "height": 667}
DESKTOP = {"width": 1100, "height": 900}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"


async def screenshot(page: Page, name: str) -> Path:
    """The whole page as a PNG in `SCREENSHOTS`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    return path


@pytest.fixture(scope="module")
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


@asynccontextmanager
async def browsing(browser: Browser, **options: Any) -> AsyncIterator[Page]:
    """A page in a fresh context; on a clean exit, nothing left loopback and nothing broke."""
    context = await browser.new_context(accept_downloads=True, **{"viewport": DESKTOP, **options})
    page = await context.new_page()
    hosts: set[str] = set()
    problems: list[str] = []
    page.on("request", lambda request: hosts.add(urlsplit(request.url).hostname or "?"))
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on(
        "console",
        lambda msg: problems.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    try:
        yield page
        assert hosts <= {"127.0.0.1"}, f"requests left loopback: {hosts}"
        assert problems == []
    finally:
        await context.close()


async def start(page: Page, base: str, ids: str) -> str:
    """Start a job from the form; returns its id as the page's URL names it."""
    await page.goto(base + "/")
    await page.get_by_label("File ids").fill(ids)
    await page.get_by_role("button", name="Start download").click()
    await page.wait_for_url(re.compile(r"\?job="))
    return job_in_url(page)


def job_in_url(page: Page) -> str:
    return parse_qs(urlsplit(page.url).query)["job"][0]


def file_item(page: Page, file_id: int) -> Locator:
    return page.locator("#files li", has_text=f"{file_id}:")


async def test_start_shows_progress_files_and_archive(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    sources = put_sources(store, settings, {10_001: 100_000, 10_002: 100_000})
    slow = slow_origin(settings, 2000)
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow, store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        job_id = await start(page, base, "10001, 10002 99999")
        await expect(page.locator("#job-id")).to_have_text(job_id)
        # While it runs: the first file done, the next one in work, an ETA.
        await expect(page.locator("#job-status")).to_have_text("processing", timeout=FINISHED)
        await expect(page.locator("#detail")).to_contain_text("1 of 3 files done")
        await expect(file_item(page, 10_002)).to_contain_text("10002: processing")
        await expect(page.locator("#percent")).to_have_text(re.compile(r"[1-9]\d%"))
        # An ETA or "estimating…" (which one: test_renders_what_the_api_answers).
        await expect(page.locator("#eta:visible, #estimating:visible")).to_have_count(1)
        await screenshot(page, "desktop-running")

        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.locator("#bar")).to_have_attribute("value", "100")
        await expect(page.locator("#percent")).to_have_text("100%")
        await expect(page.locator("#eta")).to_be_hidden()
        missing = file_item(page, 99_999)
        await expect(missing).to_have_text("99999: failed (not found)")
        await expect(missing).to_have_attribute("data-status", "failed")
        await expect(page.locator("#missing")).to_have_text("Not in the archive: 99999 (not found)")
        await expect(file_item(page, 10_001)).to_contain_text("10001: completed, 97.7 KiB")
        await expect(page.locator("#cancel")).to_be_hidden()
        await expect(page.locator("#retry")).to_be_hidden()

        # A completed file's own link serves that file.
        file_link = file_item(page, 10_001).get_by_role("link", name="Download file 10001")
        href = await file_link.get_attribute("href")
        assert href is not None
        assert await (await page.request.get(href)).body() == sources[10_001]

        # Every archive part with its size, and the link expiry, as the API reports them.
        status = (await client.get(f"/v1/download/status/{job_id}")).json()
        sizes = status.get("archiveSizes") or [status["archiveSize"]]
        parts = page.locator("#parts li")
        await expect(parts).to_have_count(len(sizes))
        for part, size in zip(await parts.all(), sizes, strict=True):
            await expect(part.locator("data")).to_have_attribute("value", str(size))
        expires = await page.locator("#expires").get_attribute("datetime")
        assert expires is not None
        left = datetime.fromisoformat(expires) - datetime.now(UTC)
        assert abs(left.total_seconds() - settings.presign_expiry_seconds) < 120

        # The archive link downloads the bundle.
        async with page.expect_download() as download_info:
            await page.get_by_role("link", name="Download the archive").click()
        path = await (await download_info.value).path()
        archive = zipfile.ZipFile(io.BytesIO(Path(path).read_bytes()))
        assert {"10001.zip", "10002.zip"} <= set(archive.namelist())
        assert archive.read("10002.zip") == sources[10_002]

        # "Copy link" puts the archive's link on the clipboard and says so.
        await page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        await page.get_by_role("button", name="Copy the archive link").click()
        await expect(parts.first.get_by_role("status")).to_have_text("Copied")
        copied = await page.evaluate("navigator.clipboard.readText()")
        assert copied == await page.get_by_role("link", name="Download the archive").get_attribute(
            "href"
        )
        assert copied.startswith(settings.s3_public_endpoint or settings.s3_endpoint)

        # The favicon: linked from the page, and at /favicon.ico for browsers that ask there.
        icon = await page.locator("link[rel=icon]").get_attribute("href")
        for icon_path in (icon, "/favicon.ico"):
            resp = await page.request.get(f"{base}{icon_path}")
            assert resp.status == 200 and resp.headers["content-type"] == "image/svg+xml"
            assert (await resp.body()).startswith(b"<svg")
        await screenshot(page, "desktop-completed")


async def render(page: Page, job: dict[str, Any]) -> None:
    """Show `job` (an API answer) in the job view of a page that follows no job."""
    await page.wait_for_function("state.info !== null")
    await page.evaluate("job => render(job)", job)


async def test_renders_what_the_api_answers(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """Real answers of the API at each stage, given to the page's renderer directly (no stream
    runs, so nothing changes under the assertions): ETA or "estimating…", the file in work with
    its bytes, a progress event's changed files, every archive part with its size, the list."""
    put_sources(store, settings, {10_001: 3_000, 10_002: 300_000})
    slow = slow_origin(settings, 1500)
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow, store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        started = await client.post(
            "/v1/download/initiate", json={"file_ids": [10_001, 10_002, 99_999]}
        )
        job_id = started.json()["jobId"]
        status_path = f"/v1/download/status/{job_id}"
        early = (await client.get(status_path)).json()
        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as stream:
            first_event = await anext(aiter(sse_events(stream)))
        await page.goto(base + "/")

        # Early, the ETA is "estimating…" when the API says its figure is a guess, or says
        # nothing of its basis (an older server) while less than 10 % is done.
        assert early["completedFiles"] == 0, early
        await render(page, early)
        guess = early.get("etaBasis", "estimating") == "estimating"
        await expect(page.locator("#estimating")).to_be_visible(visible=guess)
        await expect(page.locator("#eta")).to_be_visible(visible=not guess)
        await expect(page.locator("#estimating")).to_have_text("Time left: estimating…")
        await render(page, {**early, "etaBasis": "estimating", "estimatedCompletionAt": None})
        await expect(page.locator("#estimating")).to_be_visible()
        # A server without etaBasis: its figure is shown from 10 % on, however many files are done.
        older = {k: v for k, v in early.items() if k != "etaBasis"}
        older["estimatedCompletionAt"] = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        await render(page, {**older, "completedFiles": 2, "progress": 9})
        await expect(page.locator("#estimating")).to_be_visible()
        await render(page, {**older, "completedFiles": 2, "progress": 10})
        await expect(page.locator("#eta-time")).to_have_text(re.compile(r"^5 min \("))
        await expect(page.locator("#estimating")).to_be_hidden()
        await render(page, early)
        await expect(file_item(page, 99_999)).to_contain_text(re.compile("pending|processing"))
        await expect(page.locator("#missing")).to_be_hidden()

        # A progress event's changed files replace theirs at once: a missing file is marked as
        # soon as the API says it failed. (A server whose events carry no changedFiles: the
        # failed file as the status later reports it.)
        final_status = await wait_for(lambda: finished(client, status_path), timeout=60)
        gone = next(f for f in final_status["files"] if f["file_id"] == 99_999)
        event = {**first_event["data"], "changedFiles": [gone]}
        await page.evaluate("event => onProgress(state.follow, event)", event)
        await expect(file_item(page, 99_999)).to_have_text("99999: failed (not found)")
        await expect(file_item(page, 10_001)).to_be_visible()
        await expect(page.locator("#missing")).to_have_text("Not in the archive: 99999 (not found)")

        # The file in work with its bytes, when the API reports them (currentFileBytes/Size).
        running = {
            **early,
            "status": "processing",
            "currentFile": 10_002,
            "files": [
                {**f, "status": "processing"} if f["file_id"] == 10_002 else f
                for f in early["files"]
            ],
        }
        if "currentFileSize" not in running:
            running |= {"currentFileBytes": 102_400, "currentFileSize": 300_000}
        await render(page, running)
        done, size = running["currentFileBytes"], running["currentFileSize"]
        in_work = file_item(page, 10_002)
        await expect(in_work).to_contain_text(f"10002: processing, {kib(done)} of {kib(size)}")
        bar = in_work.get_by_role("progressbar", name="File 10002 progress")
        await expect(bar).to_have_attribute("value", str(done))

        # Every part of the archive, with its size; a single archive is one part.
        details = (await client.get(f"/v1/download/{job_id}")).json()
        urls = details.get("downloadUrls") or [details["downloadUrl"]]
        await render(page, details)
        await expect(page.locator("#parts li")).to_have_count(len(urls))
        await expect(page.locator("#archives-title")).to_have_text("Archive")
        split = {**details, "downloadUrls": [urls[0], urls[0]], "archiveSizes": [700, 1_536]}
        await render(page, split)
        await expect(page.locator("#archives-title")).to_have_text("Archive in 2 parts")
        for n, size_text in ((1, "700 B"), (2, "1.5 KiB")):
            part = page.locator("#parts li").nth(n - 1)
            await expect(part.get_by_role("link", name=f"Download part {n} of 2")).to_be_visible()
            await expect(part).to_contain_text(size_text)
            await expect(
                part.get_by_role("button", name=f"Copy the link of part {n}")
            ).to_be_visible()
        await expect(page.locator("#estimating")).to_be_hidden()
        await expect(page.locator("#eta")).to_be_hidden()

        # The list tells jobs apart: ids (when the API lists them), file count, age in words.
        await page.get_by_role("button", name="Refresh").click()
        entry = page.locator(f'#jobs li[data-job="{job_id}"]')
        await expect(entry).to_contain_text("3 files")
        await expect(entry.locator("time")).to_have_text(re.compile(r"now|seconds? ago|minute ago"))
        listed = (await client.get("/v1/downloads")).json()["jobs"]
        summary = next(j for j in listed if j["jobId"] == job_id)
        if summary.get("firstFileIds"):
            await expect(entry).to_contain_text("3 files: 10001, 10002, 99999")
        if summary.get("priority") is not None:
            await expect(entry).to_contain_text(f"priority {summary['priority']}")


def kib(n: int) -> str:
    """A size as the page writes it."""
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB"


async def finished(client: httpx.AsyncClient, path: str) -> dict[str, Any] | None:
    body: dict[str, Any] = (await client.get(path)).json()
    return body if body["status"] == "completed" else None


async def test_reload_resumes_and_list_reopens(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000, 10_002: 2000})
    slow = slow_origin(settings, 1500)
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow, store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        job_id = await start(page, base, "10001 10002")
        await expect(page.locator("#job-status")).to_have_text("processing", timeout=FINISHED)

        # A reload (or a shared link) reopens the running job and follows its stream to the end.
        async with page.expect_request(f"**/v1/download/subscribe/{job_id}"):
            await page.reload()
        await expect(page.locator("#job-id")).to_have_text(job_id)
        await expect(page.locator("#job-status")).to_have_text("processing")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.get_by_role("link", name="Download the archive")).to_be_visible()
        temporal = f"{settings.temporal_ui_url}/namespaces/default/workflows/{job_id}"
        await expect(page.get_by_role("link", name="Open in Temporal UI")).to_have_attribute(
            "href", temporal
        )

        # "Your downloads" lists it; its link opens it; Back closes it again.
        await page.goto(base + "/")
        await expect(page.locator("#job")).to_be_hidden()
        # The test servers hold every test's jobs: show the completed ones, as a user would.
        await page.get_by_label("Show").select_option("completed")
        entry = page.locator("#jobs li", has_text=job_id)
        await expect(entry).to_contain_text("completed")
        await entry.get_by_role("link", name=f"Open job {job_id}").click()
        await expect(page.locator("#job-status")).to_have_text("completed")
        assert job_in_url(page) == job_id
        await page.go_back()
        await expect(page.locator("#job")).to_be_hidden()

        # API errors in plain words, and ours before the request is sent.
        await page.get_by_label("File ids").fill("5")
        await page.get_by_role("button", name="Start download").click()
        await expect(page.get_by_role("alert")).to_contain_text("The request was not accepted")
        await page.get_by_label("File ids").fill("10001 abc")
        await page.get_by_role("button", name="Start download").click()
        await expect(page.get_by_role("alert")).to_have_text(
            '"abc" is not a file id: use whole numbers.'
        )
        await page.goto(base + "/?job=no-such-job")
        await expect(page.get_by_role("alert")).to_contain_text("That job was not found")


async def test_cancel_then_retry(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000})
    slow = slow_origin(settings, 3000)
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow, store),
        browsing(browser) as page,
    ):
        job_id = await start(page, str(client.base_url), "10001")
        await expect(page.locator("#job-status")).to_have_text(re.compile("queued|processing"))
        await page.get_by_role("button", name="Cancel").click()
        await expect(page.locator("#job-status")).to_have_text("cancelled", timeout=FINISHED)
        await expect(page.locator("#cancel")).to_be_hidden()
        await page.get_by_role("button", name="Retry").click()
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.get_by_role("link", name="Download the archive")).to_be_visible()
        assert job_in_url(page) == job_id


async def test_polls_when_the_event_stream_is_unavailable(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000, 10_002: 2000})
    slow = slow_origin(settings, 1000)
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow, store),
        browsing(browser) as page,
    ):
        refused: list[str] = []

        async def refuse(route: Route) -> None:
            refused.append(route.request.url)
            await route.abort()

        await page.route("**/v1/download/subscribe/**", refuse)
        await start(page, str(client.base_url), "10001 10002")
        await expect(page.locator("#mode")).to_contain_text("checking")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(file_item(page, 10_002)).to_contain_text("10002: completed")
        await expect(page.get_by_role("link", name="Download the archive")).to_be_visible()
        assert refused


async def test_fits_a_phone(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000, 10_002: 300_000})
    async with (
        serve(settings) as (client, _),
        build_worker(env.client, slow_origin(settings, 1500), store),
        browsing(browser, viewport=PHONE, is_mobile=True, has_touch=True) as page,
    ):
        await start(page, str(client.base_url), "10001 10002 99999")
        await expect(page.locator("#detail")).to_contain_text("1 of 3 files", timeout=FINISHED)
        await screenshot(page, "phone-running")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.locator("#jobs li").first).to_be_visible()
        await expect(page.get_by_role("button", name="Copy the archive link")).to_be_visible()
        await screenshot(page, "phone-completed")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        for control in await page.locator(
            "button:visible, a.button:visible, input:visible, select"
        ).all():
            box = await control.bounding_box()
            assert box is not None
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
            assert box["height"] >= 40, await control.evaluate("e => e.outerHTML")


async def test_token_field_when_auth_is_on(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 2000})
    secured = settings.model_copy(update={"auth_api_keys": "k1=alice"})
    async with (
        serve(secured) as (client, _),
        build_worker(env.client, slow_origin(settings, 3000), store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        streams: list[tuple[str, int]] = []
        queries: list[dict[str, list[str]]] = []
        page.on("request", lambda request: queries.append(parse_qs(urlsplit(request.url).query)))
        page.on(
            "response",
            lambda r: streams.append((r.url, r.status)) if "/subscribe/" in r.url else None,
        )
        await page.goto(base + "/")
        token = page.get_by_label("Access token")
        await expect(token).to_be_visible()
        await expect(page.locator("#jobs-empty")).to_contain_text("Enter your access token")
        await page.get_by_role("button", name="Start download").click()
        await expect(page.get_by_role("alert")).to_contain_text("needs a valid access token")

        await token.fill("k1")
        await page.get_by_role("button", name="Use token").click()
        job_id = await start(page, base, "10001")
        await expect(page.locator("#mode")).to_have_text("(live)", timeout=FINISHED)
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.locator("#jobs li", has_text=job_id)).to_contain_text("completed")
        # The live stream ran on a ticket for this job; the token itself never was in a URL.
        assert streams and all("?ticket=" in url and code == 200 for url, code in streams)
        assert all("access_token" not in q and ["k1"] not in q.values() for q in queries)
        # The token lasts for the tab: a reload still reaches the owner's job.
        await page.reload()
        await expect(page.locator("#job-status")).to_have_text("completed")
        await expect(file_item(page, 10_001)).to_contain_text("10001: completed")
