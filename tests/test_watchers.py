"""Job watchers (`api/watchers.py`): one per job whatever the number of streams, and a budget of
Temporal calls shared by all of them."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from api.jobs.reads import JobReads
from api.schemas import FileView, JobView
from api.views import JobRecord, PendingActivity, job_view
from api.watchers import JobWatchers, Snapshot, changed_files, for_stream, snapshot
from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import initiate, put_sources, serve, services, wait_for
from worker import build_worker
from workflows import names
from workflows.models import FileState, FileStatus, JobState, JobStatus, PackageProgress


async def test_subscribers_share_one_watcher(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    describes = 0
    put_sources(store, settings, {10_001: 1000})
    async with serve(settings) as (client, app):
        describe = services(app).reads.describe

        async def counting(*args: Any) -> Any:
            nonlocal describes
            describes += 1
            return await describe(*args)

        monkeypatch.setattr(services(app).reads, "describe", counting)
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
            watches = services(app).watchers._watches
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
            return services(app).watchers.watched_jobs == 0

        await wait_for(released)


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
            before = services(app).reads.snapshots.fetches
            await asyncio.sleep(3)
            # Ten watched jobs would ask ~40 times in 3 s on their own; the budget allows ~16.
            assert 0 < services(app).reads.snapshots.fetches - before <= 4 * 3 + 4
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


def test_each_stream_is_sent_the_files_changed_since_its_own_last_event() -> None:
    """Snapshots are encoded with the changes since the watcher's previous one; a stream that
    skipped some, or has just come, gets an encoding of its own."""
    began = datetime(2025, 1, 1, tzinfo=UTC)
    memo = JobState(
        job_id="j1",
        status=JobStatus.processing,
        files=[FileState(file_id=i) for i in (10_001, 10_002, 10_003)],
        created_at=began,
        updated_at=began,
    )

    def record(files_done: int) -> JobRecord:
        beat = PackageProgress(
            files_done=files_done, total_files=3, bytes_done=files_done, total_bytes=3
        )
        act = PendingActivity(names.PACKAGE_ARCHIVE, started=True, progress=beat)
        view = job_view(memo, WorkflowExecutionStatus.RUNNING, [act])
        return JobRecord(state=memo, view=view, run_started=began)

    def changed(snap: Snapshot) -> dict[int, str]:
        data = json.loads(snap.message)["data"]
        return {f["file_id"]: f["status"] for f in data["changedFiles"]}

    first = snapshot(record(0), record(0).view)
    second = snapshot(record(1), record(1).view, first)
    third = snapshot(record(2), record(2).view, second)
    assert changed(first) == {10_001: "processing", 10_002: "pending", 10_003: "pending"}
    assert changed(second) == {10_001: "completed", 10_002: "processing"}
    assert changed(third) == {10_002: "completed", 10_003: "processing"}
    # Kept up: sent as encoded. Skipped `second`: every change since `first`. New: every file.
    assert for_stream(third, second) is third
    assert changed(for_stream(third, first)) == {
        10_001: "completed",
        10_002: "completed",
        10_003: "processing",
    }
    assert set(changed(for_stream(third, None))) == {10_001, 10_002, 10_003}
    assert for_stream(third, first).key == third.key


def test_a_progress_update_of_a_large_job_maps_and_sends_only_the_files_that_changed() -> None:
    """A bus message is mapped over the job's previous view: files that did not change keep
    their views (the same objects), and the event carries, linked, only the ones that did."""
    began = datetime(2025, 1, 1, tzinfo=UTC)
    memo = JobState(
        job_id="j1",
        status=JobStatus.processing,
        files=[FileState(file_id=10_001 + i) for i in range(1000)],
        created_at=began,
        updated_at=began,
    )

    def view(files_done: int, before: JobView | None = None) -> JobView:
        beat = PackageProgress(files_done=files_done, total_files=1000)
        act = PendingActivity(names.PACKAGE_ARCHIVE, started=True, progress=beat)
        return job_view(memo, None, [act], files_before=before.files if before else ())

    def linked(f: FileView) -> FileView:  # as `JobReads.file_link`: completed files only
        if f.status is not FileStatus.completed:
            return f
        return f.model_copy(update={"download_url": f"https://s3/{f.file_id}"})

    first = view(500)
    second = view(501, first)
    kept = [a is b for a, b in zip(first.files, second.files, strict=True)]
    assert kept.count(False) == 2  # file 501 completed, file 502 in work
    assert [f.file_id for f in changed_files(first.files, second.files)] == [10_501, 10_502]
    records = [JobRecord(state=memo, view=v, run_started=began) for v in (first, second)]
    earlier = snapshot(records[0], first)
    data = json.loads(snapshot(records[1], second, earlier, linked).message)["data"]
    assert data["changedFiles"] == [
        {
            "file_id": 10_501,
            "status": "completed",
            "size": None,
            "error": None,
            "downloadUrl": "https://s3/10501",
            "sha256": None,
        },
        {
            "file_id": 10_502,
            "status": "processing",
            "size": None,
            "error": None,
            "downloadUrl": None,
            "sha256": None,
        },
    ]
    # The same view mapped afresh (as a `describe()` does) is compared file by file: no change.
    assert changed_files(first.files, view(500).files) == []
