"""`GET /` and `GET /health`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from temporalio.client import Client

from activities.storage import ObjectStore, StorageError

router = APIRouter(tags=["service"])


class HealthResponse(BaseModel):
    status: str
    checks: dict[str, str]


async def _check_storage(store: ObjectStore) -> str:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), timeout=5)
    except (StorageError, TimeoutError):
        return "error"
    return "ok"


async def _check_temporal(client: Client) -> str:
    try:
        ok = await client.service_client.check_health(timeout=timedelta(seconds=3))
    except Exception:  # any failure to answer means unhealthy
        return "error"
    return "ok" if ok else "error"


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(request: Request) -> JSONResponse:
    storage, temporal = await asyncio.gather(
        _check_storage(request.app.state.store), _check_temporal(request.app.state.temporal)
    )
    checks = {"storage": storage, "temporal": temporal}
    healthy = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "healthy" if healthy else "unhealthy", "checks": checks},
        status_code=200 if healthy else 503,
    )
