"""Dependencies of the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, WebSocket
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from temporalio.client import Client

from api.auth import Authenticator
from api.jobs import JobService
from api.schemas import JOB_ID_PATTERN
from api.sse import JobWatchers
from core.config import Settings
from core.observability import job_id_var
from core.storage import ObjectStore

bearer = HTTPBearer(auto_error=False, description="JWT whose `sub` is the job owner, or an API key")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
# EventSource cannot send headers, so event streams also accept the token in the query.
access_token_query = APIKeyQuery(name="access_token", auto_error=False)


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_temporal(request: Request) -> Client:
    client: Client = request.app.state.temporal
    return client


async def get_store(request: Request) -> ObjectStore:
    store: ObjectStore = request.app.state.store
    return store


async def get_jobs(request: Request) -> JobService:
    jobs: JobService = request.app.state.jobs
    return jobs


async def get_watchers(request: Request) -> JobWatchers:
    watchers: JobWatchers = request.app.state.watchers
    return watchers


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def get_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
) -> str:
    token = credentials.credentials if credentials else None
    return _authenticator(request).owner(api_key, token)


async def get_stream_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
    access_token: Annotated[str | None, Depends(access_token_query)],
) -> str:
    token = credentials.credentials if credentials else None
    return _authenticator(request).owner(api_key, token, access_token)


def socket_owner(websocket: WebSocket) -> str:
    """The owner named by a WebSocket handshake's credentials (the same ones as for SSE)."""
    scheme, _, token = websocket.headers.get("authorization", "").partition(" ")
    auth: Authenticator = websocket.app.state.auth
    return auth.owner(
        websocket.headers.get("x-api-key"),
        token if scheme.lower() == "bearer" else None,
        websocket.query_params.get("access_token"),
    )


async def get_job_id(
    job_id: Annotated[
        str, Path(alias="jobId", pattern=JOB_ID_PATTERN, description="the job (workflow) id")
    ],
) -> str:
    job_id_var.set(job_id)
    return job_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
JobsDep = Annotated[JobService, Depends(get_jobs)]
WatchersDep = Annotated[JobWatchers, Depends(get_watchers)]
OwnerDep = Annotated[str, Depends(get_owner)]
StreamOwnerDep = Annotated[str, Depends(get_stream_owner)]
JobIdDep = Annotated[str, Depends(get_job_id)]
