"""Job priority 1 (most urgent) to 5: Temporal's task-queue priority key of the run and its
activities, bounded by the owner's ceiling, shown in status, lists and the Web UI's search
attribute; an urgent job overtakes a backlog of the same owner."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import api_client, assert_error, put_sources, slow_origin, start_job, wait_for
from worker import build_worker
from workflows.errors import ErrorType
from workflows.models import DownloadRequest
from workflows.names import DOWNLOAD_PRIORITY, PACKAGE_ARCHIVE

OPS, ALICE, BATCH = ({"X-API-Key": f"{name}-key"} for name in ("ops", "alice", "batch"))


def with_ceilings(settings: Settings) -> Settings:
    """Three owners: ops may ask for any priority, alice for the default ceiling (3) and less
    urgent, batch for 4 and 5 only."""
    suffix = uuid.uuid4().hex[:8]
    keys = ",".join(f"{name}-key={name}-{suffix}" for name in ("ops", "alice", "batch"))
    return settings.model_copy(
        update={
            "auth_api_keys": keys,
            "owner_priority_ceilings": {f"key:ops-{suffix}": 1, f"key:batch-{suffix}": 4},
        }
    )


async def start(api: httpx.AsyncClient, caller: dict[str, str], **body: object) -> httpx.Response:
    return await api.post(
        "/v1/download/initiate", json={"file_ids": [10_001], **body}, headers=caller
    )


async def test_priority_reaches_temporal_and_is_shown(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 100})
    limited = with_ceilings(settings)
    async with (
        build_worker(env.client, slow_origin(limited, 60_000), store),
        api_client(limited) as api,
    ):
        job = (await start(api, OPS, priority=1)).json()
        handle = env.client.get_workflow_handle(job["jobId"])

        async def packaging() -> bool:
            pending = (await handle.describe()).raw_description.pending_activities
            return any(
                a.activity_type.name == PACKAGE_ARCHIVE
                and a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                for a in pending
            )

        await wait_for(packaging)
        desc = await handle.describe()
        # The run's priority key, which its activities inherit, and the search attribute.
        assert desc.raw_description.workflow_execution_info.priority.priority_key == 1
        (activity,) = desc.raw_description.pending_activities
        # Unset on the activity (0), which inherits the run's: the backlog test shows the effect.
        assert activity.priority.priority_key in (0, 1)
        assert desc.typed_search_attributes.get(DOWNLOAD_PRIORITY) == 1
        status = (await api.get(job["statusUrl"], headers=OPS)).json()
        assert status["priority"] == 1
        listed = (await api.get("/v1/downloads", headers=OPS)).json()["jobs"]
        assert [j["priority"] for j in listed] == [1]
        await api.delete(f"/v1/download/{job['jobId']}", headers=OPS)


async def test_the_owners_ceiling_applies(settings: Settings, store: ObjectStore) -> None:
    async with api_client(with_ceilings(settings)) as api:
        body = assert_error(await start(api, ALICE, priority=2), 403, "priority_not_allowed")
        assert body["details"] == {"ceiling": 3}
        assert_error(await start(api, BATCH, priority=3), 403, "priority_not_allowed")
        shown = {}
        for name, caller, asked in (
            ("alice, as she asks", ALICE, {"priority": 5}),
            ("alice, by default", ALICE, {}),
            ("batch, by default", BATCH, {}),
            ("ops, as they ask", OPS, {"priority": 1}),
        ):
            job = (await start(api, caller, **asked)).json()
            status = (await api.get(job["statusUrl"], headers=caller)).json()
            shown[name] = status["priority"]
        assert shown == {
            "alice, as she asks": 5,
            "alice, by default": 3,
            "batch, by default": 4,
            "ops, as they ask": 1,
        }
        for bad in (0, 6, "1", 1.5):
            assert_error(await start(api, OPS, priority=bad), 400, "validation_error")


async def test_an_urgent_job_overtakes_a_backlog(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """One owner (so fairness plays no part), one packaging slot, 48 jobs at priority 5 waiting
    for it: a job at priority 1 started after them finishes before most of them (first come,
    first served, it would wait for all 48).

    Not right after the first: each of the task queue's partitions (4 on the dev server) orders
    its own tasks, and the worker's polls go to any of them."""
    put_sources(store, settings, {10_001: 10})
    one_slot = slow_origin(settings, 300).model_copy(update={"worker_max_concurrent_activities": 1})

    async def closed(handles: list[WorkflowHandle[Any, Any]]) -> int:
        descs = await asyncio.gather(*(h.describe() for h in handles))
        return sum(1 for desc in descs if desc.close_time is not None)

    async with build_worker(env.client, one_slot, store):
        backlog = [await start_job(env.client, settings, [10_001], priority=5) for _ in range(48)]

        async def all_scheduled() -> bool:
            descs = await asyncio.gather(*(h.describe() for h in backlog))
            return all(d.raw_description.pending_activities or d.close_time for d in descs)

        # Every backlog job waits on the task queue (none gets a slot by finishing its first
        # workflow task when the slot is free) before the urgent one arrives.
        await wait_for(all_scheduled, timeout=60)
        before = await closed(backlog)
        urgent = await start_job(env.client, settings, [10_001], priority=1)
        await asyncio.wait_for(urgent.result(), timeout=120)
        overtook = await closed(backlog) - before
    await asyncio.gather(*(h.terminate() for h in backlog), return_exceptions=True)
    assert before < 24, "the backlog was half done before the urgent job came"
    assert overtook <= 16, f"{overtook} less urgent jobs went first"


@pytest.mark.parametrize("priority", [0, 6])
def test_a_request_started_on_temporal_is_bounded_too(priority: int) -> None:
    request = {
        "job_id": "job-1",
        "file_ids": [10_001],
        "created_at": datetime.now(UTC).isoformat(),
        "priority": priority,
    }
    with pytest.raises(ApplicationError) as raised:
        DownloadRequest.checked(request, "job-1")
    assert raised.value.type == ErrorType.invalid_request.value
    assert DownloadRequest.checked({**request, "priority": 5}, "job-1").priority == 5
