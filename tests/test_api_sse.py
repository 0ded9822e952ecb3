"""Server-Sent Events through a real uvicorn server (streams cannot be buffered like the others)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, cast

import pytest
from fastapi import FastAPI
from temporalio.testing import WorkflowEnvironment

from api.jobs.reads import JobReads
from api.watchers import JobWatchers, parse_event_id
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import (
    initiate,
    put_sources,
    read_events,
    serve,
    slow_origin,
    socket_url,
    wait_for,
)
from worker import build_worker

TERMINAL = {"completed", "failed", "cancelled"}
MIB = 1024 * 1024


def watchers(app: FastAPI) -> JobWatchers:
    found: JobWatchers = app.state.services.watchers
    return found


def jobs(app: FastAPI) -> JobReads:
    found: JobReads = app.state.services.reads
    return found


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


async def test_subscribers_share_one_watcher(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    describes = 0
    put_sources(store, settings, {10_001: 1000})
    async with serve(settings) as (client, app):
        describe = jobs(app).describe

        async def counting(*args: Any) -> Any:
            nonlocal describes
            describes += 1
            return await describe(*args)

        monkeypatch.setattr(jobs(app), "describe", counting)
        job_id = (await initiate(client, [10_001]))["jobId"]

        async def subscriber(ready: asyncio.Future[Any]) -> list[Any]:
            events: list[Any] = []
            async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:"):
                        event = json.loads(line.removeprefix("data:"))
                        events.append(event)
                        if not ready.done():
                            ready.set_result(event)
            return events

        loop = asyncio.get_running_loop()
        first_events = [loop.create_future() for _ in range(5)]
        streams = [asyncio.create_task(subscriber(f)) for f in first_events]
        firsts = await asyncio.wait_for(asyncio.gather(*first_events), 20)
        assert {e["status"] for e in firsts} == {"queued"}  # no worker yet

        async def five_share_one() -> bool:
            watches = watchers(app)._watches
            return len(watches) == 1 and watches[job_id].subscribers == 5

        await wait_for(five_share_one)
        before = describes
        await asyncio.sleep(1.0)
        # One poll every 0.25 s for the job, not one per subscriber (5 would make ~20).
        assert 0 < describes - before <= 6

        async with build_worker(env.client, settings, store):
            results = await asyncio.wait_for(asyncio.gather(*streams), 60)
        for events in results:
            assert events[-1]["status"] == "completed"

        async def released() -> bool:
            return watchers(app).watched_jobs == 0

        await wait_for(released)


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
        watchers(app).ping_seconds = 0.3
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
            return watchers(app).watched_jobs == 0

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


async def test_watchers_ask_temporal_within_their_budget(
    settings: Settings, store: ObjectStore
) -> None:
    frugal = settings.model_copy(update={"stream_polls_per_second": 4.0})
    async with serve(frugal) as (client, app):
        job_ids = [(await initiate(client, [10_001]))["jobId"] for _ in range(10)]
        streams = [client.stream("GET", f"/v1/download/subscribe/{j}") for j in job_ids]
        opened = [await s.__aenter__() for s in streams]
        try:
            assert {r.status_code for r in opened} == {200}
            before = jobs(app).snapshots.fetches
            await asyncio.sleep(3)
            # Ten watched jobs would ask ~40 times in 3 s on their own; the budget allows ~16.
            assert 0 < jobs(app).snapshots.fetches - before <= 4 * 3 + 4
        finally:
            for s in streams:
                await s.__aexit__(None, None, None)


@pytest.mark.parametrize("budget", [0.5, 4.0, 300.0])
async def test_the_budget_never_comes_in_one_burst(budget: float) -> None:
    """A full bucket lets through a tenth of a second's worth (at least one call), not a second's:
    a thousand watchers waking together do not hit Temporal all at once."""
    watchers = JobWatchers(cast(JobReads, None), budget=budget)
    at_once = 0
    while watchers.budget.has_capacity():
        await watchers.budget.acquire()
        at_once += 1
    assert at_once == max(1, int(budget / 10))
    began, calls = time.monotonic(), 0
    while time.monotonic() - began < 1.0:
        await watchers.budget.acquire()
        calls += 1
    # Within the budget over the second that followed (a call may land right at its end).
    assert calls <= budget * (time.monotonic() - began) + 1


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
