"""`download-client` as a user runs it: a subprocess talking HTTP to the real API, whose jobs run
on a real worker against the real Temporal and S3 servers.

Where a test must see (or break) the traffic, a loopback TCP proxy sits in front of the API (the
event stream) or of S3 (the archive; presigned URLs are then signed for the proxy's address, and
it forwards bytes unchanged).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import struct
import termios
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import BIN, free_port
from download_client.cli import part_path
from download_client.display import eta
from download_client.errors import ExitCode
from download_client.follow import STREAM_ATTEMPTS
from download_client.models import Job, Part
from tests.helpers import assert_archive_matches, put_sources, serve, slow_origin, splice, wait_for
from worker import build_worker

CLIENT = BIN / "download-client"
# Variables that would change how rich or the client behave in the child.
_SCRUB = ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


def client_env(api_url: str, token: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOWNLOAD_") and k not in _SCRUB}
    env["DOWNLOAD_API_URL"] = api_url
    if token:
        env["DOWNLOAD_API_TOKEN"] = token
    return {**env, **extra}


@contextmanager
def reaped(proc: asyncio.subprocess.Process) -> Iterator[asyncio.subprocess.Process]:
    """Kills the client if a test leaves before it exited."""
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()


async def spawn(api_url: str, *args: str, token: str | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        str(CLIENT),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=client_env(api_url, token),
    )


async def client(api_url: str, *args: str, token: str | None = None) -> Run:
    """Run the client with pipes (not a terminal) to its end."""
    with reaped(await spawn(api_url, *args, token=token)) as proc:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def client_on_pty(api_url: str, *args: str) -> Run:
    """Run the client with a pseudo-terminal as stdout and stderr; returns what it drew."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = client_env(api_url, TERM="xterm-256color")
    try:
        proc = await asyncio.create_subprocess_exec(
            str(CLIENT),
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=slave,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    with reaped(proc):
        screen = await asyncio.wait_for(asyncio.to_thread(_read_all, master), 60)
        code = await asyncio.wait_for(proc.wait(), 10)
    return Run(code, screen.decode(errors="replace"), "")


def _read_all(fd: int) -> bytes:
    """Everything written to the pty until the child's side closes (EIO on Linux)."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError:
        pass
    finally:
        os.close(fd)
    return b"".join(chunks)


@asynccontextmanager
async def stack(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> AsyncIterator[httpx.AsyncClient]:
    """The API on a free port and a worker; yields an HTTP client pointed at the API."""
    async with serve(settings) as (api, _), build_worker(env.client, settings, store):
        yield api


def job_of(run: Run) -> str:
    """The job id a `start` printed: the first word of its first line."""
    assert run.lines, run
    return run.lines[0].split()[0]


# Where to cut a connection: given the request line and the response bytes so far, the offset
# after which nothing more reaches the client (and the connection closes), or None.
Cut = Callable[[str, bytes], int | None]


def cut_once(path_part: str, where: Callable[[bytes], int | None]) -> Cut:
    """Cut the first response to a request whose line contains `path_part`, at `where`."""
    done = False

    def cut(request: str, response: bytes) -> int | None:
        nonlocal done
        at = None if done or path_part not in request else where(response)
        done = done or at is not None
        return at

    return cut


def after_first_event(response: bytes) -> int | None:
    """The end of the first SSE event: the HTTP head ends with a blank line, then each event."""
    at = -1
    for _ in range(2):
        at = response.find(b"\r\n\r\n", at + 1)
        if at < 0:
            return None
    return at + 4


@dataclass
class _Exchange:
    request: str = ""
    response: bytearray = field(default_factory=bytearray)


@dataclass
class Proxy:
    """A loopback TCP proxy: bytes pass unchanged (the Host header included, so presigned URLs
    signed for the proxy's address verify), every request head is kept, and `cut` can drop a
    connection mid-response."""

    target: tuple[str, int]
    cut: Cut | None = None
    heads: list[str] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self, path_part: str) -> list[dict[str, str]]:
        """The headers (lower-case names) of each GET whose path contains `path_part`."""
        found = []
        for head in self.heads:
            line, *lines = head.split("\r\n")
            if line.startswith("GET ") and path_part in line:
                pairs = (ln.split(":", 1) for ln in lines if ":" in ln)
                found.append({k.strip().lower(): v.strip() for k, v in pairs})
        return found

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        exchange = _Exchange()
        await splice(
            (reader, writer),
            self.target,
            lambda source, sink: self._requests(source, sink, exchange),
            lambda source, sink: self._responses(source, sink, exchange),
        )

    async def _requests(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        buffer, body_left = b"", 0
        while data := await source.read(65536):
            sink.write(data)
            buffer += data
            while True:
                skipped = min(body_left, len(buffer))
                buffer, body_left = buffer[skipped:], body_left - skipped
                end = buffer.find(b"\r\n\r\n")
                if body_left or end < 0:
                    break
                head, buffer = buffer[:end].decode("latin-1"), buffer[end + 4 :]
                self.heads.append(head)
                exchange.request, exchange.response = head.split("\r\n")[0], bytearray()
                length = re.search(r"(?im)^content-length:\s*(\d+)", head)
                body_left = int(length[1]) if length else 0
            await sink.drain()

    async def _responses(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, exchange: _Exchange
    ) -> None:
        while data := await source.read(65536):
            before = len(exchange.response)
            exchange.response += data
            at = self.cut(exchange.request, bytes(exchange.response)) if self.cut else None
            if at is not None:
                sink.write(data[: max(at - before, 0)])
                await sink.drain()
                return
            sink.write(data)
            await sink.drain()


@asynccontextmanager
async def proxy_to(url: str) -> AsyncIterator[Proxy]:
    target = urlsplit(url)
    assert target.hostname and target.port
    proxy = Proxy((target.hostname, target.port))
    server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    proxy.port = server.sockets[0].getsockname()[1]
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()


# --- following a job ---
async def test_start_follow_output_saves_the_archive_and_lists_the_job(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    owner = f"cli-{uuid.uuid4().hex[:8]}"
    keyed = settings.model_copy(update={"auth_api_keys": f"{owner}-key={owner}"})
    token = f"{owner}-key"
    sources = put_sources(store, settings, {10_001: 20_000, 10_002: 70_000})
    dest = tmp_path / "bundle.zip"
    async with stack(env, keyed, store) as api:
        url = str(api.base_url)
        run = await client(url, "start", "10001", "10002", "--follow", "-o", str(dest), token=token)
        assert run.code == ExitCode.completed, run

        # Not a terminal: one plain line per state change, no ANSI codes.
        assert "\x1b" not in run.stdout + run.stderr
        job_id = job_of(run)
        assert run.lines[0].split()[1] == "queued"
        # Before anything moved, the time left is not a guess presented as a figure.
        assert run.lines[0].endswith("eta estimating…"), run
        assert any(ln.startswith(f"{job_id} completed 100% files 2/2") for ln in run.lines), run
        # Sizes in binary units: 90 000 bytes of sources.
        assert any("87.9 KiB/87.9 KiB" in ln for ln in run.lines), run
        assert run.lines[-1] == f"saved {dest} ({dest.stat().st_size} bytes)"
        with zipfile.ZipFile(dest) as archive:
            assert_archive_matches(archive, sources)
        assert not (tmp_path / "bundle.zip.part").exists()

        # The token goes with every request, the event stream included: without it, 401.
        anonymous = await client(url, "watch", job_id)
        assert anonymous.code == ExitCode.api
        assert "authentication required" in anonymous.stderr

        async def listed() -> bool:
            resp = await api.get(
                "/v1/downloads",
                params={"status": "completed"},
                headers={"Authorization": f"Bearer {token}"},
            )
            return any(j["jobId"] == job_id for j in resp.json()["jobs"])

        await wait_for(listed)  # visibility is eventually consistent
        completed = await client(url, "list", "--status", "completed", token=token)
        assert completed.code == 0, completed
        header, *rows = completed.lines
        assert header.split() == [
            "JOB",
            "STATUS",
            "FILES",
            "FAILED",
            "SIZE",
            "CREATED",
            "TOOK",
            "FILE",
            "IDS",
            "ERROR",
        ]
        assert [ln.split()[:2] for ln in rows] == [[job_id, "completed"]]
        # Columns line up under the header; times in words.
        row = rows[0]
        assert row[header.index("CREATED") :].startswith(("just now", *"123456789")), completed
        assert re.search(r"(just now|\d+ (s|min) ago) +\d+ s ", row), completed
        page = (
            await api.get("/v1/downloads", headers={"Authorization": f"Bearer {token}"})
        ).json()["jobs"]
        summary = next(j for j in page if j["jobId"] == job_id)
        assert summary["totalBytes"] == 90_000 and summary["firstFileIds"] == [10_001, 10_002]
        # FILES done/total, FAILED, SIZE and FILE IDS, each under its header.
        for column, cell in (
            ("FILES", "2/2"),
            ("FAILED", "0"),
            ("SIZE", "87.9 KiB"),
            ("FILE IDS", "10001 10002"),
        ):
            assert row[header.index(column) :].startswith(cell), (column, completed)
        failed = await client(url, "list", "--status", "failed", token=token)
        assert failed.code == 0 and [ln.split() for ln in failed.lines] == [header.split()]


async def test_failed_job_exits_with_the_failed_code_and_can_be_retried(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    dest = tmp_path / "bundle.zip"
    async with stack(env, settings, store) as api:
        url = str(api.base_url)
        run = await client(url, "start", "10008", "10009", "--follow", "--output", str(dest))
        assert run.code == ExitCode.failed, run
        job_id = job_of(run)
        assert f"job {job_id} failed: none of the requested files is available" in run.stderr
        assert not dest.exists()
        status = await client(url, "status", job_id)
        assert status.code == ExitCode.failed
        assert "  10008 failed - not found" in status.lines

        sources = put_sources(store, settings, {10_008: 1_000, 10_009: 2_000})
        retried = await client(url, "retry", job_id, "--output", str(dest))
        assert retried.code == ExitCode.completed, retried
        with zipfile.ZipFile(dest) as archive:
            assert_archive_matches(archive, sources)


async def test_cancel_a_running_job_ends_watch_with_the_cancelled_code(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 60_000)
    put_sources(store, settings, {10_001: 1_000})
    async with stack(env, slow, store) as api:
        url = str(api.base_url)
        job_id = job_of(await client(url, "start", "10001"))
        with reaped(await spawn(url, "watch", job_id)) as watch:
            assert watch.stdout is not None
            first = await asyncio.wait_for(watch.stdout.readline(), 30)
            assert first.decode().split()[:2] in ([job_id, "queued"], [job_id, "processing"])

            cancel = await client(url, "cancel", job_id)
            assert cancel.code == 0, cancel
            assert cancel.lines == [f"{job_id} cancel requested, now cancelled"]

            out, err = await asyncio.wait_for(watch.communicate(), 30)
            assert watch.returncode == ExitCode.cancelled, (out, err)
            assert out.decode().splitlines()[-1].startswith(f"{job_id} cancelled")
            assert f"job {job_id} was cancelled" in err.decode()

        again = await client(url, "cancel", job_id)
        assert again.code == ExitCode.api and "already cancelled" in again.stderr


async def test_partial_job_names_the_failed_ids_and_exits_with_its_own_code(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    sources = put_sources(store, settings, {10_001: 3_000})
    dest = tmp_path / "bundle.zip"
    async with stack(env, settings, store) as api:
        url = str(api.base_url)
        run = await client(url, "start", "10001", "99999", "--follow", "-o", str(dest))
        assert run.code == ExitCode.partial, run
        job_id = job_of(run)
        message = f"error: job {job_id} completed without 1 of 2 files: 99999 (not found)"
        assert run.stderr.strip() == message, run
        # What is there is saved all the same.
        assert run.lines[-1].startswith(f"saved {dest}")
        with zipfile.ZipFile(dest) as archive:
            assert archive.read("10001.zip") == sources[10_001]

        for command in (["status", job_id], ["watch", job_id], ["get", job_id, "-o", str(dest)]):
            again = await client(url, *command)
            assert again.code == ExitCode.partial, (command, again)
            assert again.stderr.strip() == message, (command, again)
        status = await client(url, "status", job_id)
        assert "  99999 failed - not found" in status.lines, status
        digest = hashlib.sha256(sources[10_001]).hexdigest()
        assert f"  10001 completed 2.9 KiB sha256 {digest}" in status.lines, status
        assert any(ln.startswith("  archive (") for ln in status.lines), status


async def test_help_reads_naturally() -> None:
    """No Python type names beside options (`<bool>` on a flag); the exit codes are listed."""
    for args in ([], ["start"], ["get"], ["list"], ["status"]):
        run = await client("http://unused.invalid", *args, "--help")
        assert run.code == 0, (args, run)
        assert not re.search(r"<(bool|str|int|path|list\[int\])>", run.stdout), run.stdout
        assert "Usage: download-client" in run.stdout
    top = await client("http://unused.invalid", "--help")
    assert "--api URL" in " ".join(top.stdout.split()) or re.search(r"--api +URL", top.stdout)
    for code in range(7):
        assert re.search(rf"^\W*{code}  \w", top.stdout, re.M), (code, top.stdout)
    start = await client("http://unused.invalid", "start", "--help")
    assert re.search(r"--follow +-f +show progress", start.stdout), start.stdout
    assert "ID..." in start.stdout and "FILE" in start.stdout


def test_eta_is_estimating_until_the_api_says_otherwise() -> None:
    """The time left as `watch` and `--follow` print it, from the API's status fields."""
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    later = (now + timedelta(seconds=42)).isoformat()
    body = {"jobId": "j", "status": "processing", "progress": 0, "totalFiles": 3}
    # A server that says what its figure rests on.
    assert eta(Job.from_json({**body, "etaBasis": "estimating"}), now) == "estimating…"
    assert eta(Job.from_json({**body, "etaBasis": "rate", "estimatedCompletionAt": later}), now)
    assert (
        eta(Job.from_json({**body, "etaBasis": "estimate", "estimatedCompletionAt": later}), now)
        == "42 s"
    )
    # One that does not: no figure before 10 % of the job is done, however many files are.
    assert (
        eta(Job.from_json({**body, "completedFiles": 2, "estimatedCompletionAt": later}), now)
        == "estimating…"
    )
    assert eta(Job.from_json({**body, "estimatedCompletionAt": later}), now) == "estimating…"
    done_one = {**body, "completedFiles": 1, "progress": 40, "estimatedCompletionAt": later}
    assert eta(Job.from_json(done_one), now) == "42 s"
    # Ended: none.
    assert eta(Job.from_json({**done_one, "status": "completed", "etaBasis": None}), now) is None


def test_every_archive_part_is_saved_beside_the_first() -> None:
    body = {
        "jobId": "j",
        "status": "completed",
        "downloadUrl": "http://s3/a",
        "archiveSize": 10,
    }
    assert Job.from_json(body).parts == [Part(1, "http://s3/a", 10)]
    split = {**body, "downloadUrls": ["http://s3/a", "http://s3/b"], "archiveSizes": [10, 4]}
    parts = Job.from_json(split).parts
    assert parts == [Part(1, "http://s3/a", 10), Part(2, "http://s3/b", 4)]
    dest = Path("out/bundle.zip")
    assert [part_path(dest, p) for p in parts] == [dest, Path("out/bundle.part2.zip")]


# --- errors ---
async def test_unknown_job_prints_the_api_message(settings: Settings, store: ObjectStore) -> None:
    async with serve(settings) as (api, _):
        run = await client(str(api.base_url), "status", "job-does-not-exist")
    assert run.code == ExitCode.api
    assert run.stderr.strip() == "error: job job-does-not-exist not found"
    assert run.stdout == ""


async def test_api_down_exits_with_the_unreachable_code() -> None:
    down = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "job-1"], ["list"], ["watch", "job-1"]):
        run = await client("http://unused.invalid", "--api", down, *args)
        assert run.code == ExitCode.api, (args, run)
        assert f"cannot reach the API at {down}" in run.stderr, run
        assert "Traceback" not in run.stderr


# --- the archive download ---
async def test_watch_resumes_a_dropped_stream_and_falls_back_to_polling(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 1_500)
    put_sources(store, settings, {10_001: 1_000})
    async with stack(env, slow, store) as api, proxy_to(str(api.base_url)) as proxy:
        # The first stream drops right after its first event: the next one resumes after it.
        proxy.cut = cut_once("/subscribe/", after_first_event)
        run = await client(proxy.url, "start", "10001", "--follow")
        assert run.code == ExitCode.completed, run
        job_id = job_of(run)
        streams = proxy.requests("/subscribe/")
        assert len(streams) >= 2 and "last-event-id" not in streams[0], proxy.heads
        assert streams[1]["last-event-id"], proxy.heads
        assert [ln.split()[1] for ln in run.lines].count("completed") == 1, run

        # Every stream breaks at once: after a few tries the client polls the status instead.
        proxy.cut = lambda request, response: 0 if "/subscribe/" in request else None
        polled = await client(proxy.url, "watch", job_id)
        assert polled.code == ExitCode.completed, polled
        assert len(proxy.requests("/subscribe/")) == len(streams) + STREAM_ATTEMPTS
        assert proxy.requests(f"/v1/download/status/{job_id}")
        assert [ln.split()[:2] for ln in polled.lines] == [[job_id, "completed"]]


# --- the archive download ---
async def test_get_resumes_from_a_part_file_and_after_a_cut_connection(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    sources = put_sources(store, settings, {10_001: 150_000, 10_002: 250_000})
    async with proxy_to(settings.s3_endpoint) as proxy:
        public = settings.model_copy(update={"s3_public_endpoint": proxy.url})
        async with stack(env, public, store) as api:
            url = str(api.base_url)
            job_id = job_of(await client(url, "start", "10001", "10002", "--follow"))
            run_id = (await env.client.get_workflow_handle(job_id).describe()).run_id
            archive = b"".join(store.read(settings.archive_key(job_id, run_id)))

            # (a) A part file from an earlier run: only the rest is asked for.
            dest = tmp_path / "a.zip"
            (tmp_path / "a.zip.part").write_bytes(archive[:100_000])
            run = await client(url, "get", job_id, "--output", str(dest))
            assert run.code == ExitCode.completed, run
            assert [h.get("range") for h in proxy.requests(job_id)] == ["bytes=100000-"]
            resumed = f"downloading {dest} ({len(archive)} bytes, resuming at byte 100000)"
            assert resumed in run.lines, run
            assert dest.read_bytes() == archive
            assert not (tmp_path / "a.zip.part").exists()

            # (b) The connection drops mid-transfer: the client continues where it stopped.
            dest = tmp_path / "b.zip"
            proxy.cut = cut_once(
                job_id, lambda response: 120_000 if len(response) >= 120_000 else None
            )
            run = await client(url, "get", job_id, "-o", str(dest))
            assert run.code == ExitCode.completed, run
            first, second, *_ = [h.get("range") for h in proxy.requests(job_id)[1:]]
            assert first is None and second is not None, proxy.heads
            assert 0 < int(second.removeprefix("bytes=").removesuffix("-")) < 120_000
            with zipfile.ZipFile(dest) as zipped:
                assert_archive_matches(zipped, sources)


async def test_get_saves_every_part_of_a_split_job_and_resumes_a_truncated_one(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    sources = put_sources(store, settings, {10_001: 700_000, 10_002: 700_000, 10_003: 5_000})
    async with proxy_to(settings.s3_endpoint) as proxy:
        public = settings.model_copy(update={"s3_public_endpoint": proxy.url})
        async with stack(env, public, store) as api:
            url = str(api.base_url)
            # Parts of at most 1 MiB: 10001 in part 1, 10002 and 10003 in part 2.
            ids = ["10001", "10002", "10003"]
            run = await client(url, "start", *ids, "--max-archive-mb", "1", "--priority", "4")
            assert run.code == ExitCode.completed, run
            job_id = job_of(run)
            dest = tmp_path / "bundle.zip"
            run = await client(url, "get", job_id, "-o", str(dest))
            assert run.code == ExitCode.completed, run
            run_id = (await env.client.get_workflow_handle(job_id).describe()).run_id
            stored = [b"".join(store.read(settings.archive_key(job_id, run_id, n))) for n in (1, 2)]
            second = tmp_path / "bundle.part2.zip"
            assert dest.read_bytes() == stored[0] and second.read_bytes() == stored[1]
            saved = [ln for ln in run.lines if ln.startswith("saved ")]
            assert saved == [
                f"saved {dest} ({len(stored[0])} bytes)",
                f"saved {second} ({len(stored[1])} bytes)",
            ], run
            held = [zipfile.ZipFile(p).namelist() for p in (dest, second)]
            assert held == [
                ["manifest.json", "10001.zip"],
                ["manifest.json", "10002.zip", "10003.zip"],
            ]
            with zipfile.ZipFile(second) as part:
                assert part.read("10002.zip") == sources[10_002]

            status = await client(url, "status", job_id)
            assert status.lines[0].endswith("priority 4"), status
            for n, data in enumerate(stored, 1):
                assert any(
                    ln.startswith(f"  archive part {n}/2 ({len(data) / 1024:.1f} KiB): http")
                    for ln in status.lines
                ), status

            # Part 2 cut short (an interrupted run): only the rest of it is asked for.
            second.unlink()
            (tmp_path / "bundle.part2.zip.part").write_bytes(stored[1][:300_000])
            run = await client(url, "get", job_id, "-o", str(dest))
            assert run.code == ExitCode.completed, run
            resumed = f"downloading {second} ({len(stored[1])} bytes, resuming at byte 300000)"
            assert resumed in run.lines, run
            assert second.read_bytes() == stored[1] and dest.read_bytes() == stored[0]
            assert not (tmp_path / "bundle.part2.zip.part").exists()
            # Each part asked for whole the first time; the second time part 2 from its cut.
            part_one, part_two = (settings.archive_key(job_id, run_id, n) for n in (1, 2))
            assert [h.get("range") for h in proxy.requests(part_one)] == [None, None]
            assert [h.get("range") for h in proxy.requests(part_two)] == [None, "bytes=300000-"]


async def test_priority_and_quota_refusals_in_plain_words(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 1_000, 10_002: 1_000})
    limited = settings.model_copy(
        update={"priority_ceiling": 2, "quota_files_per_owner_per_day": 3}
    )
    async with stack(env, limited, store) as api:
        url = str(api.base_url)
        refused = await client(url, "start", "10001", "--priority", "1")
        assert refused.code == ExitCode.api and refused.stdout == "", refused
        assert refused.stderr.strip() == (
            "error: priority not allowed: priority 1 is more urgent than this caller may ask "
            "for: 2 to 5 (1 is the most urgent)"
        )
        started = await client(url, "start", "10001", "10002", "--priority", "2", "--follow")
        assert started.code == ExitCode.completed, started
        status = await client(url, "status", job_of(started))
        assert status.lines[0].endswith("priority 2"), status

        over = await client(url, "start", "10001", "10002")
        assert over.code == ExitCode.api and over.stdout == "", over
        assert re.fullmatch(
            r"error: quota reached: daily file quota reached: 3 files a day \(UTC\) per owner, "
            r"2 started today; this request asks for 2 \(try again in \d+ s\)",
            over.stderr.strip(),
        ), over
        usage = await client(url, "start", "10001", "--priority", "6")
        assert usage.code == ExitCode.usage, usage


async def test_progress_bars_on_a_terminal(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    put_sources(store, settings, {10_001: 300_000})
    dest = tmp_path / "bundle.zip"
    async with stack(env, settings, store) as api:
        run = await client_on_pty(str(api.base_url), "start", "10001", "-f", "-o", str(dest))
    assert run.code == ExitCode.completed, run.stdout
    assert "━" in run.stdout and "100%" in run.stdout, run.stdout
    assert "\x1b[" in run.stdout  # drawn with terminal control sequences, not plain lines
    assert f"saved {dest}" in run.stdout
    assert dest.stat().st_size > 300_000
