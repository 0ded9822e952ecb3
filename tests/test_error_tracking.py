"""Error tracking: the real Sentry SDK sends its envelopes to a loopback receiver.

Only system failures are reported (an API 500, a job's final storage outage), tagged with jobId,
traceId and requestId; user errors and retried attempts are not, and without a DSN nothing is set
up. The SDK is process-global: every test turns it off again.
"""

from __future__ import annotations

import gzip
import importlib
import json
import logging
import socket
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sentry_sdk
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.config import Environment, Settings
from core.errortracking import (
    close_error_tracking,
    release,
    report_failure,
    scrub_event,
    setup_error_tracking,
)
from core.storage import ObjectStore
from devstack.servers import free_port
from tests.helpers import expect_failure, http_receiver, start_job, wait_for
from worker import build_worker
from workflows.errors import ErrorType

Event = dict[str, Any]
SECRET = "s3cr3t-token"


def decompress(headers: dict[str, str], body: bytes) -> bytes:
    encoding = {k.lower(): v for k, v in headers.items()}.get("content-encoding", "identity")
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "br":  # sent only when the Brotli package is installed
        return importlib.import_module("brotli").decompress(body)  # type: ignore[no-any-return]
    assert encoding == "identity", f"unexpected Content-Encoding {encoding}"
    return body


def envelope_items(envelope: bytes) -> Iterator[tuple[dict[str, Any], bytes]]:
    """(item header, payload) of each item: a header line, then `length` bytes or one line."""
    _, _, rest = envelope.partition(b"\n")
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        header = json.loads(line)
        if "length" in header:
            payload, rest = rest[: header["length"]], rest[header["length"] :]
            rest = rest.removeprefix(b"\n")
        else:
            payload, _, rest = rest.partition(b"\n")
        yield header, payload


@dataclass
class Sentry:
    """A loopback stand-in for Sentry's ingestion endpoint."""

    dsn: str
    received: list[tuple[dict[str, str], bytes]]

    def raw(self) -> list[bytes]:
        return [decompress(headers, body) for headers, body in self.received]

    def events(self) -> list[Event]:
        return [
            json.loads(payload)
            for envelope in self.raw()
            for header, payload in envelope_items(envelope)
            if header["type"] == "event"
        ]

    async def events_until_marker(self) -> list[Event]:
        """Every event queued so far: a marker is queued last and the SDK sends in order."""
        report_failure(RuntimeError("marker"))

        async def arrived() -> list[Event] | None:
            events = self.events()
            return events if any(message(e) == "marker" for e in events) else None

        events = await wait_for(arrived, timeout=30)
        return [e for e in events if message(e) != "marker"]


def message(event: Event) -> str:
    return str(event["exception"]["values"][-1]["value"])


@pytest.fixture
def sentry() -> Iterator[Sentry]:
    with http_receiver() as (url, received):
        host_port = url.removeprefix("http://")
        try:
            yield Sentry(f"http://public@{host_port}/1", received)
        finally:
            close_error_tracking()


class Boom(Exception):
    """An exception no handler knows: the request-context middleware turns it into a 500."""


@asynccontextmanager
async def app_with_failing_route(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app (lifespan run), plus test-only routes that raise, reached in process."""
    app: FastAPI = create_app(settings)

    # The query's token becomes a local variable of the failing frame.
    async def unknown_error(token: str | None = None) -> None:
        raise Boom("boom")

    async def runtime_error(token: str | None = None) -> None:
        raise RuntimeError("boom")

    app.add_api_route("/test/boom", unknown_error)
    app.add_api_route("/test/runtime-error", runtime_error)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50123))
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api.test", timeout=10
        ) as client:
            yield client


async def get_with_secrets(client: httpx.AsyncClient, path: str) -> httpx.Response:
    return await client.get(
        f"{path}?token={SECRET}",
        headers={"Authorization": f"Bearer {SECRET}", "X-API-Key": SECRET, "X-Request-ID": "req-1"},
    )


@pytest.mark.parametrize(
    "path", ["/test/boom", "/test/runtime-error"], ids=["middleware", "handler"]
)
async def test_unhandled_api_error_is_reported_without_secrets(
    settings: Settings, sentry: Sentry, path: str
) -> None:
    tracked = settings.model_copy(update={"sentry_dsn": sentry.dsn})
    async with app_with_failing_route(tracked) as client:
        response = await get_with_secrets(client, path)
    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "internal_error" and body["requestId"] == "req-1"
    assert "Traceback" not in response.text and "File " not in response.text

    (event,) = await sentry.events_until_marker()
    assert message(event) == "boom"
    assert event["tags"]["requestId"] == "req-1"
    assert event["tags"]["traceId"] == response.headers["X-Trace-Id"]
    assert event["tags"]["component"] == "api"
    assert event["contexts"]["trace"]["trace_id"] == response.headers["X-Trace-Id"]
    assert event["transaction"] == f"GET {path}"
    assert event["environment"] == Environment.development.value
    assert event["release"] == release()
    assert all(SECRET.encode() not in envelope for envelope in sentry.raw())


async def test_handled_errors_are_not_reported(settings: Settings, sentry: Sentry) -> None:
    tracked = settings.model_copy(update={"sentry_dsn": sentry.dsn})
    async with app_with_failing_route(tracked) as client:
        assert (await client.get("/v1/download/status/no-such-job")).status_code in (400, 404)
        assert (
            await client.post("/v1/download/initiate", json={"file_ids": []})
        ).status_code == 400
    assert await sentry.events_until_marker() == []


async def test_storage_outage_is_reported_once_after_the_last_attempt(
    env: WorkflowEnvironment, settings: Settings, sentry: Sentry
) -> None:
    broken = settings.model_copy(
        update={
            "s3_endpoint": f"http://127.0.0.1:{free_port()}",  # nothing listens
            "activity_max_attempts": 2,
            "sentry_dsn": sentry.dsn,
        }
    )
    assert setup_error_tracking(broken, "worker")
    async with build_worker(env.client, broken, ObjectStore(broken)):
        handle = await start_job(env.client, broken, [10_001], request_id="req-2")
        await expect_failure(handle.result(), ErrorType.storage_unavailable)

    # The first attempt was retried, so only the second (last) one is reported.
    (event,) = await sentry.events_until_marker()
    assert event["tags"]["jobId"] == handle.id
    assert event["tags"]["requestId"] == "req-2"
    assert event["tags"]["errorType"] == ErrorType.storage_unavailable.value
    assert event["tags"]["component"] == "worker"
    assert event["contexts"]["temporal"]["attempt"] == 2
    assert event["contexts"]["temporal"]["activity"] == "package_archive"


async def test_user_errors_are_not_reported(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, sentry: Sentry
) -> None:
    tracked = settings.model_copy(update={"sentry_dsn": sentry.dsn})
    assert setup_error_tracking(tracked, "worker")
    async with build_worker(env.client, tracked, store):
        handle = await start_job(env.client, tracked, [99_999, 10_001])
        await expect_failure(handle.result(), ErrorType.nothing_to_package)
    assert await sentry.events_until_marker() == []


async def test_without_dsn_nothing_is_set_up_or_sent(
    settings: Settings,
    sentry: Sentry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The SDK would read this variable itself if it were started without a DSN.
    monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
    assert settings.sentry_dsn is None
    with caplog.at_level(logging.DEBUG, logger="sentry_sdk"):
        assert not setup_error_tracking(settings, "worker")
        async with app_with_failing_route(settings) as client:
            assert (await get_with_secrets(client, "/test/boom")).status_code == 500
        report_failure(RuntimeError("not sent"))
    assert not sentry_sdk.get_client().is_active()
    assert sentry.received == []
    assert not [r for r in caplog.records if r.name.startswith("sentry_sdk")]


async def test_an_unresponsive_sentry_never_delays_a_request(settings: Settings) -> None:
    """The SDK's transport waits up to 30 s for an answer; the request does not wait at all."""
    with socket.create_server(("127.0.0.1", 0)) as blackhole:  # accepts, never answers
        port = blackhole.getsockname()[1]
        tracked = settings.model_copy(update={"sentry_dsn": f"http://public@127.0.0.1:{port}/1"})
        try:
            async with app_with_failing_route(tracked) as client:
                for _ in range(3):
                    response = await client.get("/test/boom", timeout=5)
                    assert response.status_code == 500
        finally:
            close_error_tracking(timeout=0.1)


def test_before_send_keeps_no_query_headers_or_body() -> None:
    event: Any = {
        "request": {
            "method": "POST",
            "url": f"http://api.test/v1/download/initiate?token={SECRET}#frag",
            "query_string": f"token={SECRET}",
            "headers": {"Authorization": f"Bearer {SECRET}"},
            "cookies": {"session": SECRET},
            "data": {"file_ids": [10_001], "callback_url": f"https://x.test/?k={SECRET}"},
        }
    }
    scrubbed = scrub_event(event, "api")
    assert scrubbed["request"] == {
        "method": "POST",
        "url": "http://api.test/v1/download/initiate",
    }
    assert scrubbed["tags"] == {"component": "api"}
    assert SECRET not in json.dumps(scrubbed)
