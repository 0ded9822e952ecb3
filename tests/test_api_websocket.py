"""The WebSocket event stream through a real uvicorn server and a real WebSocket client."""

from __future__ import annotations

import asyncio
import json

import websockets
from temporalio.testing import WorkflowEnvironment

from api.watchers import JobWatchers, parse_event_id
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import (
    NORMAL,
    POLICY_VIOLATION,
    initiate,
    put_sources,
    read_events,
    receive_all,
    serve,
    slow_origin,
    socket_url,
    wait_for,
)
from worker import build_worker

MIB = 1024 * 1024


async def test_events_match_the_sse_stream_and_resume(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 400)
    put_sources(store, settings, {10_001 + i: MIB for i in range(3)})
    async with serve(slow) as (client, app), build_worker(env.client, slow, store):
        job_id = (await initiate(client, [10_001, 10_002, 10_003, 10_009]))["jobId"]
        async with (
            websockets.connect(socket_url(client, job_id)) as socket,
            client.stream("GET", f"/v1/download/subscribe/{job_id}") as sse,
        ):
            # Both transports are fed by one watcher of the job.
            watching: JobWatchers = app.state.services.watchers

            async def one_watcher() -> bool:
                return watching.watched_jobs == 1

            await wait_for(one_watcher)
            messages, code = await receive_all(socket)
            sse_events = await read_events(sse)

        assert code == NORMAL
        assert all(set(m) == {"id", "event", "data"} for m in messages)
        kinds = [m["event"] for m in messages]
        assert kinds[-1] == "completed" and set(kinds[:-1]) <= {"progress"}
        keys = [parse_event_id(m["id"]) for m in messages]
        assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
        # The terminal event is the very one SSE subscribers got: same id, same data.
        assert messages[-1]["id"] == sse_events[-1]["id"]
        assert messages[-1]["data"] == sse_events[-1]["data"]
        final = messages[-1]["data"]
        assert final["jobId"] == job_id and final["status"] == "completed"
        assert [f["file_id"] for f in final["files"]] == [10_001, 10_002, 10_003, 10_009]

        # Resuming: from the query string, or with a first message.
        async with websockets.connect(
            socket_url(client, job_id, f"?lastEventId={messages[-1]['id']}")
        ) as socket:
            assert await receive_all(socket) == ([], NORMAL)
        if len(messages) > 1:
            async with websockets.connect(socket_url(client, job_id)) as socket:
                await socket.send(json.dumps({"lastEventId": messages[0]["id"]}))
                again, code = await receive_all(socket)
            assert code == NORMAL
            assert [m["id"] for m in again] == [messages[-1]["id"]]


async def test_unknown_foreign_or_anonymous_streams_are_refused(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    keyed = settings.model_copy(update={"auth_api_keys": "alice-key=alice,bob-key=bob"})
    async with serve(keyed) as (client, _):
        job_id = (await initiate(client, [10_001], headers={"X-API-Key": "alice-key"}))["jobId"]
        for headers, query in (
            ({"X-API-Key": "alice-key"}, "missing-job"),
            ({"X-API-Key": "bob-key"}, job_id),
            ({}, job_id),
            ({"Authorization": "Bearer not-a-token"}, job_id),
        ):
            async with websockets.connect(
                socket_url(client, query), additional_headers=headers
            ) as socket:
                messages, code = await receive_all(socket)
            assert (messages, code) == ([], POLICY_VIOLATION), (headers, query)

        # A bearer token (here an API key) in the URL is refused: browsers use tickets.
        async with websockets.connect(socket_url(client, job_id, "?access_token=alice-key")) as s:
            assert await receive_all(s) == ([], POLICY_VIOLATION)

        # The owner's credentials as a header, or a ticket of this job in the query, are accepted.
        async with websockets.connect(
            socket_url(client, job_id), additional_headers={"X-API-Key": "alice-key"}
        ) as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["event"] == "progress" and first["data"]["status"] == "queued"
        issued = await client.post(
            f"/v1/download/{job_id}/ticket", headers={"X-API-Key": "alice-key"}
        )
        ticket = issued.json()["ticket"]
        async with websockets.connect(socket_url(client, job_id, f"?ticket={ticket}")) as socket:
            first = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert first["data"]["jobId"] == job_id
