"""Dependencies of the routes, as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request, WebSocket
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from api.auth import unauthorized
from api.services import Services
from core.observability import job_id_var
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


async def get_services(connection: HTTPConnection) -> Services:
    """The API's services, built once when the app starts (`api.services.build_services`)."""
    services: Services = connection.app.state.services
    return services


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
    services = await get_services(request)
    return services.auth.owner(api_key, token)


def stream_owner(
    services: Services,
    job_id: str,
    ticket: str | None,
    token_in_url: bool,
    api_key: str | None,
    token: str | None,
) -> str:
    """A stream's owner: from a ticket for this job when one is given, else as for every route.
    A bearer token in the URL (`?access_token=`) is refused, never read."""
    if not services.auth.enabled:
        return ANONYMOUS_OWNER
    if ticket is not None:
        return services.tickets.owner(ticket, job_id)
    if token_in_url and not (api_key or token):
        raise unauthorized(NOT_IN_URLS)
    return services.auth.owner(api_key, token)


async def get_stream_owner(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    api_key: Annotated[str | None, Depends(api_key_header)],
    ticket: Annotated[str | None, Depends(ticket_query)],
) -> str:
    return stream_owner(
        await get_services(request),
        str(request.path_params["jobId"]),
        ticket,
        "access_token" in request.query_params,
        api_key,
        credentials.credentials if credentials else None,
    )


def socket_owner(websocket: WebSocket, services: Services) -> str:
    """The owner named by a WebSocket handshake: a ticket for this job, or the usual headers."""
    api_key, token = header_credentials(websocket.headers)
    return stream_owner(
        services,
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


ServicesDep = Annotated[Services, Depends(get_services)]
OwnerDep = Annotated[str, Depends(get_owner)]
StreamOwnerDep = Annotated[str, Depends(get_stream_owner)]
JobIdDep = Annotated[str, Depends(get_job_id)]
