"""What a job's status says while it runs and after it stops, on a real job: progress, ETA and
the file in work (`api/views.py`), and the record a cancelled job keeps (`workflows/download.py`).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import Json, api_client, initiate, put_sources, slow_origin, wait_for
from worker import build_worker
from workflows.download import DownloadWorkflow
from workflows.names import PACKAGING_STOPPED_SIGNAL

MIB = 1024 * 1024
TERMINAL = {"completed", "failed", "cancelled"}
# Once the ETA rests on something observed (the job's own rate, or the pace of a finished job),
# the time it announces stays within this factor of the time really left, give or take a second (status times have millisecond precision, and
# the job's completion is recorded when the workflow ends, just after packaging).
RATE_FACTOR = 3.0
SLACK_SECONDS = 1.0


def at(value: str) -> datetime:
    return datetime.fromisoformat(value)


async def observe(api: Any, job_id: str, until: set[str] = TERMINAL) -> list[Json]:
    """Every status answer until the job's status is in `until`."""
    seen: list[Json] = []
    while True:
        body: Json = (await api.get(f"/v1/download/status/{job_id}")).json()
        seen.append(body)
        if body["status"] in until:
            return seen
        await asyncio.sleep(0.15)


async def test_progress_and_eta_of_one_large_and_several_small_files(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 1000)
    small = {10_001 + i: 64 * 1024 for i in range(8)}
    sizes = {**dict(list(small.items())[:2]), 10_100: 40 * MIB, **dict(list(small.items())[2:])}
    put_sources(store, settings, sizes)
    async with api_client(slow) as api, build_worker(env.client, slow, store):
        # Before any job is seen finished, nothing backs an early estimate: "estimating".
        first = (await initiate(api, [10_001, 10_002]))["jobId"]
        warm_up = await observe(api, first)
        assert {s["etaBasis"] for s in warm_up if s["status"] == "processing"} <= {"estimating"}
        # Now this API process knows the time per file of a finished job.
        job_id = (await initiate(api, list(sizes)))["jobId"]
        seen = await observe(api, job_id)

    final = seen[-1]
    assert final["status"] == "completed" and final["progress"] == 100
    assert final["etaBasis"] is None and final["estimatedCompletionAt"] is None
    end = at(final["completedAt"])
    running = [s for s in seen if s["status"] == "processing"]
    assert running, "the job was never seen processing"
    figures = [s["progress"] for s in seen]
    assert figures == sorted(figures), figures
    ratios, estimates = [], []
    for s in running:
        assert s["startedAt"] is not None
        if s["completedFiles"] > 0:
            assert s["progress"] > 0, s
        if s["currentFileSize"] is not None:
            assert 0 <= s["currentFileBytes"] <= s["currentFileSize"]
        basis, eta = s["etaBasis"], s["estimatedCompletionAt"]
        assert basis in ("rate", "estimate", "estimating")
        assert (eta is None) == (basis == "estimating")
        if eta is None:
            continue
        told = (at(eta) - at(s["updatedAt"])).total_seconds()
        real = (end - at(s["updatedAt"])).total_seconds()
        if basis == "rate":
            ratios.append((round(told, 2), round(real, 2)))
            assert real / RATE_FACTOR - SLACK_SECONDS <= told <= real * RATE_FACTOR + SLACK_SECONDS
        else:
            # The time per file of the finished job, for the files left.
            estimates.append((round(told, 2), round(real, 2)))
            assert real / RATE_FACTOR - SLACK_SECONDS <= told <= real * RATE_FACTOR + SLACK_SECONDS
    assert any(s["completedFiles"] and s["progress"] > 0 for s in running)
    assert ratios, "the ETA never rested on the observed rate"
    assert estimates, "the ETA never rested on the finished job's pace"
    bases = [s["etaBasis"] for s in running]
    print(f"\nprogress seen: {figures}\nETA bases: {bases}")
    print(f"estimate ETAs (told s, real s): {estimates}\nrate ETAs (told s, real s): {ratios}")


async def test_a_cancelled_job_keeps_what_was_done(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 700)
    sizes = {10_001: 100_000, 10_002: 2 * MIB, 10_003: 300_000, 10_004: 400_000, 10_005: 500}
    put_sources(store, settings, sizes)
    ids = [10_001, 10_009, 10_002, 10_003, 10_004, 10_005]  # 10_009 is missing
    async with api_client(slow) as api, build_worker(env.client, slow, store):
        job_id = (await initiate(api, ids))["jobId"]

        async def two_done() -> Json | None:
            body: Json = (await api.get(f"/v1/download/status/{job_id}")).json()
            return body if body["completedFiles"] >= 2 else None

        before = await wait_for(two_done)
        assert (await api.delete(f"/v1/download/{job_id}")).status_code == 200
        seen = await observe(api, job_id)

    final = seen[-1]
    assert final["status"] == "cancelled"
    states = {f["file_id"]: f for f in final["files"]}
    done = [i for i in ids if states[i]["status"] == "completed"]
    # At least what was done when the cancel was sent, in request order, with their sizes.
    assert len(done) >= before["completedFiles"] >= 2
    assert done == [i for i in ids if i != 10_009][: len(done)]
    assert all(states[i]["size"] == sizes[i] for i in done)
    assert states[10_009]["status"] == "failed" and states[10_009]["error"] == "not found"
    assert final["completedFiles"] == len(done) and final["failedFiles"] == 1
    assert final["bytesProcessed"] >= sum(sizes[i] for i in done)
    assert final["totalBytes"] == sum(sizes.values())
    assert 0 < final["progress"] < 100
    assert final["startedAt"] is not None
    assert not any(f["status"] == "processing" for f in final["files"])

    # The record came by signal; the history replays with it.
    history = await env.client.get_workflow_handle(job_id).fetch_history()
    signals = [
        e for e in history.events if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert [e.workflow_execution_signaled_event_attributes.signal_name for e in signals] == [
        PACKAGING_STOPPED_SIGNAL
    ]
    await Replayer(
        workflows=[DownloadWorkflow], data_converter=pydantic_data_converter
    ).replay_workflow(history)


async def test_a_failed_job_keeps_what_was_done(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 1000)
    sizes = {10_001: 1000, 10_002: 2000, 10_003: 96 * MIB}
    put_sources(store, settings, sizes)
    async with api_client(slow) as api, build_worker(env.client, slow, store):
        job_id = (await initiate(api, list(sizes)))["jobId"]

        async def one_done() -> bool:
            body = (await api.get(f"/v1/download/status/{job_id}")).json()
            return bool(body["completedFiles"] >= 1)

        await wait_for(one_done)
        # The large file vanishes before its later segments are read: the job fails for good.
        store.delete(settings.source_key(10_003))
        seen = await observe(api, job_id)

    final = seen[-1]
    assert (final["status"], final["errorType"]) == ("failed", "SourceChanged")
    states = {f["file_id"]: (f["status"], f["size"]) for f in final["files"]}
    assert states == {
        10_001: ("completed", 1000),
        10_002: ("completed", 2000),
        10_003: ("pending", None),
    }
    assert final["completedFiles"] == 2 and final["bytesProcessed"] >= 3000
