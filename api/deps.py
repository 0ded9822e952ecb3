"""Dependencies of the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, WebSocket
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers, State
from temporalio.client import Client

from api.auth import Authenticator, unauthorized
from api.jobs import JobService
from api.tickets import StreamTickets
from api.watchers import JobWatchers
from core.config import Settings
from core.observability import job_id_var
from core.storage import ObjectStore
from workflows.models import ANONYMOUS_OWNER, JOB_ID_PATTERN

bearer = HTTPBearer(auto_error=False, description="a JWT (owner `jwt:<sub>`) or an API key")
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
# EventSource cannot send headers: event streams also take a stream ticket in the query.
ticket_query = APIKeyQuery(
    name="ticket",
    auto_error=False,
    description="from POST /v1/download/{jobId}/ticket; for browsers' EventSource and WebSocket",
)
NOT_IN_URLS = "bearer tokens are not accepted in URLs: pass ?ticket= from POST .../ticket"


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


def header_credentials(headers: Headers) -> tuple[str | None, str | None]:
    """The API key and the bearer token in a request's headers, as `api_key_header` and `bearer`
    read them."""
    scheme, token = get_authorization_scheme_param(headers.get("authorization"))
    bearer_token = token if scheme.lower() == "bearer" and token else None
    return headers.get("x-api-key"), bearer_token


async def get_owner(request: Request) -> str:
    """The caller, from its headers: one dependency with no sub-dependencies, on every request.
    The schema documents its routes with `bearer` and `api_key_header` (`document_caller_security`
    in `api.routes.docs`)."""
    api_key, token = header_credentials(request.headers)
    return _authenticator(request).owner(api_key, token)


async def get_tickets(request: Request) -> StreamTickets:
    tickets: StreamTickets = request.app.state.tickets
    return tickets


def stream_owner(
    state: State,
    job_id: str,
    ticket: str | None,
    token_in_url: bool,
    api_key: str | None,
    token: str | None,
) -> str:
    """A stream's owner: from a ticket for this job when one is given, else as for every route.
    A bearer token in the URL (`?access_token=`) is refused, never read."""
    auth: Authenticator = state.auth
    if not auth.enabled:
        return ANONYMOUS_OWNER
    if ticket is not None:
        tickets: StreamTickets = state.tickets
        return tickets.owner(ticket, job_id)
    if token_in_url and not (api_key or token):
        raise unauthorized(NOT_IN_URLS)
    return auth.owner(api_key, token)


async def get_stream_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
    ticket: Annotated[str | None, Depends(ticket_query)],
) -> str:
    return stream_owner(
        request.app.state,
        str(request.path_params["jobId"]),
        ticket,
        "access_token" in request.query_params,
        api_key,
        credentials.credentials if credentials else None,
    )


def socket_owner(websocket: WebSocket) -> str:
    """The owner named by a WebSocket handshake: a ticket for this job, or the usual headers."""
    api_key, token = header_credentials(websocket.headers)
    return stream_owner(
        websocket.app.state,
        str(websocket.path_params["jobId"]),
        websocket.query_params.get("ticket") or None,
        "access_token" in websocket.query_params,
        api_key,
        token,
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
TicketsDep = Annotated[StreamTickets, Depends(get_tickets)]
JobIdDep = Annotated[str, Depends(get_job_id)]
