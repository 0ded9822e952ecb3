"""Shared test helpers: sources in S3, archive checks, waiting on real workflow state."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from activities.ioqueue import RankedExecutor
from api.main import create_app
from api.services import Services
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import BIN, free_port, wait_for_port
from workflows.client import new_request, start_download
from workflows.errors import ErrorType
from workflows.models import (
    MIN_FILE_ID,
    DownloadRequest,
    JobOptions,
    JobState,
    PackageInput,
    PackageProgress,
    PackageResult,
)
from workflows.names import PACKAGE_ARCHIVE
from workflows.sealing import seal

T = TypeVar("T")
Json = dict[str, Any]
# The peer address the in-process app sees for a request (`api_client`).
PEER = ("127.0.0.1", 50123)
# WebSocket close codes the event stream ends with.
NORMAL, POLICY_VIOLATION = 1000, 1008
# Counter stores for the rate limits: binary and arguments of a throwaway server.
COUNTER_STORES = {
    "redis": ("redis-server", ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]),
    "memcached": ("memcached", ["-l", "127.0.0.1", "-U", "0", "-u", "nobody"]),
}


def isolated_settings(
    config: pytest.Config, s3_endpoint: str, env: WorkflowEnvironment
) -> Settings:
    """Settings on the test servers with a bucket and task queue of their own, fast retries and
    heartbeats (the `settings` fixture; a module's own stack uses them too)."""
    target = config.getoption("--temporal-target") or env.client.service_client.config.target_host
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        s3_endpoint=s3_endpoint,
        s3_access_key_id=config.getoption("--s3-access-key"),
        s3_secret_access_key=config.getoption("--s3-secret-key"),
        s3_bucket_name=f"t{uuid.uuid4().hex[:16]}",
        s3_part_size_mb=5,
        temporal_address=target,
        temporal_task_queue=f"tq-{uuid.uuid4()}",
        heartbeat_timeout_seconds=4,
        heartbeat_interval_seconds=0.2,
        retry_initial_interval_seconds=0.5,
        retry_maximum_interval_seconds=2,
        worker_metrics_port=0,
        worker_graceful_shutdown_seconds=2,
        download_delay_enabled=False,
        rate_limit_enabled=False,
    )


def entry_point_env(settings: Settings) -> dict[str, str]:
    """Environment for running the project's own entry points (`download-api`,
    `download-worker`) with `settings` (the `subprocess_env` fixture)."""
    names = [
        "s3_endpoint",
        "s3_access_key_id",
        "s3_secret_access_key",
        "s3_bucket_name",
        "s3_part_size_mb",
        "temporal_address",
        "temporal_task_queue",
        "heartbeat_timeout_seconds",
        "heartbeat_interval_seconds",
        "retry_initial_interval_seconds",
        "retry_maximum_interval_seconds",
        "worker_metrics_port",
        "worker_graceful_shutdown_seconds",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("S3_", "TEMPORAL_"))}
    env.update({n.upper(): str(getattr(settings, n)) for n in names})
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def source_bytes(file_id: int, size: int) -> bytes:
    return random.Random(file_id).randbytes(size)


def put_sources(store: ObjectStore, settings: Settings, sizes: dict[int, int]) -> dict[int, bytes]:
    """Upload one source per id; returns the bytes for later comparison."""
    data = {}
    for file_id, size in sizes.items():
        data[file_id] = source_bytes(file_id, size)
        store.put_bytes(settings.source_key(file_id), data[file_id])
    return data


def read_archive(store: ObjectStore, key: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(io.BytesIO(b"".join(store.read(key))))


def assert_archive_matches(archive: zipfile.ZipFile, expected: dict[int, bytes]) -> None:
    """Every entry is present, CRC-valid and equal to its source byte for byte; the manifest is
    listed first and gives each entry's size and SHA-256."""
    assert archive.testzip() is None
    names = archive.namelist()
    assert names[0] == "manifest.json"
    assert sorted(names[1:]) == sorted(f"{i}.zip" for i in expected)
    listed = {f["fileId"]: f for f in archive_manifest(archive)["files"]}
    for file_id, data in expected.items():
        assert archive.read(f"{file_id}.zip") == data, f"entry {file_id} differs"
        line = listed[file_id]
        assert (line["status"], line["size"]) == ("completed", len(data))
        assert line["sha256"] == hashlib.sha256(data).hexdigest(), f"digest of {file_id}"


def archive_manifest(archive: zipfile.ZipFile) -> Json:
    manifest: Json = json.loads(archive.read("manifest.json"))
    return manifest


# The workflow run of ActivityEnvironment's activities.
ACTIVITY_RUN = "test-run"


def sealed_input(
    settings: Settings, job_id: str, file_ids: list[int], mtime: datetime, **options: Any
) -> PackageInput:
    """Packaging input of job `job_id` as the workflow passes it: with the request the API
    sealed (`options` are its `JobOptions`). Ids the request model refuses are set unchecked,
    for tests of how the worker treats them."""
    request = DownloadRequest(
        job_id=job_id, file_ids=[MIN_FILE_ID], created_at=mtime, options=JobOptions(**options)
    )
    request = seal(request.model_copy(update={"file_ids": file_ids}), settings)
    return PackageInput(
        job_id=job_id,
        file_ids=file_ids,
        mtime=mtime,
        compression=request.options.compression,
        storage_retry=request.options.retry,
        max_archive_bytes=request.options.max_archive_bytes,
        keys_per_run=True,
        request=request,
    )


def activity_env(job_id: str, **info: Any) -> ActivityEnvironment:
    """An activity of the run `ACTIVITY_RUN` of job `job_id`'s workflow, as Temporal names it."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=job_id, **info)
    return env


async def start_job(
    client: Client, settings: Settings, file_ids: list[int], **kwargs: Any
) -> WorkflowHandle[Any, JobState]:
    request = new_request(settings, f"job-{uuid.uuid4()}", file_ids, **kwargs)
    return await start_download(client, settings, request)


async def wait_for(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll until `probe` returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(interval)


async def package_progress(
    client: Client, desc: WorkflowExecutionDescription
) -> PackageProgress | None:
    """Heartbeat details of a started `package_archive` attempt, if any."""
    for act in desc.raw_description.pending_activities:
        if act.activity_type.name != PACKAGE_ARCHIVE:
            continue
        if act.state != PendingActivityState.PENDING_ACTIVITY_STATE_STARTED:
            continue
        if not act.heartbeat_details.payloads:
            return None
        (progress,) = await client.data_converter.decode(
            act.heartbeat_details.payloads, [PackageProgress]
        )
        return progress  # type: ignore[no-any-return]
    return None


async def wait_for_checkpoint(
    client: Client, handle: WorkflowHandle[Any, Any], min_parts: int = 1, timeout: float = 60
) -> PackageProgress:
    async def probe() -> PackageProgress | None:
        progress = await package_progress(client, await handle.describe())
        if progress and progress.resume and progress.resume.parts >= min_parts:
            return progress
        return None

    return await wait_for(probe, timeout=timeout)


async def package_results(client: Client, handle: WorkflowHandle[Any, Any]) -> PackageResult:
    """The `package_archive` result recorded in the workflow history."""
    history = await handle.fetch_history()
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            payloads = event.activity_task_completed_event_attributes.result.payloads
            (value,) = await client.data_converter.decode(payloads, [Any])
            if isinstance(value, dict) and "archive_size" in value:
                return PackageResult.model_validate(value)
    raise AssertionError("no package_archive result in history")


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app on a free port, with an HTTP client pointed at it."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())

    async def started() -> bool:
        return server.started

    await wait_for(started, timeout=20)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, app
    finally:
        server.should_exit = True
        await task


def s3_operations(operation: str, status: str = "success") -> float:
    """S3 calls of one kind so far in this process (an in-process worker's storage calls)."""
    value = REGISTRY.get_sample_value(
        "s3_operations_total", {"operation": operation, "status": status}
    )
    return value or 0.0


def read_errors() -> float:
    """Failed S3 reads (GET) so far in this process."""
    return s3_operations("get", "error")


def slow_origin(settings: Settings, delay_ms: int) -> Settings:
    """Settings with the simulated slow origin on: every file waits `delay_ms` before it is read."""
    return settings.model_copy(
        update={
            "download_delay_enabled": True,
            "download_delay_min_ms": delay_ms,
            "download_delay_max_ms": delay_ms,
        }
    )


def slow_origin_env(env: dict[str, str], delay_ms: int) -> dict[str, str]:
    """`slow_origin` for a process's environment."""
    return {
        **env,
        "DOWNLOAD_DELAY_ENABLED": "true",
        "DOWNLOAD_DELAY_MIN_MS": str(delay_ms),
        "DOWNLOAD_DELAY_MAX_MS": str(delay_ms),
    }


@contextmanager
def service_process(
    command: str, env: dict[str, str], log: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """A real process of ours (`download-worker`, `download-api`), its JSON log lines written
    to `log` if given; killed (SIGKILL) on exit if it is still running."""
    with contextlib.ExitStack() as stack:
        stderr = stack.enter_context(log.open("wb")) if log is not None else None
        proc = subprocess.Popen([str(BIN / command)], env=env, stderr=stderr)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def worker_process(
    env: dict[str, str], log: Path | None = None
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    return service_process("download-worker", env, log)


def log_lines(log: Path, message: str) -> list[dict[str, Any]]:
    """The JSON log lines of a process whose message is `message`."""
    return json_log_lines(log.read_text(), message)


def json_log_lines(text: str, message: str) -> list[dict[str, Any]]:
    """The JSON log lines in `text` whose message is `message`."""
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("message") == message]


async def expect_failure(outcome: Awaitable[Any], error_type: ErrorType) -> ApplicationError:
    """Await something that must fail with `error_type`: an activity's `ApplicationError`, or a
    workflow failure caused by one. Returns the error for further checks."""
    with pytest.raises((WorkflowFailureError, ApplicationError)) as raised:
        await outcome
    error = raised.value.cause if isinstance(raised.value, WorkflowFailureError) else raised.value
    assert isinstance(error, ApplicationError), f"not an application error: {error!r}"
    assert error.type == error_type.value
    return error


@contextmanager
def http_receiver(status: int = 200) -> Iterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A loopback HTTP server answering every POST with `status`; yields its base URL and the
    (headers, body) of each request it received."""
    received: list[tuple[dict[str, str], bytes]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers), body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", free_port()), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def socket_url(client: httpx.AsyncClient, job_id: str, query: str = "") -> str:
    base = str(client.base_url).replace("http://", "ws://", 1).rstrip("/")
    return f"{base}/v1/download/stream/{job_id}{query}"


@asynccontextmanager
async def api_client(
    settings: Settings,
    *,
    peer: tuple[str, int] = PEER,
    customize: Callable[[FastAPI], None] | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan run, reached in process through httpx."""
    app = create_app(settings)
    if customize is not None:
        customize(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=peer)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", follow_redirects=False
        ) as client:
            yield client


def with_keys(settings: Settings, **owners: str) -> Settings:
    """Settings with auth on: one API key per owner (key = owner name + '-key')."""
    pairs = ",".join(f"{owner}-key={owner}" for owner in owners.values())
    return settings.model_copy(update={"auth_api_keys": pairs})


async def initiate(api: httpx.AsyncClient, file_ids: list[int], **kwargs: Any) -> Json:
    """Start a job through the API (it must be accepted); returns the response body."""
    resp = await api.post("/v1/download/initiate", json={"file_ids": file_ids}, **kwargs)
    assert resp.status_code == 200, resp.text
    body: Json = resp.json()
    return body


def assert_error(resp: httpx.Response, status: int, error: str | None = None) -> Json:
    assert resp.status_code == status, resp.text
    body: Json = resp.json()
    assert set(body) >= {"error", "message", "requestId"}
    assert body["requestId"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text
    if error is not None:
        assert body["error"] == error
    return body


async def sse_events(
    resp: httpx.Response, comments: list[str] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Events of a stream as they arrive: id, event and decoded data; comment lines go to
    `comments` if given."""
    current: dict[str, Any] = {}
    async for line in resp.aiter_lines():
        if not line:
            if "data" in current:
                yield {**current, "data": json.loads(current["data"])}
            current = {}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            name, _, value = line.partition(":")
            current[name] = value.removeprefix(" ")


async def read_events(resp: httpx.Response, comments: list[str] | None = None) -> list[Any]:
    """Parse the stream until it ends; events as dicts with id, event and decoded data."""
    return [event async for event in sse_events(resp, comments)]


async def receive_all(socket: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every message until the server closes; returns them and the close code."""
    messages = []
    try:
        async for text in socket:
            messages.append(json.loads(text))
    except ConnectionClosed:
        pass
    return messages, socket.close_code


@contextmanager
def counter_store(kind: str) -> Iterator[str]:
    """A real Redis or Memcached on a free port; yields its URI for RATE_LIMIT_STORAGE_URI."""
    binary, args = COUNTER_STORES[kind]
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    port = free_port()
    port_flag = ["--port", str(port)] if kind == "redis" else ["-p", str(port)]
    proc = subprocess.Popen([path, *port_flag, *args], stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"{kind}://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def services(app: FastAPI) -> Services:
    """The services of an app started with `serve`."""
    found: Services = app.state.services
    return found


# Production settings that pass every check of the production guard.
SAFE_PRODUCTION = {
    "ENVIRONMENT": "production",
    "AUTH_JWT_SECRET": "j" * 40,
    "CALLBACK_SECRET": "c" * 40,
    "STREAM_TICKET_SECRET": "t" * 40,
    "REQUEST_SEAL_SECRET": "r" * 40,
    "S3_ACCESS_KEY_ID": "downloads-service",
    "S3_SECRET_ACCESS_KEY": "s" * 40,
    "S3_PRESIGN_ACCESS_KEY_ID": "downloads-reader",
    "S3_PRESIGN_SECRET_ACCESS_KEY": "p" * 40,
    "S3_PUBLIC_ENDPOINT": "https://files.example.test",
    "TEMPORAL_TRUSTED_NETWORK": "true",
}


# One direction of a proxied connection: copy (and look at, or slow) the bytes from one side
# to the other until the source ends.
Pump = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def splice(
    client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    target: tuple[str, int],
    up: Pump,
    down: Pump,
) -> None:
    """Relay one connection of a loopback test proxy to `target`: `up` carries the client's
    bytes, `down` the answers; when either ends, both connections are closed."""
    reader, writer = client
    up_reader, up_writer = await asyncio.open_connection(*target)
    pumps = [
        asyncio.create_task(up(reader, up_writer)),
        asyncio.create_task(down(up_reader, writer)),
    ]
    try:
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()


@contextmanager
def held_executor() -> Iterator[tuple[RankedExecutor, threading.Event]]:
    """One ranked S3 thread, as a busy worker's would be: held until the event is set (at the
    latest on leaving), then shut down with whatever is still queued."""
    executor = RankedExecutor(1)
    started, release = threading.Event(), threading.Event()

    def hold() -> None:
        started.set()
        release.wait()

    executor.submit(hold)
    assert started.wait(5)
    try:
        yield executor, release
    finally:
        release.set()
        executor.shutdown(cancel_futures=True)
