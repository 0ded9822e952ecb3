"""The progress bus (`core.bus`) on a real nats-server, with the real Temporal and S3 servers:
workers publish and heartbeat Temporal only for durability, the API's watchers stream from the
bus without asking Temporal per update, fall back to polling when it goes away and return to it
when it is back; nothing crosses owners; publishing never waits."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from temporalio.testing import WorkflowEnvironment

from activities import publishing
from activities.packaging import DownloadActivities
from activities.publishing import heartbeat_seconds
from api import watchers
from api.views import JobRecord, SignedRecords, job_view
from api.watchers import parse_event_id
from core import bus
from core.bus import Bus, Publisher, Subscriptions, job_subject
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import NatsServer, free_port
from tests.helpers import (
    activity_env,
    initiate,
    put_sources,
    sealed_input,
    serve,
    services,
    slow_origin,
    sse_events,
    wait_for,
    with_keys,
)
from worker import build_worker
from workflows.models import JobState, JobStatus, PackageProgress, ProgressNotice

NATS_USER, NATS_PASSWORD = "downloads", "test-bus-password-0123456789abcdef"
TERMINAL = {"completed", "failed", "cancelled"}


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer(free_port(), NATS_USER, NATS_PASSWORD)
    server.start()
    yield server
    server.stop()


def on_bus(settings: Settings, server: NatsServer) -> Settings:
    return settings.model_copy(
        update={"nats_url": server.url, "nats_user": NATS_USER, "nats_password": NATS_PASSWORD}
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def describes() -> float:
    return metric("download_status_describes_total")


def close_waits() -> float:
    return metric("download_status_close_waits_total")


def received() -> float:
    return metric("download_bus_received_total")


async def connected(side: Bus | Publisher | Any) -> None:
    """Until `side` (a publisher, or the bus of an app's watchers) is connected."""

    async def up() -> bool:
        return bool(side.connected)

    await wait_for(up)


@contextlib.asynccontextmanager
async def notices_of(settings: Settings, job_id: str) -> AsyncIterator[list[ProgressNotice]]:
    """The job's progress messages as they arrive, heard by a listener of its own."""
    notices: list[ProgressNotice] = []
    listener = Subscriptions(Bus(settings, "listener"))
    listener.start()
    listener.add(
        job_subject(settings.nats_subject_prefix, job_id),
        lambda data: notices.append(ProgressNotice.model_validate_json(data)),
    )
    try:
        await connected(listener)
        yield notices
    finally:
        await listener.close()


async def until_ended(notices: list[ProgressNotice]) -> None:
    async def last_one() -> bool:
        return bool(notices) and notices[-1].ended

    await wait_for(last_one)


async def bus_connected(app: Any) -> None:
    bus = services(app).watchers.bus
    assert bus is not None
    await connected(bus)


async def test_stream_follows_the_bus_without_a_describe_per_update(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    live = slow_origin(on_bus(settings, nats_server), 300)
    ids = [10_001 + i for i in range(8)]
    put_sources(store, live, dict.fromkeys(ids, 200_000))
    async with serve(live) as (client, app), build_worker(env.client, live, store):
        await bus_connected(app)
        job_id = (await initiate(client, ids))["jobId"]
        updates: list[dict[str, Any]] = []
        asked: list[float] = []
        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
            assert resp.status_code == 200
            async for event in sse_events(resp):
                if event["data"]["status"] == "processing":
                    if not updates:
                        asked.append(describes())
                    updates.append(event)
                elif event["event"] in TERMINAL:
                    asked.append(describes())
                    final = event
        assert final["event"] == "completed"
        assert [f["status"] for f in final["data"]["files"]] == ["completed"] * len(ids)
        # Every file's step was streamed, from bus messages, and the end came from one long
        # poll of the run's history: no `describe()` after the first update (one at most, in
        # flight when the bus spoke first), not one per update.
        assert len(updates) >= len(ids)
        assert asked[1] - asked[0] <= 1
        keys = [parse_event_id(e["id"]) for e in [*updates, final]]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # type: ignore[type-var]
        # Status polls share the live record while it is fresh.
        assert services(app).reads.snapshots.fetches <= asked[1] + 2


@contextlib.asynccontextmanager
async def two_replicas(
    env: WorkflowEnvironment, live: Settings, store: ObjectStore
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """Two API replicas on the bus, and a worker: a client for each replica."""
    async with (
        serve(live) as (first, app1),
        serve(live) as (second, app2),
        build_worker(env.client, live, store),
    ):
        await bus_connected(app1)
        await bus_connected(app2)
        yield first, second


async def test_two_replicas_streaming_a_job_ask_temporal_for_its_end_once(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    live = slow_origin(on_bus(settings, nats_server), 200)
    ids = [10_001 + i for i in range(4)]
    put_sources(store, live, dict.fromkeys(ids, 50_000))
    async with two_replicas(env, live, store) as (first, second):
        job_ids = [(await initiate(first, ids))["jobId"] for _ in range(3)]
        waits, asked = close_waits(), describes()

        async def follow(client: Any, job_id: str) -> dict[str, Any]:
            async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
                assert resp.status_code == 200
                async for event in sse_events(resp):
                    if event["event"] in TERMINAL:
                        return event
            raise AssertionError("the stream ended without the job's terminal event")

        finals = await asyncio.gather(*(follow(c, j) for j in job_ids for c in (first, second)))
        assert [f["event"] for f in finals] == ["completed"] * 6
        assert {f["data"]["jobId"] for f in finals} == set(job_ids)
        # Both replicas showed each job's end; one of them asked Temporal for it, with one
        # long poll of the run's history, and signed what it read over to the other.
        assert close_waits() - waits == len(job_ids)
        assert describes() - asked <= 2 * len(job_ids)  # the streams' first reads


def a_record(status: JobStatus) -> JobRecord:
    """Job `job-1` of alice, in run `run-1`."""
    state = JobState(
        job_id="job-1",
        owner="alice",
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
        status=status,
    )
    return JobRecord(
        state=state,
        view=job_view(state, None),
        run_started=datetime(2026, 1, 1, tzinfo=UTC),
        run_id="run-1",
    )


def test_a_record_from_the_bus_is_taken_only_when_signed_with_the_seal_key() -> None:
    record = a_record(JobStatus.completed)
    ours, theirs = SignedRecords(b"seal key"), SignedRecords(b"another key")
    signed = ours.sign(record)
    assert ours.open(signed, "job-1") == record
    assert ours.open(signed, "job-2") is None  # another job's subject
    assert ours.open(theirs.sign(record), "job-1") is None
    mac, _, body = signed.partition(b".")
    assert ours.open(mac + b"." + body.replace(b"alice", b"mallo"), "job-1") is None


def test_a_claim_from_the_bus_holds_a_read_back_only_when_signed_and_kept() -> None:
    """A replica's claim that it is reading a job counts only signed with the seal key and for
    that job; one left without its read is not heeded until a read is taken again."""
    ours, theirs = SignedRecords(b"seal key"), SignedRecords(b"another key")
    claim = ours.claim("job-1", "replica-a")
    assert ours.claimant(claim, "job-1") == "replica-a"
    assert ours.claimant(claim, "job-2") is None  # another job's subject
    assert ours.claimant(theirs.claim("job-1", "replica-a"), "job-1") is None
    assert ours.claimant(claim.replace(b"replica-a", b"replica-b"), "job-1") is None
    assert ours.claimant(ours.sign(a_record(JobStatus.queued)), "job-1") is None
    assert ours.open(claim, "job-1") is None  # nor is a claim a record

    record = a_record(JobStatus.queued)
    watch = watchers._Watch(record=record, latest=watchers.snapshot(record, record.view))
    watch.hear_claim()
    assert 0 < watch.held() <= watchers.CLAIM_SECONDS
    assert watch.claimed is not None
    watch.claimed -= watchers.CLAIM_SECONDS  # no read came
    assert watch.held() == 0
    watch.hear_claim()
    assert watch.held() == 0  # not heeded now
    watch.offer_read(record)
    assert watch.take_read() == record
    watch.hear_claim()
    assert watch.held() > 0  # heeded again
    watch.wake()
    assert watch.held() == 0  # woken (a cancel): read afresh


def test_the_pick_to_read_a_runs_close_holds_until_another_attempt_publishes() -> None:
    """The bus picks the replica that reads a run's close on a subject of its own, which may be
    delivered before the last progress messages of the attempt that ended: those keep the pick
    (else no replica reads the close, and each waits END_WAIT_SECONDS); a retry drops it."""
    record = a_record(JobStatus.processing)
    watch = watchers._Watch(record=record, latest=watchers.snapshot(record, record.view))

    def notice(attempt: int, *, run_id: str = "run-1", ended: bool = False) -> ProgressNotice:
        return ProgressNotice(job_id="job-1", run_id=run_id, attempt=attempt, ended=ended)

    watch.elect("job-2", notice(1, ended=True).model_dump_json().encode())
    assert not watch.elected  # another job's end
    watch.elect("job-1", notice(1, ended=True).model_dump_json().encode())
    assert watch.elected
    watch.follow_attempt(notice(1))  # the same attempt, delivered late
    assert watch.elected
    watch.follow_attempt(notice(2))  # its retry
    assert not watch.elected
    watch.elect("job-1", notice(2, ended=True).model_dump_json().encode())
    watch.follow_attempt(notice(2, run_id="run-2"))  # a run of its own (the job retried)
    assert not watch.elected


async def test_stream_falls_back_to_polling_while_the_bus_is_down(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    live = slow_origin(on_bus(settings, nats_server), 400)
    ids = [10_001 + i for i in range(30)]
    put_sources(store, live, dict.fromkeys(ids, 50_000))
    async with serve(live) as (client, app), build_worker(env.client, live, store):
        await bus_connected(app)
        bus = services(app).watchers.bus
        assert bus is not None
        job_id = (await initiate(client, ids))["jobId"]
        phases: dict[str, list[dict[str, Any]]] = {"bus": [], "down": [], "back": []}
        phase, marks = "bus", {"bus": (describes(), received())}

        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as resp:
            async for event in sse_events(resp):
                if event["event"] in TERMINAL:
                    final = event
                    continue
                if event["data"]["status"] != "processing":
                    continue
                phases[phase].append(event)
                if phase == "bus" and len(phases["bus"]) >= 4 and received() > 0:
                    nats_server.stop()
                    phase, marks["down"] = "down", (describes(), received())
                elif phase == "down" and len(phases["down"]) >= 4 and not bus.connected:
                    nats_server.start()
                    await connected(bus)
                    phase, marks["back"] = "back", (describes(), received())
                elif phase == "back" and received() > marks["back"][1] + 4:
                    marks["end"] = (describes(), received())
        assert final["event"] == "completed"
        assert all(len(events) >= 4 for events in phases.values()), {
            k: len(v) for k, v in phases.items()
        }
        # Down: the stream went on by polling Temporal, each update from a describe().
        assert marks["back"][0] - marks["down"][0] >= len(phases["down"]) - 1
        # Back: the bus carries the job again.
        assert "end" in marks, "no bus messages after the bus came back"
        keys = [parse_event_id(e["id"]) for p in phases.values() for e in p]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)  # type: ignore[type-var]


async def test_an_event_for_another_owners_job_is_never_delivered(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    live = slow_origin(with_keys(on_bus(settings, nats_server), a="alice", b="bob"), 300)
    ids = [10_001 + i for i in range(6)]
    put_sources(store, live, dict.fromkeys(ids, 100_000))
    alice, bob = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}
    async with serve(live) as (client, app), build_worker(env.client, live, store):
        await bus_connected(app)
        alices = (await initiate(client, ids, headers=alice))["jobId"]
        bobs = (await initiate(client, ids, headers=bob))["jobId"]
        # Ownership is checked on subscribe, as without the bus.
        resp = await client.get(f"/v1/download/subscribe/{alices}", headers=bob)
        assert resp.status_code == 404

        # A message about Alice's job on the subject of Bob's (anyone who can publish on the
        # bus could send it) is not Bob's job's progress.
        forger = Publisher(Bus(live, "forger"))
        forger.start()
        forged = ProgressNotice(job_id=alices, files_done=1, bytes_done=123_456_789)
        seen: list[dict[str, Any]] = []
        try:
            await connected(forger)
            async with client.stream(
                "GET", f"/v1/download/subscribe/{bobs}", headers=bob
            ) as stream:
                async for event in sse_events(stream):
                    seen.append(event)
                    if event["data"]["status"] == "processing":
                        subject = job_subject(live.nats_subject_prefix, bobs)
                        forger.offer(subject, forged.model_dump_json().encode())
        finally:
            await forger.close()
        assert seen[-1]["event"] == "completed"
        assert {e["data"]["jobId"] for e in seen} == {bobs}
        assert all(e["data"]["bytesProcessed"] != 123_456_789 for e in seen)


async def test_publishing_never_waits_for_an_absent_bus(settings: Settings) -> None:
    """A publisher whose server is not there drops at once, without waiting or raising."""
    absent = settings.model_copy(update={"nats_url": f"nats://127.0.0.1:{free_port()}"})
    sender = Publisher(Bus(absent, "absent"))
    sender.start()
    try:
        dropped = metric("download_bus_published_total", outcome="dropped")
        for i in range(1000):  # `offer` is no coroutine: it cannot wait
            sender.offer(job_subject(absent.nats_subject_prefix, f"job-{i}"), b"{}")
        assert metric("download_bus_published_total", outcome="dropped") == dropped + 1000
        assert not sender.connected
    finally:
        await sender.close()


async def test_an_attempt_publishes_its_progress_and_heartbeats_for_durability(
    settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    """On the bus: every move published, `ended` last, and Temporal heartbeats at the durable
    pace (a quarter of the heartbeat timeout here); off the bus, at the old pace again."""
    live = slow_origin(on_bus(settings, nats_server), 250)
    sizes = {10_001 + i: 20_000 for i in range(8)}
    put_sources(store, live, sizes)
    request = sealed_input(live, "bus-job", list(sizes), datetime(2024, 5, 1, tzinfo=UTC))
    env = activity_env("bus-job")
    env.info = dataclasses.replace(env.info, heartbeat_timeout=timedelta(seconds=4))
    beats: list[PackageProgress] = []
    env.on_heartbeat = lambda *d: beats.append(d[0])
    async with (
        notices_of(live, "bus-job") as notices,
        bus.publisher(live, "worker") as publisher,
    ):
        assert publisher is not None
        await connected(publisher)
        assert env.run(heartbeat_seconds, publisher, live) == 1.0  # 4 s / 4
        result = await env.run(DownloadActivities(store, live, publisher).package_archive, request)
        await until_ended(notices)
        nats_server.stop()

        async def down() -> bool:
            return not publisher.connected

        await wait_for(down)
        interval = env.run(heartbeat_seconds, publisher, live)
        assert interval == live.heartbeat_interval_seconds
    assert result.files_packaged == len(sizes)
    done = [n.files_done for n in notices]
    assert done == sorted(done) and set(range(1, len(sizes) + 1)) <= set(done)
    assert notices[-1].ended and notices[-1].job_id == "bus-job"
    assert not any(n.ended for n in notices[:-1])
    # Progress went over the bus; Temporal heard from the attempt far less often.
    assert len(beats) < len(notices) / 2


async def test_an_attempt_publishes_each_file_it_begins_at_once(
    settings: Settings,
    store: ObjectStore,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A file begun (the one before it done) is on the bus when it happens, not at the feed's
    next look: with looks seconds apart, every file still shows as the one in work."""
    monkeypatch.setattr(publishing, "LOOK_SECONDS", 5.0)
    live = slow_origin(on_bus(settings, nats_server), 200).model_copy(
        update={"progress_publish_seconds": 0.05}
    )
    ids = [10_001 + i for i in range(6)]
    put_sources(store, live, dict.fromkeys(ids, 5_000))
    request = sealed_input(live, "begun-job", ids, datetime(2024, 5, 1, tzinfo=UTC))
    async with (
        notices_of(live, "begun-job") as notices,
        bus.publisher(live, "worker") as publisher,
    ):
        assert publisher is not None
        await connected(publisher)
        await activity_env("begun-job").run(
            DownloadActivities(store, live, publisher).package_archive, request
        )
        await until_ended(notices)
    shown = {(n.files_done, n.current_file) for n in notices if not n.ended}
    # The first file begins as the attempt's first notice goes out: within the publish spacing.
    assert {(i, ids[i]) for i in range(1, len(ids))} <= shown


async def test_a_cancel_reaches_an_attempt_on_the_bus_at_once(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    """On the bus an attempt heartbeats every few seconds; cancelling asks it to hurry, so the
    cancel route's answer (it waits up to 3 s for the job to end) says it is cancelled."""
    durable = on_bus(settings, nats_server).model_copy(update={"heartbeat_timeout_seconds": 30})
    live = slow_origin(durable, 1500)
    ids = [10_001 + i for i in range(6)]
    put_sources(store, live, dict.fromkeys(ids, 10_000))
    async with serve(live) as (client, app), build_worker(env.client, live, store):
        await bus_connected(app)
        job_id = (await initiate(client, ids))["jobId"]
        async with client.stream("GET", f"/v1/download/subscribe/{job_id}") as stream:
            events = sse_events(stream)
            # The stream's watcher hears the worker's messages: the attempt is on the bus.
            before = received()
            async for event in events:
                if event["data"]["status"] == "processing" and received() > before:
                    break
            resp = await client.delete(f"/v1/download/{job_id}")
            assert resp.status_code == 200
            assert resp.json()["status"] == "cancelled"
            assert [e["event"] async for e in events][-1] == "cancelled"


async def test_a_queued_job_is_asked_rarely_on_the_bus_and_its_cancel_shows_at_once(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> None:
    """While the bus is up a queued job's watcher waits for its attempt to announce itself
    instead of polling Temporal; a cancel (on any replica) wakes it."""
    one_slot = on_bus(settings, nats_server).model_copy(
        update={"worker_max_concurrent_activities": 1}
    )
    live = slow_origin(one_slot, 400)
    ids = [10_001 + i for i in range(20)]
    put_sources(store, live, dict.fromkeys(ids, 10_000))
    async with two_replicas(env, live, store) as (client, other):
        running = (await initiate(client, ids))["jobId"]
        async with client.stream("GET", f"/v1/download/subscribe/{running}") as stream:
            async for event in sse_events(stream):
                if event["data"]["status"] == "processing":
                    break
        queued = (await initiate(client, ids[:2]))["jobId"]
        async with other.stream("GET", f"/v1/download/subscribe/{queued}") as stream:
            events = sse_events(stream)
            assert (await anext(events))["data"]["status"] == "queued"
            asked = describes()
            await asyncio.sleep(2)
            # Queued: not asked again meanwhile (polling would have asked 3 times).
            assert describes() - asked == 0
            resp = await client.delete(f"/v1/download/{queued}")
            assert resp.status_code == 200
            # Cancelled through the first replica, shown by the second one's stream at once,
            # not when its next poll of the queued job would come (30 s).
            async with asyncio.timeout(10):
                assert [e["event"] async for e in events][-1] == "cancelled"


@contextlib.asynccontextmanager
async def queued_on_two_replicas(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> AsyncIterator[tuple[list[Any], list[contextlib.AsyncExitStack]]]:
    """A job that stays queued (no worker), streamed by two API replicas on the bus: each
    replica's job reads (its snapshot cache's `fetches` are its reads of Temporal) and its
    stream. The job's run is terminated after."""
    live = on_bus(settings, nats_server)
    ids = [10_001, 10_002]
    put_sources(store, live, dict.fromkeys(ids, 1_000))
    async with serve(live) as (first, app1), serve(live) as (second, app2):
        await bus_connected(app1)
        await bus_connected(app2)
        job_id = (await initiate(first, ids))["jobId"]
        reads = [services(app).reads for app in (app1, app2)]
        streams = [contextlib.AsyncExitStack() for _ in reads]
        events = []  # held open: a stream's reader dropped closes its connection
        try:
            for client, held in zip((first, second), streams, strict=True):
                url = f"/v1/download/subscribe/{job_id}"
                events.append(sse_events(await held.enter_async_context(client.stream("GET", url))))
                assert (await anext(events[-1]))["data"]["status"] == "queued"
            yield reads, streams
        finally:
            for held in streams:
                await held.aclose()
            await env.client.get_workflow_handle(job_id).terminate("test over")


QueuedTwice = Callable[[], contextlib.AbstractAsyncContextManager[tuple[list[Any], list[Any]]]]


@pytest.fixture
def queued_twice(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, nats_server: NatsServer
) -> QueuedTwice:
    """`queued_on_two_replicas`, entered by the test once it has set what it needs."""
    return functools.partial(queued_on_two_replicas, env, settings, store, nats_server)


async def test_replicas_streaming_a_queued_job_read_it_once_for_all(
    queued_twice: QueuedTwice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A queued job is still read now and then, in case its worker is off the bus. Replicas
    streaming it take one replica's reads, signed over the bus, for their own: one of them
    reads, not each; when that one stops streaming the job, another takes over."""
    monkeypatch.setattr(watchers, "BUS_IDLE_MAX_SECONDS", 0.3)
    # Staggered by up to half the period here (3 s of 30 in production).
    monkeypatch.setattr(watchers, "BACKSTOP_STAGGER", 0.5)
    async with queued_twice() as (reads, streams):
        before = [r.snapshots.fetches for r in reads]
        await asyncio.sleep(3)
        made = [r.snapshots.fetches - b for r, b in zip(reads, before, strict=True)]
        # At each backstop instant (every 0.3 s) by one replica; each reading on its own
        # would make twice as many.
        assert max(made) >= 5
        assert min(made) <= 2
        reader = made.index(max(made))
        await streams[reader].aclose()
        other = reads[1 - reader].snapshots
        taken = other.fetches
        await asyncio.sleep(3.5)
        # The other one, alone on the job now, reads it for itself: within 1.5 s (four
        # times its wait), then every 0.3 s.
        assert other.fetches - taken >= 3


async def test_a_replica_waits_for_the_read_another_one_is_making(
    queued_twice: QueuedTwice, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded Temporal answers a read in tenths of a second, longer than the replicas' turns
    for a job are apart: a replica that says on the bus that it is reading the job keeps the
    other one from reading it too, which takes the read once it comes."""
    monkeypatch.setattr(watchers, "BUS_IDLE_MAX_SECONDS", 1.0)
    monkeypatch.setattr(watchers, "BACKSTOP_STAGGER", 0.2)  # turns at most 0.2 s apart
    async with queued_twice() as (reads, _):
        for replica in reads:
            monkeypatch.setattr(replica, "describe", slowed(replica.describe, 0.6))
        before = [r.snapshots.fetches for r in reads]
        await asyncio.sleep(6)
        made = [r.snapshots.fetches - b for r, b in zip(reads, before, strict=True)]
        # One read a second, by one replica: the other one's turns came while that one's
        # read was on its way, and it took the read instead.
        assert max(made) >= 3
        assert min(made) == 0


def slowed(describe: Any, seconds: float) -> Any:
    """`describe`, answering `seconds` later (as a loaded Temporal would)."""

    async def slow(*args: Any) -> Any:
        await asyncio.sleep(seconds)
        return await describe(*args)

    return slow
