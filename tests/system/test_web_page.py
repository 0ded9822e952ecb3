"""The web page at `/` in a real browser (Debian's chromium driven by Playwright), against the real
API, a real worker, Temporal and S3. Every test also checks that the page stays on loopback, raises
no script error and trips no Content-Security-Policy rule.

Screenshots of the page (desktop and phone) are written to `artifacts/screenshots/` (git-ignored).
"""

from __future__ import annotations

import asyncio
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
from tests.helpers import put_sources, serve, slow_origin, splice, sse_events, wait_for
from worker import build_worker

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed"
)
FINISHED = 30_000  # ms: how long a small job may take on a loaded machine
PHONE = {"width": 375, "height": 667}
DESKTOP = {"width": 1100, "height": 900}
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
MIB = 1024 * 1024
# How fast a throttled S3 answers the worker: a 1.5 MB source stays in work for about 3 s.
SLOW_S3 = 500_000  # bytes per second


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


async def start(page: Page, base: str, ids: str, *, priority: str = "", split: str = "") -> str:
    """Start a job from the form (a priority and a part size in MiB if given); returns its id as
    the page's URL names it."""
    await page.goto(base + "/")
    await page.get_by_label("File ids").fill(ids)
    if priority:
        await page.get_by_label("Priority").select_option(priority)
    if split:
        await page.get_by_label("Split into parts").fill(split)
    await page.get_by_role("button", name="Start download").click()
    await page.wait_for_url(re.compile(r"\?job="))
    return job_in_url(page)


@asynccontextmanager
async def throttled_s3(settings: Settings, store: ObjectStore) -> AsyncIterator[ObjectStore]:
    """A store for the worker whose S3 answers flow at `SLOW_S3` bytes a second (a loopback TCP
    proxy in front of the test S3 server): a slow network, so a file stays in work long enough
    for its bytes to be seen. Links are still signed for the S3 server itself."""
    target = urlsplit(settings.s3_endpoint)
    assert target.hostname and target.port
    address = (target.hostname, target.port)

    async def pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, rate: int | None
    ) -> None:
        while data := await source.read(16_384):
            sink.write(data)
            await sink.drain()
            if rate:
                await asyncio.sleep(len(data) / rate)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await splice(
            (reader, writer),
            address,
            lambda source, sink: pump(source, sink, None),
            lambda source, sink: pump(source, sink, SLOW_S3),
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    slow = settings.model_copy(
        update={
            "s3_endpoint": f"http://127.0.0.1:{port}",
            "s3_public_endpoint": settings.s3_public_endpoint or settings.s3_endpoint,
        }
    )
    try:
        yield ObjectStore(slow)
    finally:
        server.close()
        await server.wait_closed()


def job_in_url(page: Page) -> str:
    return parse_qs(urlsplit(page.url).query)["job"][0]


def file_item(page: Page, file_id: int) -> Locator:
    return page.locator("#files li", has_text=f"{file_id}:")


async def test_start_shows_progress_files_and_archive(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    sources = put_sources(store, settings, {10_001: 100_000, 10_002: 1_500_000})
    slow = slow_origin(settings, 2000)
    async with (
        serve(settings) as (client, _),
        throttled_s3(settings, store) as slow_store,
        build_worker(env.client, slow, slow_store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        job_id = await start(page, base, "10001, 10002 99999")
        await expect(page.locator("#job-id")).to_have_text(job_id)
        # While it runs: the first file done, the next one in work with its bytes, a time left
        # (packaging has run 3 s and finished a file: the API's figure rests on its rate).
        await expect(page.locator("#job-status")).to_have_text("processing", timeout=FINISHED)
        await expect(page.locator("#detail")).to_contain_text("1 of 3 files done")
        in_work = file_item(page, 10_002)
        await expect(in_work).to_contain_text(
            re.compile(r"10002: processing, [1-9][\d.]* (B|KiB|MiB) of 1\.4 MiB"), timeout=FINISHED
        )
        await expect(in_work.get_by_role("progressbar")).to_be_visible()
        await expect(page.locator("#eta")).to_be_visible()
        await expect(page.locator("#eta-time")).to_have_text(re.compile(r"^\d+ (s|min) \("))
        await expect(page.locator("#percent")).to_have_text(re.compile(r"[1-9]\d%"))
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
    runs in the page, so nothing changes under the assertions): ETA or "estimating…", a real
    progress event's changed files, the file in work with its bytes from a real running status,
    every part of a real split job with its size, the list."""
    put_sources(store, settings, {10_001: 700_000, 10_002: 1_500_000})
    async with (
        serve(settings) as (client, _),
        throttled_s3(settings, store) as slow_store,
        build_worker(env.client, slow_origin(settings, 1000), slow_store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        # Parts of at most 1 MiB: 10001 in part 1, 10002 (larger than the limit) alone in part 2.
        started = await client.post(
            "/v1/download/initiate",
            json={"file_ids": [10_001, 10_002, 99_999], "max_archive_bytes": MIB},
        )
        assert started.status_code == 200, started.text
        job_id = started.json()["jobId"]
        status_path = f"/v1/download/status/{job_id}"
        early = (await client.get(status_path)).json()
        stream = asyncio.create_task(all_events(client, f"/v1/download/subscribe/{job_id}"))

        # A status while a file is in work, its bytes flowing (the worker reads a slow S3).
        async def in_work() -> dict[str, Any] | None:
            body: dict[str, Any] = (await client.get(status_path)).json()
            return body if body.get("currentFileSize") and body.get("currentFileBytes") else None

        running = await wait_for(in_work, timeout=60)
        events = await asyncio.wait_for(stream, 60)
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

        # A progress event's changed files replace theirs at once: the missing file is marked as
        # soon as the stream says it failed (a split job resolves every id before writing).
        gone = next(
            e
            for e in events
            if e["event"] == "progress"
            and any(
                f["file_id"] == 99_999 and f["status"] == "failed"
                for f in e["data"]["changedFiles"]
            )
        )
        await page.evaluate("event => onProgress(state.follow, event)", gone["data"])
        await expect(file_item(page, 99_999)).to_have_text("99999: failed (not found)")
        await expect(file_item(page, 10_001)).to_be_visible()
        await expect(page.locator("#missing")).to_have_text("Not in the archive: 99999 (not found)")

        # The file in work with its bytes, and the time left on the basis the API gives.
        await render(page, running)
        current = running["currentFile"]
        done, size = running["currentFileBytes"], running["currentFileSize"]
        in_work_item = file_item(page, current)
        await expect(in_work_item).to_contain_text(
            f"{current}: processing, {kib(done)} of {kib(size)}"
        )
        bar = in_work_item.get_by_role("progressbar", name=f"File {current} progress")
        await expect(bar).to_have_attribute("value", str(done))
        await expect(bar).to_have_attribute("max", str(size))
        rated = running["etaBasis"] in ("rate", "estimate")
        await expect(page.locator("#eta")).to_be_visible(visible=rated)
        await expect(page.locator("#estimating")).to_be_visible(visible=not rated)

        # Every part of the split archive, with its size.
        await wait_for(lambda: finished(client, status_path), timeout=60)
        details = (await client.get(f"/v1/download/{job_id}")).json()
        urls, sizes = details["downloadUrls"], details["archiveSizes"]
        assert len(urls) == len(sizes) == 2, details
        await render(page, details)
        await expect(page.locator("#archives-title")).to_have_text("Archive in 2 parts")
        await expect(page.locator("#parts li")).to_have_count(2)
        for n, (url, part_size) in enumerate(zip(urls, sizes, strict=True), 1):
            part = page.locator("#parts li").nth(n - 1)
            download = part.get_by_role("link", name=f"Download part {n} of 2")
            await expect(download).to_have_attribute("href", url)
            await expect(part.locator("data")).to_have_attribute("value", str(part_size))
            await expect(part).to_contain_text(kib(part_size))
            await expect(
                part.get_by_role("button", name=f"Copy the link of part {n}")
            ).to_be_visible()
        await expect(page.locator("#estimating")).to_be_hidden()
        await expect(page.locator("#eta")).to_be_hidden()

        # The list tells jobs apart: ids, file count, how far, size, age in words, priority.
        await page.get_by_role("button", name="Refresh").click()
        entry = page.locator(f'#jobs li[data-job="{job_id}"]')
        listed = (await client.get("/v1/downloads")).json()["jobs"]
        summary = next(j for j in listed if j["jobId"] == job_id)
        assert summary["firstFileIds"] == [10_001, 10_002, 99_999], summary
        assert summary["priority"] == 3, summary  # the default
        await expect(entry).to_contain_text("3 files: 10001, 10002, 99999 · 2 done · 1 failed")
        await expect(entry).to_contain_text(f"{kib(summary['totalBytes'])} · priority 3")
        await expect(entry.locator("time")).to_have_text(re.compile(r"now|seconds? ago|minute ago"))


async def all_events(client: httpx.AsyncClient, path: str) -> list[dict[str, Any]]:
    """Every event of a job's stream, to its end."""
    async with client.stream("GET", path) as stream:
        return [event async for event in sse_events(stream)]


def kib(n: int) -> str:
    """A size as the page writes it."""
    units = ["B", "KiB", "MiB", "GiB"]
    value, unit = float(n), 0
    while value >= 1024 and unit < 3:
        value, unit = value / 1024, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {units[unit]}"


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
    put_sources(store, settings, {10_001: 2000, 10_002: 1_500_000})
    async with (
        serve(settings) as (client, _),
        throttled_s3(settings, store) as slow_store,
        build_worker(env.client, slow_origin(settings, 2000), slow_store),
        browsing(browser, viewport=PHONE, is_mobile=True, has_touch=True) as page,
    ):
        # Split into parts of 1 MiB: 10001 in part 1, 10002 alone in part 2.
        await start(page, str(client.base_url), "10001 10002 99999", split="1")
        await expect(page.locator("#detail")).to_contain_text("1 of 3 files", timeout=FINISHED)
        await expect(file_item(page, 10_002).get_by_role("progressbar")).to_be_visible(
            timeout=FINISHED
        )
        await expect(page.locator("#eta")).to_be_visible()
        await screenshot(page, "phone-running")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        await expect(page.locator("#jobs li").first).to_be_visible()
        await expect(page.locator("#archives-title")).to_have_text("Archive in 2 parts")
        for n in (1, 2):
            copy = page.get_by_role("button", name=f"Copy the link of part {n}")
            await expect(copy).to_be_visible()
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


async def test_priority_and_parts_from_the_form_and_refusals_in_plain_words(
    browser: Browser, env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """The start form's priority and part size reach the API; a priority above the caller's
    ceiling (403) and a start beyond the daily file quota (429) are said plainly."""
    sources = put_sources(store, settings, {10_001: 700_000, 10_002: 700_000, 10_003: 5_000})
    limited = settings.model_copy(
        update={"priority_ceiling": 2, "quota_files_per_owner_per_day": 4}
    )
    async with (
        serve(limited) as (client, _),
        build_worker(env.client, settings, store),
        browsing(browser) as page,
    ):
        base = str(client.base_url)
        await page.goto(base + "/")
        await expect(page.get_by_label("Priority")).to_have_value("")  # the service's default
        await expect(page.get_by_label("Split into parts")).to_have_value("")
        await page.get_by_label("Priority").select_option("1")
        await page.get_by_role("button", name="Start download").click()
        await expect(page.get_by_role("alert")).to_contain_text(
            "That priority is not allowed for you: priority 1 is more urgent than this caller "
            "may ask for: 2 to 5 (1 is the most urgent)."
        )
        assert "?job=" not in page.url

        # Priority 2, parts of at most 1 MiB: two 700 KB files do not fit in one part.
        job_id = await start(page, base, "10001 10002", priority="2", split="1")
        await expect(page.locator("#priority")).to_have_text("· priority 2")
        await expect(page.locator("#job-status")).to_have_text("completed", timeout=FINISHED)
        details = (await client.get(f"/v1/download/{job_id}")).json()
        assert details["priority"] == 2, details
        assert len(details["downloadUrls"]) == len(details["archiveSizes"]) == 2, details
        await expect(page.locator("#archives-title")).to_have_text("Archive in 2 parts")
        for n, size in enumerate(details["archiveSizes"], 1):
            part = page.locator("#parts li").nth(n - 1)
            await expect(part.get_by_role("link", name=f"Download part {n} of 2")).to_be_visible()
            await expect(part.locator("data")).to_have_attribute("value", str(size))
        second = part.get_by_role("link", name="Download part 2 of 2")
        held = zipfile.ZipFile(
            io.BytesIO(
                await (await page.request.get(await second.get_attribute("href") or "")).body()
            )
        )
        assert held.namelist() == ["manifest.json", "10002.zip"]
        assert held.read("10002.zip") == sources[10_002]
        entry = page.locator(f'#jobs li[data-job="{job_id}"]')
        await expect(entry).to_contain_text("priority 2")
        await screenshot(page, "desktop-split-completed")

        # Two files started today, the quota is 4: three more are refused, in plain words.
        await page.get_by_label("File ids").fill("10001 10002 10003")
        await page.get_by_role("button", name="Start download").click()
        await expect(page.get_by_role("alert")).to_contain_text(
            "Your quota is used up for now: daily file quota reached: 4 files a day (UTC) per "
            "owner, 2 started today; this request asks for 3."
        )
        await expect(page.locator("#job-id")).to_have_text(job_id)  # still the job shown


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
