"""The HTTP API against the real Temporal dev server and the real S3 server.

Requests go through the ASGI app in process (httpx's ASGI transport) with its lifespan run, so the
app opens its own Temporal and S3 clients exactly as in production.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Iterable
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from temporalio.testing import WorkflowEnvironment

from core.config import Environment, Settings
from core.observability import setup_tracing
from core.storage import ObjectStore
from devstack.servers import free_port
from tests.helpers import (
    Json,
    api_client,
    assert_error,
    initiate,
    put_sources,
    slow_origin,
    wait_for,
    with_keys,
)
from worker import build_worker
from workflows.models import JobState
from workflows.names import STATE_MEMO_KEY


@pytest.fixture
async def api(settings: Settings, store: ObjectStore) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(settings) as client:
        yield client


async def wait_status(
    api: httpx.AsyncClient, job_id: str, statuses: Iterable[str], timeout: float = 60, **kw: Any
) -> Json:
    wanted = set(statuses)

    async def probe() -> Json | None:
        resp = await api.get(f"/v1/download/status/{job_id}", **kw)
        assert resp.status_code == 200, resp.text
        body: Json = resp.json()
        return body if body["status"] in wanted else None

    return await wait_for(probe, timeout=timeout, interval=0.1)


# --- service endpoints and cross-cutting behaviour ---
async def test_root_health_docs_and_openapi(api: httpx.AsyncClient) -> None:
    root = await api.get("/")
    assert root.status_code == 200 and "message" in root.json()

    page = await api.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<script src=" in page.text and "cdn" not in page.text.lower()
    for asset in ("/static/app.js", "/static/style.css"):
        assert (await api.get(asset)).status_code == 200

    health = await api.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "healthy", "checks": {"storage": "ok", "temporal": "ok"}}

    docs = await api.get("/docs")
    assert docs.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in docs.text and "cdn.jsdelivr" not in docs.text
    assert (await api.get("/docs/assets/swagger-ui-bundle.js")).status_code == 200
    assert (await api.get("/docs/assets/swagger-ui.css")).status_code == 200

    spec = (await api.get("/openapi.json")).json()
    paths = spec["paths"]
    for path in (
        "/v1/download/initiate",
        "/v1/download/status/{jobId}",
        "/v1/download/subscribe/{jobId}",
        "/v1/download/progress/{jobId}",
        "/v1/download/{jobId}",
        "/v1/download/{jobId}/file",
        "/v1/download/{jobId}/retry",
        "/v1/downloads",
        "/v1/download/check",
        "/v1/download/start",
        "/health",
    ):
        assert path in paths, path
    status_op = paths["/v1/download/status/{jobId}"]["get"]
    assert "JobView" in json.dumps(status_op["responses"]["200"])
    assert "ErrorResponse" in json.dumps(status_op["responses"]["404"])
    # The caller's credentials are read from headers: documented, with their schemes.
    assert status_op["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert {"HTTPBearer", "APIKeyHeader"} <= set(spec["components"]["securitySchemes"])
    assert "security" not in paths["/health"]["get"]
    assert "422" not in json.dumps(paths)


def test_spans_are_recorded_only_when_something_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No OTLP endpoint: spans are not recorded, yet each carries a trace id (for `X-Trace-Id`,
    log lines and the workflow it starts). An endpoint, or OTEL_TRACES_SAMPLER, records them."""
    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    quiet = setup_tracing(Settings(_env_file=None), "api")  # type: ignore[call-arg]
    span = quiet.get_tracer("test").start_span("request")
    assert not span.is_recording() and span.get_span_context().trace_id != 0
    endpoint = {"otel_exporter_otlp_endpoint": "http://127.0.0.1:9"}
    exporting = setup_tracing(Settings(_env_file=None, **endpoint), "api")  # type: ignore[call-arg, arg-type]
    try:
        assert exporting.get_tracer("test").start_span("request").is_recording()
    finally:
        exporting.shutdown()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    asked = setup_tracing(Settings(_env_file=None), "api")  # type: ignore[call-arg]
    assert asked.get_tracer("test").start_span("request").is_recording()


async def test_request_id_security_headers_trace_and_cors(api: httpx.AsyncClient) -> None:
    echoed = await api.get("/health", headers={"X-Request-ID": "abc-123"})
    assert echoed.headers["x-request-id"] == "abc-123"
    fresh = await api.get("/health")
    assert uuid.UUID(fresh.headers["x-request-id"]).version == 4
    for name, value in {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }.items():
        assert fresh.headers[name] == value
    assert "max-age=" in fresh.headers["strict-transport-security"]
    assert "default-src 'self'" in fresh.headers["content-security-policy"]
    assert "server" not in fresh.headers and "x-powered-by" not in fresh.headers
    assert "x-trace-id" not in fresh.headers  # probes are not traced

    simple = await api.get("/", headers={"Origin": "https://app.example"})
    assert int(simple.headers["x-trace-id"], 16) != 0
    assert simple.headers["access-control-allow-origin"] == "*"
    assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
    preflight = await api.options(
        "/v1/download/initiate",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization,x-request-id,"
            "idempotency-key",
        },
    )
    assert preflight.status_code == 200
    allowed = preflight.headers["access-control-allow-headers"].lower()
    for header in ("content-type", "authorization", "x-request-id", "idempotency-key"):
        assert header in allowed


async def test_index_answers_json_or_the_page_by_accept(api: httpx.AsyncClient) -> None:
    info = await api.get("/", headers={"Accept": "application/json"})
    page = await api.get("/", headers={"Accept": "text/html"})
    assert info.json()["authRequired"] is False and info.json()["temporalUiUrl"]
    assert page.headers["content-type"].startswith("text/html")
    for answer in (info, page):
        assert "Accept" in [v.strip() for v in answer.headers["vary"].split(",")]


async def test_any_origin_is_on_every_response_even_without_origin(
    api: httpx.AsyncClient,
) -> None:
    """Today's clients check for the header without sending `Origin`."""
    responses = [
        await api.get("/health"),
        await api.get("/"),
        await api.get("/nope"),
        await api.post("/v1/download/initiate", json={"file_ids": [1]}),
        await api.get(f"/v1/download/status/{uuid.uuid4()}"),
    ]
    assert [r.status_code for r in responses] == [200, 200, 404, 400, 404]
    for response in responses:
        assert response.headers["access-control-allow-origin"] == "*"


async def test_cors_origin_list(settings: Settings, store: ObjectStore) -> None:
    listed = settings.model_copy(update={"cors_origins": "https://a.example, https://b.example"})
    async with api_client(listed) as api:
        ok = await api.get("/", headers={"Origin": "https://b.example"})
        assert ok.headers["access-control-allow-origin"] == "https://b.example"
        other = await api.get("/", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        plain = await api.get("/")
        assert "access-control-allow-origin" not in plain.headers


async def test_unknown_paths_and_wrong_methods(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/nope"), 404, "not_found")
    assert_error(await api.get("/v1/download/initiate"), 405, "method_not_allowed")
    assert_error(await api.delete("/v1/download/check"), 405)
    assert_error(await api.put("/v1/download/status/abc"), 405)
    assert_error(await api.get(f"/v1/download/status/{uuid.uuid4()}"), 404, "not_found")
    assert_error(await api.get("/v1/download/status/bad%20id!"), 404)


async def test_unexpected_errors_hide_their_traceback(
    settings: Settings, store: ObjectStore
) -> None:
    def add_failing_route(app: FastAPI) -> None:
        async def boom() -> None:
            raise ValueError("secret internals")

        app.add_api_route("/boom", boom)

    production = settings.model_copy(update={"environment": Environment.production})
    async with api_client(production, customize=add_failing_route) as api:
        body = assert_error(await api.get("/boom"), 500, "internal_error")
        assert body["details"] is None and "secret" not in json.dumps(body)
    async with api_client(settings, customize=add_failing_route) as api:
        body = assert_error(await api.get("/boom"), 500, "internal_error")
        assert "ValueError" in body["details"]


async def test_metrics(api: httpx.AsyncClient) -> None:
    await initiate(api, [10_001])
    await api.get(f"/v1/download/status/{uuid.uuid4()}")
    text = (await api.get("/metrics")).text
    assert 'http_request_duration_seconds_bucket{le="0.005",method="GET",route=' in text
    assert 'route="/v1/download/status/{jobId}",status="404"' in text
    assert 'download_jobs_total{status="queued"}' in text
    assert "active_sse_connections" in text
    assert "download_queue_size" in text


async def test_scrapes_count_the_queue_at_most_once_per_interval(
    settings: Settings, store: ObjectStore
) -> None:
    """`download_queue_size` is a visibility count, costly for Temporal: however often /metrics
    is scraped, it is counted once per QUEUE_SIZE_SECONDS."""
    apps: list[FastAPI] = []
    async with api_client(settings, customize=apps.append) as api:
        await initiate(api, [10_001])
        scrapes = list(await asyncio.gather(*(api.get("/metrics") for _ in range(10))))
        scrapes += [await api.get("/metrics") for _ in range(10)]
        assert {s.status_code for s in scrapes} == {200}
        assert all("download_queue_size " in s.text for s in scrapes)
        assert apps[0].state.services.queue_size.fetches == 1


# --- initiate and status ---
async def test_initiate_is_queued_and_readable_with_no_worker(
    api: httpx.AsyncClient, env: WorkflowEnvironment, settings: Settings
) -> None:
    before = time.monotonic()
    body = await initiate(api, [10_001, 10_002, 10_001])
    assert time.monotonic() - before < 5
    assert body["status"] == "queued"
    assert (body["totalFileIds"], body["totalFiles"]) == (3, 2)
    # No job observed yet by this API process: the documented default per file.
    assert body["estimatedTimeMs"] == 2 * settings.estimated_ms_per_file
    job_id = body["jobId"]
    assert body["statusUrl"] == f"/v1/download/status/{job_id}"
    assert body["subscribeUrl"] == f"/v1/download/subscribe/{job_id}"

    status = (await api.get(body["statusUrl"])).json()
    assert status["status"] == "queued" and status["progress"] == 0
    assert [f["file_id"] for f in status["files"]] == [10_001, 10_002]
    assert {f["status"] for f in status["files"]} == {"pending"}
    assert status["downloadUrl"] is None

    desc = await env.client.get_workflow_handle(job_id).describe()
    assert (await desc.memo_value(STATE_MEMO_KEY, type_hint=JobState)).job_id == job_id


async def test_a_queued_jobs_memo_stays_within_what_temporal_warns_above(
    api: httpx.AsyncClient, env: WorkflowEnvironment
) -> None:
    """Twenty files pending: the memo Temporal stores is under 2 KiB, and reads back whole."""
    ids = list(range(10_001, 10_021))
    job_id = (await initiate(api, ids))["jobId"]
    desc = await env.client.get_workflow_handle(job_id).describe()
    stored = desc.raw_description.workflow_execution_info.memo.fields[STATE_MEMO_KEY]
    assert len(stored.data) < 2048
    state = await desc.memo_value(STATE_MEMO_KEY, type_hint=JobState)
    assert [f.file_id for f in state.files] == ids
    assert all(f.key is None and f.status == "pending" for f in state.files)


async def test_estimated_time_follows_the_jobs_observed(
    api: httpx.AsyncClient, settings: Settings, store: ObjectStore, worker: Any
) -> None:
    put_sources(store, settings, {10_001: 10, 10_002: 20})
    job = await initiate(api, [10_001, 10_002])
    done = await wait_status(api, job["jobId"], ["completed"])
    took = datetime.fromisoformat(done["completedAt"]) - datetime.fromisoformat(done["startedAt"])
    per_file = max(took.total_seconds() * 1000 / 2, 1.0)
    later = await initiate(api, [10_001, 10_002, 10_003, 10_004])
    assert later["estimatedTimeMs"] == round(per_file * 4) != 4 * settings.estimated_ms_per_file


async def test_idempotency_key_returns_the_same_job(api: httpx.AsyncClient) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
    first = await initiate(api, [10_001, 10_002], headers=key)
    again = await initiate(api, [10_001, 10_002], headers=key)
    assert again["jobId"] == first["jobId"]
    other = await initiate(api, [10_001, 10_002])
    assert other["jobId"] != first["jobId"]
    changed = await api.post("/v1/download/initiate", json={"file_ids": [10_003]}, headers=key)
    assert_error(changed, 409, "idempotency_conflict")


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", "invalid_json"),
        ('{"file_ids": [10001,]}', "invalid_json"),
        ({"file_ids": ["10001"]}, "validation_error"),
        ({"file_ids": [10001.5]}, "validation_error"),
        ({"file_ids": [True]}, "validation_error"),
        ({"file_ids": "10001"}, "validation_error"),
        ({"file_ids": [9_999]}, "validation_error"),
        ({"file_ids": [100_000_001]}, "validation_error"),
        ({"file_ids": []}, "validation_error"),
        ({"file_ids": list(range(10_000, 11_001))}, "validation_error"),
        ({"file_ids": [10_001], "extra": 1}, "validation_error"),
        ({"file_ids": [10_001], "callback_url": "not a url"}, "validation_error"),
        ({}, "validation_error"),
        ([10_001], "validation_error"),
    ],
)
async def test_bad_initiate_input_is_400(api: httpx.AsyncClient, content: Any, error: str) -> None:
    raw = content if isinstance(content, str) else json.dumps(content)
    resp = await api.post(
        "/v1/download/initiate", content=raw, headers={"Content-Type": "application/json"}
    )
    body = assert_error(resp, 400, error)
    if error == "validation_error":
        assert body["details"] and body["details"][0]["loc"][0] == "body"


@pytest.mark.parametrize("path", ["/v1/download/check", "/v1/download/start"])
@pytest.mark.parametrize("file_id", [9_999, 100_000_001, "x", None])
async def test_bad_single_file_input_is_400(
    api: httpx.AsyncClient, path: str, file_id: Any
) -> None:
    assert_error(await api.post(path, json={"file_id": file_id}), 400, "validation_error")


async def test_oversized_body_is_413(settings: Settings, store: ObjectStore) -> None:
    small = settings.model_copy(update={"max_body_bytes": 2048})
    big = {"file_ids": [10_001] * 600}
    async with api_client(small) as api:
        assert_error(await api.post("/v1/download/initiate", json=big), 413, "payload_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            yield json.dumps(big).encode()

        streamed = await api.post(
            "/v1/download/initiate", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert_error(streamed, 413)
        assert (await api.post("/v1/download/initiate", json={"file_ids": [10_001]})).is_success


# --- the existing service's endpoints ---
async def test_check_reports_availability(
    api: httpx.AsyncClient, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 1234})
    found = await api.post("/v1/download/check", json={"file_id": 10_001})
    # `s3Key` stays for today's clients, but the internal key is never disclosed.
    assert found.json() == {"file_id": 10_001, "available": True, "s3Key": None, "size": 1234}
    missing = await api.post("/v1/download/check", json={"file_id": 10_002})
    assert missing.json() == {"file_id": 10_002, "available": False, "s3Key": None, "size": None}


async def test_start_answers_the_old_shape_when_done_in_time(
    api: httpx.AsyncClient, settings: Settings, store: ObjectStore, worker: Any
) -> None:
    sources = put_sources(store, settings, {10_001: 5000})
    resp = await api.post("/v1/download/start", json={"file_id": 10_001})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"file_id", "status", "downloadUrl", "size", "processingTimeMs", "message"}
    assert body["file_id"] == 10_001 and body["status"] == "completed"
    assert isinstance(body["processingTimeMs"], int)
    async with httpx.AsyncClient() as s3:
        archive = (await s3.get(body["downloadUrl"])).content
    assert len(archive) == body["size"]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.read("10001.zip") == sources[10_001]

    missing = (await api.post("/v1/download/start", json={"file_id": 10_002})).json()
    assert missing["status"] == "failed" and missing["downloadUrl"] is None
    assert "not found" in missing["message"]


async def test_start_hands_back_the_job_when_not_done_in_time(
    settings: Settings, store: ObjectStore
) -> None:
    quick = settings.model_copy(update={"request_timeout_ms": 1500})
    async with api_client(quick) as api:
        began = time.monotonic()
        resp = await api.post("/v1/download/start", json={"file_id": 10_001})
        assert time.monotonic() - began < 1.5
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["status"] == "queued" and body["file_id"] == 10_001
    assert resp.headers["location"] == f"/v1/download/status/{body['jobId']}"


# --- a job's life: completed, read with no worker; failed and retried; cancelled ---
async def test_finished_job_stays_readable_after_the_worker_stops(
    env: WorkflowEnvironment, api: httpx.AsyncClient, settings: Settings, store: ObjectStore
) -> None:
    sources = put_sources(store, settings, {10_001: 300, 10_003: 2_000_000})
    async with build_worker(env.client, settings, store):
        job = await initiate(api, [10_001, 10_002, 10_003])
        await wait_status(api, job["jobId"], ["completed"])
    # The worker is gone: everything below comes from Temporal and S3 alone.
    status = (await api.get(job["statusUrl"])).json()
    assert status["status"] == "completed" and status["progress"] == 100
    assert (status["completedFiles"], status["failedFiles"], status["totalFiles"]) == (2, 1, 3)
    assert status["files"][1] == {
        "file_id": 10_002,
        "status": "failed",
        "size": None,
        "error": "not found",
        "downloadUrl": None,
        "sha256": None,
    }
    assert status["files"][2]["sha256"] == hashlib.sha256(sources[10_003]).hexdigest()
    # A completed file links to its own source, beside the bundle.
    async with httpx.AsyncClient() as s3:
        source = await s3.get(status["files"][2]["downloadUrl"])
    assert source.status_code == 200 and source.content == sources[10_003]
    assert status["bytesProcessed"] == status["totalBytes"] == 2_000_300
    assert status["completedAt"] and status["downloadUrl"] and status["expiresAt"]

    details = (await api.get(job["detailsUrl"])).json()
    async with httpx.AsyncClient() as s3:
        archive = (await s3.get(details["downloadUrl"])).content
    assert len(archive) == details["archiveSize"]
    assert details["downloadUrls"] == [details["downloadUrl"]]
    assert details["archiveSizes"] == [details["archiveSize"]]
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        assert zf.read("10003.zip") == sources[10_003]

    redirect = await api.get(job["fileUrl"])
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith(f"{settings.s3_endpoint}/")
    assert_error(await api.delete(f"/v1/download/{job['jobId']}"), 409, "conflict")
    assert_error(await api.post(f"/v1/download/{job['jobId']}/retry"), 409)

    run_id = (await env.client.get_workflow_handle(job["jobId"]).describe()).run_id
    store.delete(settings.archive_key(job["jobId"], run_id))
    assert_error(await api.get(job["fileUrl"]), 410, "gone")


async def test_urls_are_signed_for_the_public_endpoint(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Any
) -> None:
    public = settings.model_copy(
        update={"s3_public_endpoint": "https://files.example.test", "presign_expiry_seconds": 600}
    )
    put_sources(store, settings, {10_001: 10})
    async with api_client(public) as api:
        job = await initiate(api, [10_001])
        status = await wait_status(api, job["jobId"], ["completed"])
        url = httpx.URL(status["downloadUrl"])
        assert url.host == "files.example.test" and url.params["X-Amz-Expires"] == "600"
        location = (await api.get(job["fileUrl"])).headers["location"]
        assert location.startswith("https://files.example.test/")


async def test_failed_job_can_be_retried(
    api: httpx.AsyncClient, settings: Settings, store: ObjectStore, worker: Any
) -> None:
    job = await initiate(api, [10_005])
    failed = await wait_status(api, job["jobId"], ["failed"])
    assert failed["error"] == "none of the requested files is available"
    assert failed["files"][0]["error"] == "not found"
    assert_error(await api.get(job["fileUrl"]), 409)

    put_sources(store, settings, {10_005: 100})
    retried = await api.post(f"/v1/download/{job['jobId']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json()["jobId"] == job["jobId"]
    assert retried.json()["status"] in ("queued", "processing")
    done = await wait_status(api, job["jobId"], ["completed"])
    assert done["files"][0]["status"] == "completed"


async def test_cancel_a_running_job_then_retry_it(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 60_000)
    put_sources(store, settings, {10_001: 100})
    async with api_client(slow) as api, build_worker(env.client, slow, store):
        job = await initiate(api, [10_001])
        running = await wait_status(api, job["jobId"], ["processing"])
        assert running["files"][0]["status"] in ("pending", "processing")
        resp = await api.delete(f"/v1/download/{job['jobId']}")
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"jobId": job["jobId"], "cancelled": True, "status": "cancelled"}
        assert_error(await api.delete(f"/v1/download/{job['jobId']}"), 409)
        assert not [o for o in store.list_objects("archives/") if job["jobId"] in o.key]

        retried = await api.post(f"/v1/download/{job['jobId']}/retry")
        assert retried.status_code == 200, retried.text
        await wait_status(api, job["jobId"], ["processing"])
        assert (await api.delete(f"/v1/download/{job['jobId']}")).json()["status"] == "cancelled"


# --- owners, auth, listing ---
async def test_owners_only_see_their_own_jobs(settings: Settings, store: ObjectStore) -> None:
    alice, bob = f"alice-{uuid.uuid4().hex[:8]}", f"bob-{uuid.uuid4().hex[:8]}"
    keyed = with_keys(settings, a=alice, b=bob)
    as_alice = {"X-API-Key": f"{alice}-key"}
    as_bob = {"Authorization": f"Bearer {bob}-key"}
    async with api_client(keyed) as api:
        assert_error(await api.post("/v1/download/initiate", json={"file_ids": [10_001]}), 401)
        wrong = {"X-API-Key": "nope"}
        assert_error(await api.get("/v1/downloads", headers=wrong), 401, "unauthorized")
        job = await initiate(api, [10_001], headers=as_alice)
        job_id = job["jobId"]
        assert (await api.get(job["statusUrl"], headers=as_alice)).status_code == 200
        for method, path in [
            ("GET", f"/v1/download/status/{job_id}"),
            ("GET", f"/v1/download/{job_id}"),
            ("GET", f"/v1/download/{job_id}/file"),
            ("GET", f"/v1/download/subscribe/{job_id}"),
            ("DELETE", f"/v1/download/{job_id}"),
            ("POST", f"/v1/download/{job_id}/retry"),
        ]:
            assert_error(await api.request(method, path, headers=as_bob), 404, "not_found")
        # The same Idempotency-Key from another owner is another job.
        key = {"Idempotency-Key": "same"}
        a = await initiate(api, [10_001], headers={**as_alice, **key})
        b = await initiate(api, [10_001], headers={**as_bob, **key})
        assert a["jobId"] != b["jobId"]

        async def listed(headers: dict[str, str], n: int) -> list[str] | None:
            jobs = (await api.get("/v1/downloads", headers=headers)).json()["jobs"]
            ids = [j["jobId"] for j in jobs]
            return ids if len(ids) == n else None

        assert set(await wait_for(lambda: listed(as_alice, 2))) == {job_id, a["jobId"]}
        assert await wait_for(lambda: listed(as_bob, 1)) == [b["jobId"]]


async def test_list_filters_by_status_and_pages(settings: Settings, store: ObjectStore) -> None:
    owner = f"erin-{uuid.uuid4().hex[:8]}"
    auth = {"X-API-Key": f"{owner}-key"}
    async with api_client(with_keys(settings, e=owner)) as api:
        ids = {(await initiate(api, [10_001 + i], headers=auth))["jobId"] for i in range(3)}

        async def page(query: str) -> Json:
            resp = await api.get(f"/v1/downloads{query}", headers=auth)
            assert resp.status_code == 200, resp.text
            body: Json = resp.json()
            return body

        async def all_listed() -> Json | None:
            body = await page("?status=queued")
            return body if len(body["jobs"]) == 3 else None

        listed = await wait_for(all_listed)
        assert {j["jobId"] for j in listed["jobs"]} == ids
        assert (await page("?status=completed"))["jobs"] == []
        first = await page("?pageSize=2")
        assert len(first["jobs"]) == 2 and first["nextPageToken"]
        second = await page(f"?pageSize=2&pageToken={first['nextPageToken']}")
        assert {j["jobId"] for j in first["jobs"] + second["jobs"]} == ids
        assert_error(await api.get("/v1/downloads?status=bogus", headers=auth), 400)
        assert_error(await api.get("/v1/downloads?pageSize=0", headers=auth), 400)
        for token in ("%%%", "AAAA", "bm90IGEgdG9rZW4"):
            assert_error(await api.get(f"/v1/downloads?pageToken={token}", headers=auth), 400)


# --- limits and outages ---
async def test_rate_limit(settings: Settings, store: ObjectStore) -> None:
    limited = settings.model_copy(update={"rate_limit_enabled": True, "rate_limit_max_requests": 3})
    async with api_client(limited) as api:
        seen = [await api.get("/") for _ in range(3)]
        assert [r.headers["ratelimit-remaining"] for r in seen] == ["2", "1", "0"]
        assert seen[0].headers["ratelimit-limit"] == "3"
        assert seen[0].headers["ratelimit-policy"] == "3;w=60"
        assert 0 < int(seen[0].headers["ratelimit-reset"]) <= 60
        over = await api.get("/")
        assert_error(over, 429, "rate_limited")
        assert 0 < int(over.headers["retry-after"]) <= 60
        # A trusted proxy (the peer is loopback) speaks for distinct clients.
        proxied = await api.get("/", headers={"X-Forwarded-For": "198.51.100.7"})
        assert proxied.status_code == 200
        assert (await api.get("/health")).status_code == 200  # probes are not limited

    async with api_client(limited, peer=("203.0.113.9", 40000)) as api:
        spoofed = [
            await api.get("/", headers={"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(4)
        ]
        assert spoofed[-1].status_code == 429  # an untrusted peer cannot pick its own address


async def test_temporal_unreachable_is_503(settings: Settings, store: ObjectStore) -> None:
    down = settings.model_copy(update={"temporal_address": f"127.0.0.1:{free_port()}"})
    async with api_client(down) as api:
        for resp in [
            await api.post("/v1/download/initiate", json={"file_ids": [10_001]}),
            await api.post("/v1/download/start", json={"file_id": 10_001}),
            await api.get(f"/v1/download/status/{uuid.uuid4()}"),
            await api.get(f"/v1/download/subscribe/{uuid.uuid4()}"),
            await api.get("/v1/downloads"),
        ]:
            assert_error(resp, 503, "temporal_unavailable")
            assert resp.headers["retry-after"] == "5"
        health = await api.get("/health")
        assert health.status_code == 503
        assert health.json()["checks"] == {"storage": "ok", "temporal": "error"}


async def test_storage_unreachable_is_503(settings: Settings, store: ObjectStore) -> None:
    down = settings.model_copy(update={"s3_endpoint": f"http://127.0.0.1:{free_port()}"})
    async with api_client(down) as api:
        resp = await api.post("/v1/download/check", json={"file_id": 10_001})
        assert_error(resp, 503, "storage_unavailable")
        assert resp.headers["retry-after"] == "5"
        health = await api.get("/health")
        assert health.status_code == 503
        assert health.json() == {
            "status": "unhealthy",
            "checks": {"storage": "error", "temporal": "ok"},
        }


async def test_liveness_needs_nothing_and_readiness_is_cached(
    settings: Settings, store: ObjectStore
) -> None:
    down = settings.model_copy(
        update={
            "s3_endpoint": f"http://127.0.0.1:{free_port()}",
            "temporal_address": f"127.0.0.1:{free_port()}",
        }
    )
    async with api_client(down) as api:
        live = await api.get("/livez")
        assert (live.status_code, live.json()) == (200, {"status": "alive"})
        ready = await api.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "unhealthy"

    def pings() -> float:
        sample = REGISTRY.get_sample_value(
            "s3_operations_total", {"operation": "ping", "status": "success"}
        )
        return sample or 0.0

    async with api_client(settings) as api:
        before = pings()
        answers = await asyncio.gather(*(api.get(p) for p in ["/health", "/readyz"] * 15))
        assert {a.status_code for a in answers} == {200}
        # Thirty probes at once, one round of checks against the dependencies.
        assert pings() - before == 1
        await asyncio.sleep(1.6)
        await api.get("/health")
        assert pings() - before == 2


async def test_request_timeout_is_504_but_streams_are_not_cut() -> None:
    from starlette.responses import StreamingResponse

    from api.middleware import TimeoutMiddleware

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/stream":

            async def ticks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    await asyncio.sleep(0.15)
                    yield b"tick\n"

            await StreamingResponse(ticks())(scope, receive, send)
            return
        await asyncio.sleep(5)

    transport = httpx.ASGITransport(app=TimeoutMiddleware(slow, seconds=0.2))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        began = time.monotonic()
        resp = await client.get("/slow")
        assert resp.status_code == 504 and time.monotonic() - began < 2
        assert resp.json()["error"] == "request_timeout"
        streamed = await client.get("/stream")
        assert streamed.status_code == 200 and streamed.text == "tick\n" * 3


async def test_a_retried_job_is_listed_once_in_its_current_state(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    owner = f"fay-{uuid.uuid4().hex[:8]}"
    auth = {"X-API-Key": f"{owner}-key"}
    slow = slow_origin(with_keys(settings, f=owner), 1500)
    put_sources(store, settings, {10_001: 1000, 10_002: 1000})
    async with api_client(slow) as api, build_worker(env.client, slow, store):
        retried = (await initiate(api, [10_001, 10_002], headers=auth))["jobId"]
        assert (await api.delete(f"/v1/download/{retried}", headers=auth)).status_code == 200

        async def status_of(job_id: str, wanted: str) -> bool:
            body = (await api.get(f"/v1/download/status/{job_id}", headers=auth)).json()
            return bool(body["status"] == wanted)

        await wait_for(lambda: status_of(retried, "cancelled"))
        assert (await api.post(f"/v1/download/{retried}/retry", headers=auth)).status_code == 200
        others = [(await initiate(api, [10_001], headers=auth))["jobId"] for _ in range(3)]

        async def first_page() -> Json | None:
            body: Json = (await api.get("/v1/downloads?pageSize=1", headers=auth)).json()
            return body if body["jobs"] and body["jobs"][0]["status"] != "completed" else None

        # A listing begun while the jobs run, continued once they are done: their runs moved
        # in Temporal's order (open runs first), yet each job is listed once.
        begun = await wait_for(first_page)

        async def processing() -> list[Json] | None:
            body = (await api.get("/v1/downloads?status=processing", headers=auth)).json()
            return body["jobs"] or None

        # Open jobs are listed as their status shows them: packaging means processing.
        working = await wait_for(processing)
        assert {j["status"] for j in working} == {"processing"}
        assert {j["jobId"] for j in working} <= {retried, *others}
        for job_id in [retried, *others]:

            async def completed(job_id: str = job_id) -> bool:
                return await status_of(job_id, "completed")

            await wait_for(completed, timeout=60)

        async def listing(query: str, token: str | None = None) -> list[Json]:
            jobs: list[Json] = []
            while True:
                page = f"/v1/downloads?{query}" + (f"&pageToken={token}" if token else "")
                body = (await api.get(page, headers=auth)).json()
                jobs += body["jobs"]
                if not (token := body["nextPageToken"]):
                    return jobs

        async def settled() -> list[Json] | None:
            # Visibility follows the runs' closing with a short delay.
            jobs = await listing("pageSize=2")
            return jobs if {j["status"] for j in jobs} == {"completed"} else None

        jobs = await wait_for(settled)
        went_on = await listing("pageSize=1", begun["nextPageToken"])
        across = [j["jobId"] for j in begun["jobs"] + went_on]
        assert sorted(across) == sorted([retried, *others]), across
        ids = [j["jobId"] for j in jobs]
        # Each job once, across pages of two; the retried one in its current state.
        assert sorted(ids) == sorted([retried, *others]), ids
        mine = next(j for j in jobs if j["jobId"] == retried)
        assert mine["completedFiles"] == 2 and mine["failedFiles"] == 0
        assert mine["totalBytes"] == 2000 and mine["progress"] == 100
        assert mine["firstFileIds"] == [10_001, 10_002]
        assert await listing("status=cancelled&pageSize=1") == []
        done = [j["jobId"] for j in await listing("status=completed&pageSize=1")]
        assert sorted(done) == sorted(ids)
