"""Live progress of a job: Server-Sent Events and a WebSocket, fed by the same per-job watcher.

Both send the same events (`progress`, then one of `completed`, `failed`, `cancelled`, which
carries the whole job) with the same ordered ids, and end after the terminal event. SSE resumes
with `Last-Event-ID`; the WebSocket with `?lastEventId=` or a first message
`{"lastEventId": "..."}`. Credentials: the usual headers, or a stream ticket of this job as
`?ticket=` (what browsers use; see `api.tickets`); never a bearer token in the URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response, WebSocket, WebSocketDisconnect
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.status import (
    WS_1000_NORMAL_CLOSURE,
    WS_1008_POLICY_VIOLATION,
    WS_1013_TRY_AGAIN_LATER,
)

from api.deps import JobIdDep, ServicesDep, StreamOwnerDep, socket_owner
from api.errors import ApiError, error_responses
from api.middleware import client_address
from api.views import JobRecord
from api.watchers import (
    EventKey,
    JobWatchers,
    event_key,
    job_events,
    parse_event_id,
    snapshots,
)
from core.metrics import ACTIVE_WEBSOCKETS
from core.observability import job_id_var

router = APIRouter(tags=["downloads"])

SSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "events `progress`, `completed`, `failed`, `cancelled`",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    204: {"description": "the job is finished and the client has its last event"},
    **error_responses(401, 404),
}
SSE_RESPONSES[429]["description"] = "rate limited, or too many open streams (Retry-After)"
# How long a WebSocket client has to send `{"lastEventId": ...}` before the stream starts.
RESUME_GRACE_SECONDS = 0.5


@router.get(
    "/v1/download/subscribe/{jobId:job_id}",
    response_class=EventSourceResponse,
    responses=SSE_RESPONSES,
    summary="Live progress as Server-Sent Events",
)
@router.get(
    "/v1/download/progress/{jobId:job_id}",
    response_class=EventSourceResponse,
    responses=SSE_RESPONSES,
    summary="Alias of /v1/download/subscribe/{jobId}",
)
async def subscribe(
    request: Request,
    job_id: JobIdDep,
    owner: StreamOwnerDep,
    services: ServicesDep,
    last_event_id: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Ends after the terminal event; `Last-Event-ID` resumes without repeating events."""
    watchers = services.watchers
    record = await watchers.first_record(job_id, owner)
    last = parse_event_id(last_event_id)
    if record.view.status.terminal and last is not None and last >= event_key(record):
        # 204 tells EventSource not to reconnect: the client has the final event already.
        return Response(status_code=204)
    slot = services.stream_slots.take(owner, request.state.client_ip)
    events = job_events(watchers, record, last, slot)
    return EventSourceResponse(
        events,
        ping=watchers.ping_seconds,
        send_timeout=30,
        # Also when the stream never started: the slot is given back once, whoever is first.
        background=BackgroundTask(slot.release),
    )


@router.websocket("/v1/download/stream/{jobId:job_id}")
async def stream(websocket: WebSocket, services: ServicesDep) -> None:
    """The SSE events as WebSocket messages `{"id", "event", "data"}`; closes normally (1000)
    after the terminal event, with 1008 for missing credentials or an unknown or foreign job."""
    job_id = str(websocket.path_params["jobId"])
    job_id_var.set(job_id)
    watchers = services.watchers
    await websocket.accept()
    try:
        owner = socket_owner(websocket, services)
        record = await watchers.first_record(job_id, owner)
        slot = services.stream_slots.take(owner, client_address(websocket.scope, services.settings))
    except ApiError as exc:
        # Past the stream caps: 1013, try again later; anything else is not this client's job.
        code = WS_1013_TRY_AGAIN_LATER if exc.status == 429 else WS_1008_POLICY_VIOLATION
        await websocket.close(code, reason=exc.message[:120])
        return
    last = parse_event_id(websocket.query_params.get("lastEventId"))
    if "lastEventId" not in websocket.query_params:
        last = await _resume_point(websocket)
    ACTIVE_WEBSOCKETS.inc()
    try:
        await _send_until_terminal(websocket, watchers, record, last)
    finally:
        ACTIVE_WEBSOCKETS.dec()
        slot.release()


async def _resume_point(websocket: WebSocket) -> EventKey | None:
    """The `lastEventId` of the client's first message, if it sends one right away."""
    try:
        first = await asyncio.wait_for(websocket.receive_text(), RESUME_GRACE_SECONDS)
    except (TimeoutError, WebSocketDisconnect, KeyError):
        return None
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(first).get("lastEventId")
        return parse_event_id(value if isinstance(value, str) else None)
    return None


async def _send_until_terminal(
    websocket: WebSocket, watchers: JobWatchers, record: JobRecord, last: EventKey | None
) -> None:
    """Send snapshots until the terminal one while noticing a client that goes away."""

    async def send() -> None:
        async for snap in snapshots(watchers, record, last):
            await websocket.send_text(snap.message)
        await websocket.close(WS_1000_NORMAL_CLOSURE)

    async def drain() -> None:
        # Reading is how a disconnect is noticed; clients have nothing more to say.
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await websocket.receive_text()

    sender, reader = asyncio.create_task(send()), asyncio.create_task(drain())
    try:
        await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        await asyncio.gather(sender, reader, return_exceptions=True)
