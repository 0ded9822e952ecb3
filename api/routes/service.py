"""What the service itself serves, apart from jobs: `GET /` (JSON for API clients, the web page
for browsers), `/health` and `/readyz` (readiness, cached briefly), `/livez` (liveness, no I/O)
and `/metrics` for Prometheus, and `/favicon.ico` (the page's icon, for browsers that ask there)."""

from __future__ import annotations

import contextlib
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.deps import ServicesDep
from api.schemas import HealthResponse, Liveness, ServiceInfo
from core.metrics import DOWNLOAD_QUEUE_SIZE

router = APIRouter(tags=["service"])
STATIC = Path(__file__).resolve().parent.parent / "static"


@router.get(
    "/",
    response_model=ServiceInfo,
    responses={200: {"content": {"text/html": {}}, "description": "the web page for browsers"}},
    summary="Service information, or the web page when a browser asks for HTML",
)
async def index(request: Request, services: ServicesDep) -> Response:
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
        temporalUiUrl=services.settings.temporal_ui_url,
        authRequired=services.settings.auth_enabled,
    )
    return JSONResponse(info.model_dump(), headers=vary)


@router.get("/favicon.ico", include_in_schema=False)
async def favicon() -> FileResponse:
    # An SVG: every current browser shows it, whatever the name it was asked for by.
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


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
async def health(services: ServicesDep) -> JSONResponse:
    body = await services.readiness.get("ready")
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
async def metrics(services: ServicesDep) -> Response:
    # Skipped when Temporal does not answer: the other metrics are still worth scraping.
    with contextlib.suppress(Exception):
        DOWNLOAD_QUEUE_SIZE.set(await services.queue_size.get("running"))
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
