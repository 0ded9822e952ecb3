"""The API's read-path caches: shared snapshots, bounded completed states, reused links."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.testing import WorkflowEnvironment

from api.caches import CompletedStates, PresignedLinks, Snapshots
from api.jobs.commands import JobCommands
from api.jobs.reads import SNAPSHOT_MAX_AGE, JobReads
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import initiate, put_sources, serve, slow_origin, wait_for
from worker import build_worker
from workflows.models import FileState, JobState, JobStatus


async def test_concurrent_readers_share_one_fetch_and_its_answer() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def fetch(key: str) -> str:
        calls.append(key)
        await release.wait()
        return f"{key}@{len(calls)}"

    snapshots = Snapshots(fetch, max_age=0.2)
    readers = [asyncio.create_task(snapshots.get("a")) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert set(await asyncio.gather(*readers)) == {"a@1"}
    assert await snapshots.get("a") == "a@1"  # still fresh
    await asyncio.sleep(0.25)
    assert await snapshots.get("a") == "a@2"  # too old: asked again
    snapshots.forget("a")
    assert await snapshots.get("a") == "a@3"  # after a write: asked again at once


async def test_a_reader_giving_up_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def fetch(key: str) -> str:
        await release.wait()
        return key

    snapshots = Snapshots(fetch, max_age=1)
    impatient = asyncio.create_task(snapshots.get("a"))
    patient = asyncio.create_task(snapshots.get("a"))
    await asyncio.sleep(0)
    impatient.cancel()
    release.set()
    assert await patient == "a"


async def test_failures_reach_every_waiting_reader_and_are_not_kept() -> None:
    attempts = 0

    async def fetch(key: str) -> str:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise LookupError(key)
        return key

    snapshots = Snapshots(fetch, max_age=1)
    results = await asyncio.gather(*(snapshots.get("a") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, LookupError) for r in results)
    assert await snapshots.get("a") == "a" and attempts == 2


def _state(job: str, files: int) -> JobState:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return JobState(
        job_id=job,
        files=[FileState(file_id=10_000 + i, size=i) for i in range(files)],
        created_at=now,
        updated_at=now,
    )


def test_completed_states_are_bounded_in_bytes() -> None:
    one = len(_state("j0", 200).model_dump_json())
    cache = CompletedStates(max_bytes=3 * one + 10)
    for i in range(5):
        cache.put(f"j{i}", None, _state(f"j{i}", 200))
    assert len(cache) == 3 and cache.bytes <= cache.max_bytes
    assert cache.get("j0", None) is None and cache.get("j4", None) is not None
    cache.get("j2", None)  # read: kept over j3
    cache.put("j5", None, _state("j5", 200))
    assert cache.get("j2", None) is not None and cache.get("j3", None) is None
    # A state larger than the whole budget is not kept at all.
    cache.put("huge", None, _state("huge", 5000))
    assert cache.get("huge", None) is None and cache.bytes <= cache.max_bytes


def test_presigned_links_are_reused_briefly(plain_settings: Settings) -> None:
    links = PresignedLinks(ObjectStore(plain_settings), timedelta(seconds=600))
    url, expires = links.get("downloads/10001.zip", "10001.zip")
    assert links.get("downloads/10001.zip", "10001.zip") == (url, expires)
    assert links.get("downloads/10002.zip", "10002.zip")[0] != url
    assert links.reuse == 60
    assert timedelta(seconds=590) < expires - datetime.now(UTC) <= timedelta(seconds=600)


async def test_status_readers_of_one_job_share_one_describe(
    settings: Settings, store: ObjectStore
) -> None:
    async with serve(settings) as (client, app):
        job_id = (await initiate(client, [10_001]))["jobId"]
        jobs: JobReads = app.state.services.reads
        await asyncio.sleep(0.3)  # the snapshot taken at start has expired
        before = jobs.snapshots.fetches

        async def status() -> Any:
            return (await client.get(f"/v1/download/status/{job_id}")).json()

        answers = await asyncio.gather(*(status() for _ in range(40)))
        assert {a["jobId"] for a in answers} == {job_id}
        # 40 readers within a quarter of a second: at most a couple of Temporal calls.
        assert 1 <= jobs.snapshots.fetches - before <= 3


async def test_a_shared_snapshot_still_answers_only_its_owner(
    settings: Settings, store: ObjectStore
) -> None:
    keyed = settings.model_copy(update={"auth_api_keys": "a-key=alice,b-key=bob"})
    async with serve(keyed) as (client, _):
        alice, bob = {"X-API-Key": "a-key"}, {"X-API-Key": "b-key"}
        job_id = (await initiate(client, [10_001], headers=alice))["jobId"]
        path = f"/v1/download/status/{job_id}"
        assert (await client.get(path, headers=alice)).status_code == 200
        assert (await client.get(path, headers=bob)).status_code == 404


async def test_cancel_answers_from_a_fresh_read(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 5000)
    put_sources(store, settings, {10_001: 10})
    async with serve(slow) as (client, _), build_worker(env.client, slow, store):
        job_id = (await initiate(client, [10_001]))["jobId"]
        path = f"/v1/download/status/{job_id}"

        async def processing() -> bool:
            return bool((await client.get(path)).json()["status"] == "processing")

        # The last read left a fresh snapshot of the running job; cancel within its lifetime.
        await wait_for(processing)
        cancelled = await client.delete(path.replace("/status", ""))
        assert cancelled.json()["status"] == "cancelled"
        assert (await client.get(path)).json()["status"] == "cancelled"


async def test_reads_name_the_open_run_and_find_a_retry_made_elsewhere(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """Once a job's run is seen open, it is described by its run id; when another replica has
    cancelled and retried the job meanwhile, the new run is found, not the closed one."""
    slow = slow_origin(settings, 60_000)
    put_sources(store, settings, {10_001: 10})
    here = JobReads(env.client, slow, store)
    elsewhere = JobReads(env.client, slow, store)
    commands_here = JobCommands(env.client, slow, here)
    commands_elsewhere = JobCommands(env.client, slow, elsewhere)
    owner = "anonymous"
    async with build_worker(env.client, slow, store):
        started = await commands_here.start(
            owner=owner, file_ids=[10_001], callback_url=None, request_id=None, idempotency_key=None
        )
        job_id = started.view.job_id
        first = await here.describe(job_id, owner)
        first_run = here.open_runs[job_id]

        async def processing_elsewhere() -> bool:
            record = await elsewhere.describe(job_id, owner)
            return record.view.status is JobStatus.processing

        await wait_for(processing_elsewhere)
        await commands_elsewhere.cancel(job_id, owner)
        await commands_elsewhere.retry(job_id, owner)
        await asyncio.sleep(SNAPSHOT_MAX_AGE + 0.05)
        again = await here.describe(job_id, owner)
        assert again.view.status in (JobStatus.queued, JobStatus.processing)
        assert again.run_started > first.run_started
        assert here.open_runs[job_id] not in (None, first_run)
        await commands_elsewhere.cancel(job_id, owner)
