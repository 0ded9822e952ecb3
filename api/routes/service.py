"""What the service itself serves, apart from jobs: `GET /` (JSON for API clients, the web page
for browsers), `/health` and `/readyz` (readiness, cached briefly), `/livez` (liveness, no I/O)
and `/metrics` for Prometheus."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from temporalio.client import Client

from api.caches import Snapshots
from api.deps import SettingsDep
from api.jobs import JobService
from api.schemas import Check, HealthResponse, Liveness, ServiceInfo
from core.metrics import DOWNLOAD_QUEUE_SIZE
from core.storage import ObjectStore, StorageError

router = APIRouter(tags=["service"])
# How long a readiness answer is reused.
READINESS_SECONDS = 1.5
# How long the queue size (a visibility count, costly for Temporal) is reused: Prometheus's usual
# scrape interval, so scraping more often, or from several Prometheus, does not count more often.
QUEUE_SIZE_SECONDS = 15.0
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get(
    "/",
    response_model=ServiceInfo,
    responses={200: {"content": {"text/html": {}}, "description": "the web page for browsers"}},
    summary="Service information, or the web page when a browser asks for HTML",
)
async def index(request: Request, settings: SettingsDep) -> Response:
    accept = request.headers.get("accept", "")
    # One URL, two answers: caches must key them by Accept.
    vary = {"Vary": "Accept"}
    if "text/html" in accept and (STATIC / "index.html").is_file():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers=vary)
    info = ServiceInfo(
        message="Download service: POST /v1/download/initiate to start a job",
        version=request.app.version,
        docs="/docs",
        health="/health",
        temporalUiUrl=settings.temporal_ui_url,
        authRequired=settings.auth_enabled,
    )
    return JSONResponse(info.model_dump(), headers=vary)


async def _check_storage(store: ObjectStore) -> Check:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), timeout=5)
    except (StorageError, TimeoutError):
        return "error"
    return "ok"


async def _check_temporal(client: Client) -> Check:
    try:
        ok = await client.service_client.check_health(timeout=timedelta(seconds=3))
    except Exception:  # any failure to answer means unhealthy
        return "error"
    return "ok" if ok else "error"


def readiness(store: ObjectStore, client: Client) -> Snapshots[HealthResponse]:
    """Storage and Temporal checks, run at most once per READINESS_SECONDS whatever the number
    of probes: health endpoints cannot be used to flood the dependencies."""

    async def check(_: str) -> HealthResponse:
        storage, temporal = await asyncio.gather(_check_storage(store), _check_temporal(client))
        checks: dict[str, Check] = {"storage": storage, "temporal": temporal}
        healthy = all(v == "ok" for v in checks.values())
        return HealthResponse(status="healthy" if healthy else "unhealthy", checks=checks)

    return Snapshots(check, max_age=READINESS_SECONDS)


def queue_size(jobs: JobService) -> Snapshots[int]:
    """The jobs waiting or running, counted at most once per QUEUE_SIZE_SECONDS."""

    async def count(_: str) -> int:
        return await jobs.count_running(rpc_timeout=timedelta(seconds=2))

    return Snapshots(count, max_age=QUEUE_SIZE_SECONDS)


@router.get(
    "/health",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Storage and Temporal reachability (the existing service's probe)",
)
@router.get(
    "/readyz",
    response_model=HealthResponse,
    responses={503: {"model": HealthResponse}},
    summary="Readiness: storage and Temporal reachable",
)
async def health(request: Request) -> JSONResponse:
    checks: Snapshots[HealthResponse] = request.app.state.readiness
    body = await checks.get("ready")
    return JSONResponse(body.model_dump(), status_code=200 if body.status == "healthy" else 503)


@router.get("/livez", response_model=Liveness, summary="Liveness: the process answers (no I/O)")
async def livez() -> Liveness:
    return Liveness(status="alive")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    counted: Snapshots[int] = request.app.state.queue_size
    # Skipped when Temporal does not answer: the other metrics are still worth scraping.
    with contextlib.suppress(Exception):
        DOWNLOAD_QUEUE_SIZE.set(await counted.get("running"))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
