"""The event routes (`api/routes/events.py`) through a real uvicorn server (streams cannot be
buffered like the others): Server-Sent Events, and the WebSocket with a real WebSocket client."""

from __future__ import annotations

import asyncio
import json

import pytest
import websockets
from temporalio.testing import WorkflowEnvironment

from api.watchers import parse_event_id
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
    services,
    slow_origin,
    socket_url,
    sse_events,
    wait_for,
)
from worker import build_worker

TERMINAL = {"completed", "failed", "cancelled"}
MIB = 1024 * 1024


async def test_stream_follows_a_job_to_completion_and_resumes(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 400)
    put_sources(store, settings, {10_001 + i: MIB for i in range(4)})
    async with serve(slow) as (client, _), build_worker(env.client, slow, store):
        job_id = (await initiate(client, [10_001, 10_002, 10_003, 10_004]))["jobId"]
        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["cache-control"] == "no-store"
            events = await read_events(resp)

        kinds = [e["event"] for e in events]
        assert kinds[-1] == "completed" and set(kinds[:-1]) == {"progress"}
        processing = [e["data"] for e in events if e["data"]["status"] == "processing"]
        assert len(processing) >= 2, kinds
        keys = [parse_event_id(e["id"]) for e in events]
        assert all(k is not None for k in keys)
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # type: ignore[type-var]
        progress = [e["data"]["progress"] for e in events]
        assert progress == sorted(progress) and progress[-1] == 100
        final = events[-1]["data"]
        assert final["jobId"] == job_id and final["downloadUrl"]
        assert [f["status"] for f in final["files"]] == ["completed"] * 4

        # Resuming after a progress event yields only what came later.
        middle = events[len(events) // 2]["id"]
        resumed = await client.get(
            f"/v1/download/progress/{job_id}", headers={"Last-Event-ID": middle}
        )
        assert resumed.status_code == 200
        again = await read_events(resumed)
        assert [e["event"] for e in again] == ["completed"]
        assert again[0]["id"] == events[-1]["id"]
        # Nothing newer than the final event: 204 tells EventSource to stop reconnecting.
        done = await client.get(
            f"/v1/download/subscribe/{job_id}", headers={"Last-Event-ID": events[-1]["id"]}
        )
        assert done.status_code == 204


async def test_failed_and_cancelled_jobs_end_their_streams(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    stuck = slow_origin(settings, 60_000)
    put_sources(store, settings, {10_001: 100})
    async with serve(stuck) as (client, _), build_worker(env.client, stuck, store):
        missing = (await initiate(client, [10_009]))["jobId"]
        events = await read_events(await client.get(f"/v1/download/subscribe/{missing}"))
        assert events[-1]["event"] == "failed"
        assert events[-1]["data"]["error"] == "none of the requested files is available"

        running = (await initiate(client, [10_001]))["jobId"]
        async with client.stream("GET", f"/v1/download/subscribe/{running}") as resp:
            lines = resp.aiter_lines()
            async for line in lines:
                if '"status":"processing"' in line:
                    break
            cancel = await client.delete(f"/v1/download/{running}")
            assert cancel.status_code == 200
            rest = [line async for line in lines]
        assert "event: cancelled" in rest


async def test_ticket_in_query_and_keepalive_comments(
    settings: Settings, store: ObjectStore
) -> None:
    keyed = settings.model_copy(update={"auth_api_keys": "k1=frank"})
    async with serve(keyed) as (client, app):
        services(app).watchers.ping_seconds = 0.3
        job_id = (await initiate(client, [10_001], headers={"X-API-Key": "k1"}))["jobId"]
        denied = await client.get(f"/v1/download/subscribe/{job_id}")
        assert denied.status_code == 401 and denied.json()["error"] == "unauthorized"
        wrong = await client.get(f"/v1/download/subscribe/{job_id}?ticket=nope")
        assert wrong.status_code == 401
        # A bearer token (here an API key) in the URL is no longer read.
        in_url = await client.get(f"/v1/download/subscribe/{job_id}?access_token=k1")
        assert in_url.status_code == 401 and "ticket" in in_url.json()["message"]
        issued = await client.post(f"/v1/download/{job_id}/ticket", headers={"X-API-Key": "k1"})
        url = f"/v1/download/subscribe/{job_id}?ticket={issued.json()['ticket']}"
        async with client.stream("GET", url) as resp:
            assert resp.status_code == 200
            seen: list[str] = []
            async for line in resp.aiter_lines():
                seen.append(line)
                if line.startswith(":"):
                    break
        assert any(line.startswith("event: progress") for line in seen)
        assert seen[-1].startswith(": ping")

        async def released() -> bool:
            return services(app).watchers.watched_jobs == 0

        await wait_for(released)


async def test_open_streams_are_capped_per_client_and_per_owner(
    settings: Settings, store: ObjectStore
) -> None:
    import websockets

    capped = settings.model_copy(update={"streams_per_client": 2, "streams_per_owner": 3})
    async with serve(capped) as (client, _):
        job_id = (await initiate(client, [10_001]))["jobId"]  # no worker: it stays queued
        path = f"/v1/download/subscribe/{job_id}"
        async with client.stream("GET", path) as first, client.stream("GET", path) as second:
            assert first.status_code == second.status_code == 200
            refused = await client.get(path)
            assert refused.status_code == 429 and refused.json()["error"] == "too_many_streams"
            assert int(refused.headers["retry-after"]) > 0
            async with websockets.connect(socket_url(client, job_id)) as socket:
                with pytest.raises(websockets.ConnectionClosed):
                    await socket.recv()
                assert socket.close_code == 1013
        # Both streams closed: their slots are free again.
        async with client.stream("GET", path) as again:
            assert again.status_code == 200


async def test_open_streams_are_capped_per_owner(settings: Settings, store: ObjectStore) -> None:
    capped = settings.model_copy(
        update={"streams_per_owner": 1, "auth_api_keys": "a-key=alice,b-key=bob"}
    )
    alice, bob = {"X-API-Key": "a-key"}, {"X-API-Key": "b-key"}
    async with serve(capped) as (client, _):
        mine_id = (await initiate(client, [10_001], headers=alice))["jobId"]
        theirs_id = (await initiate(client, [10_001], headers=bob))["jobId"]
        mine = f"/v1/download/subscribe/{mine_id}"
        theirs = f"/v1/download/subscribe/{theirs_id}"
        async with client.stream("GET", mine, headers=alice) as open_one:
            assert open_one.status_code == 200
            assert (await client.get(mine, headers=alice)).status_code == 429
            async with client.stream("GET", theirs, headers=bob) as others:
                assert others.status_code == 200


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
            watching = services(app).watchers

            async def one_watcher() -> bool:
                return watching.watched_jobs == 1

            await wait_for(one_watcher)
            messages, code = await receive_all(socket)
            sse_sent = await read_events(sse)

        assert code == NORMAL
        assert all(set(m) == {"id", "event", "data"} for m in messages)
        kinds = [m["event"] for m in messages]
        assert kinds[-1] == "completed" and set(kinds[:-1]) <= {"progress"}
        keys = [parse_event_id(m["id"]) for m in messages]
        assert None not in keys and keys == sorted(keys)  # type: ignore[type-var]
        # The terminal event is the very one SSE subscribers got: same id, same data.
        assert messages[-1]["id"] == sse_sent[-1]["id"]
        assert messages[-1]["data"] == sse_sent[-1]["data"]
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


async def test_progress_events_carry_the_files_that_changed(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 700)
    put_sources(store, settings, {10_001 + i: MIB for i in range(3)})
    ids = [10_009, 10_001, 10_002, 10_003]  # 10_009 is missing
    async with serve(slow) as (client, _), build_worker(env.client, slow, store):
        job_id = (await initiate(client, ids))["jobId"]
        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
            events, resumed = [], []
            async for event in sse_events(resp):
                events.append(event)
                if len(events) == 2 and event["event"] == "progress":
                    # A stream resumed mid-job starts again with every file.
                    headers = {"Last-Event-ID": events[0]["id"]}
                    async with client.stream(
                        "GET", f"/v1/download/subscribe/{job_id}", headers=headers
                    ) as again:
                        async for later in sse_events(again):
                            resumed.append(later)
                            break

    progress = [e["data"] for e in events if e["event"] == "progress"]
    assert events[-1]["event"] == "completed" and len(progress) >= 3
    assert [f["file_id"] for f in progress[0]["changedFiles"]] == ids
    files: dict[int, str] = {}
    missing_failed_early = False
    for data in progress:
        changed = {f["file_id"]: f["status"] for f in data["changedFiles"]}
        # Bytes may move with no file changing state: such an event carries no file.
        assert set(changed) <= set(ids)
        assert all(files.get(i) != status for i, status in changed.items())  # real changes only
        files.update(changed)
        # What the changes add up to is what the event counts.
        assert sum(s == "completed" for s in files.values()) == data["completedFiles"]
        assert sum(s == "failed" for s in files.values()) == data["failedFiles"]
        if files[10_009] == "failed" and data["completedFiles"] < 3:
            missing_failed_early = True
    # The missing id is failed as soon as packaging knows it, not only at the end.
    assert missing_failed_early
    assert resumed and resumed[0]["event"] == "progress"
    assert parse_event_id(resumed[0]["id"]) > parse_event_id(events[0]["id"])  # type: ignore[operator]
    assert [f["file_id"] for f in resumed[0]["data"]["changedFiles"]] == ids
