"""Per-owner quotas on the real Temporal and S3 servers: a burst of concurrent starts does not slip
past the active-jobs quota (one API process, or two sharing a Memcached), other owners are not
affected, the quota frees as jobs finish or are cancelled, and files are counted per UTC day."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from api.jobs.listing import visibility_query
from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import free_port
from tests.helpers import (
    api_client,
    assert_error,
    counter_store,
    initiate,
    put_sources,
    slow_origin,
    wait_for,
)
from worker import build_worker

ALICE, BOB = {"X-API-Key": "alice-key"}, {"X-API-Key": "bob-key"}


def quotas(settings: Settings, **limits: int | str) -> tuple[Settings, str]:
    """Settings with these limits and API keys for Alice and Bob, owners of this test alone
    (visibility counts an owner's jobs on every task queue); returns Alice's owner name too."""
    alice, bob = (f"{name}-{uuid.uuid4().hex[:12]}" for name in ("alice", "bob"))
    keys = f"alice-key={alice},bob-key={bob}"
    return settings.model_copy(update={"auth_api_keys": keys, **limits}), f"key:{alice}"


async def start(api: httpx.AsyncClient, caller: dict[str, str], ids: list[int]) -> httpx.Response:
    return await api.post("/v1/download/initiate", json={"file_ids": ids}, headers=caller)


def refused(resp: httpx.Response, quota: str) -> bool:
    """A 429 of the quota `quota`, in the API's error body, with when to come back."""
    body = assert_error(resp, 429, "quota_exceeded")
    assert int(resp.headers["retry-after"]) >= 1
    return bool(body["details"]["quota"] == quota)


async def running(env: WorkflowEnvironment, owner: str) -> int:
    """The owner's runs Temporal holds open, read once visibility has settled."""
    query = f"{visibility_query(owner)} AND ExecutionStatus = 'Running'"
    return (await env.client.count_workflows(query)).count


@pytest.mark.parametrize("store_kind", ["memory", "memcached"])
async def test_a_burst_of_starts_does_not_slip_past_the_active_quota(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, store_kind: str
) -> None:
    """120 concurrent starts of one owner, no worker (every job stays queued): exactly 10 are
    accepted, by one API process or split over two sharing a Memcached; another owner still
    starts; the count holds once the starts are older than the lag (visibility counts them)."""
    async with AsyncExitStack() as stack:
        limited, alice = quotas(
            settings, quota_active_jobs_per_owner=10, quota_visibility_lag_seconds=2
        )
        if store_kind == "memory":
            apis = [await stack.enter_async_context(api_client(limited))]
        else:
            uri = stack.enter_context(counter_store("memcached"))
            limited = limited.model_copy(update={"rate_limit_storage_uri": uri})
            apis = [await stack.enter_async_context(api_client(limited)) for _ in range(2)]
        answers = await asyncio.gather(
            *(start(apis[i % len(apis)], ALICE, [10_001]) for i in range(120))
        )
        accepted = [a for a in answers if a.status_code == 200]
        assert len(accepted) == 10
        assert all(refused(a, "active_jobs") for a in answers if a.status_code != 200)
        assert (await start(apis[0], BOB, [10_001])).status_code == 200

        # Once the starts are two windows old the API no longer counts them itself: visibility
        # does, and still refuses.
        await asyncio.sleep(limited.quota_visibility_lag_seconds * 2 + 1)
        assert refused(await start(apis[-1], ALICE, [10_001]), "active_jobs")
    assert await running(env, alice) == 10


async def accepted(api: httpx.AsyncClient) -> httpx.Response:
    """Start one of Alice's jobs as soon as the quota lets it (polling the API)."""

    async def probe() -> httpx.Response | None:
        resp = await start(api, ALICE, [10_001])
        return resp if resp.status_code == 200 else None

    return await wait_for(probe, timeout=60, interval=0.5)


async def test_the_quota_frees_when_a_job_is_cancelled(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 100})
    limited, _ = quotas(settings, quota_active_jobs_per_owner=2, quota_visibility_lag_seconds=1)
    # Every file takes a minute: the jobs stay processing until cancelled.
    slow = slow_origin(limited, 60_000)
    async with build_worker(env.client, slow, store), api_client(limited) as api:
        first = [(await start(api, ALICE, [10_001])).json() for _ in range(2)]
        assert refused(await start(api, ALICE, [10_001]), "active_jobs")
        cancelled = await api.delete(f"/v1/download/{first[0]['jobId']}", headers=ALICE)
        assert cancelled.status_code == 200, cancelled.text
        await accepted(api)
        assert refused(await start(api, ALICE, [10_001]), "active_jobs")
        for job in (await api.get("/v1/downloads", headers=ALICE)).json()["jobs"]:
            await api.delete(f"/v1/download/{job['jobId']}", headers=ALICE)


async def test_the_quota_frees_when_jobs_finish(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 100})
    limited, _ = quotas(settings, quota_active_jobs_per_owner=2, quota_visibility_lag_seconds=1)
    async with api_client(limited) as api:
        for _ in range(2):
            assert (await start(api, ALICE, [10_001])).status_code == 200
        # No worker yet: both jobs wait, queued.
        assert refused(await start(api, ALICE, [10_001]), "active_jobs")
        async with build_worker(env.client, limited, store):
            await accepted(api)
            await accepted(api)


async def test_files_are_counted_per_owner_per_day(settings: Settings, store: ObjectStore) -> None:
    limited, _ = quotas(settings, quota_files_per_owner_per_day=5)
    async with api_client(limited) as api:
        assert (await start(api, ALICE, [10_001, 10_002, 10_003])).status_code == 200
        over = await start(api, ALICE, [10_004, 10_005, 10_006])
        assert refused(over, "files_per_day")
        assert int(over.headers["retry-after"]) <= 86_400
        assert "5 files a day" in over.json()["message"]
        # A refused start took nothing: the two files left can still be started.
        assert (await start(api, ALICE, [10_004, 10_005])).status_code == 200
        assert refused(await start(api, ALICE, [10_006]), "files_per_day")
        assert (await start(api, BOB, [10_001, 10_002, 10_003, 10_004, 10_005])).status_code == 200


async def test_a_repeated_idempotent_start_is_answered_at_the_quota(
    settings: Settings, store: ObjectStore
) -> None:
    limited, _ = quotas(settings, quota_active_jobs_per_owner=1)
    async with api_client(limited) as api:
        key = {**ALICE, "Idempotency-Key": "order-1"}
        job = await initiate(api, [10_001], headers=key)
        again = await initiate(api, [10_001], headers=key)
        assert again["jobId"] == job["jobId"]
        other = {**ALICE, "Idempotency-Key": "order-2"}
        assert refused(await start(api, other, [10_001]), "active_jobs")


async def test_visibility_alone_decides_while_the_counter_store_is_down(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    down, alice = quotas(
        settings,
        quota_active_jobs_per_owner=2,
        rate_limit_storage_uri=f"redis://127.0.0.1:{free_port()}",
    )
    async with api_client(down) as api:
        assert (await start(api, ALICE, [10_001])).status_code == 200

        assert (await start(api, ALICE, [10_002])).status_code == 200

        async def both_visible() -> bool:
            return await running(env, alice) == 2

        # Visibility is eventually consistent: once it shows the two jobs, a third is refused.
        await wait_for(both_visible)
        assert refused(await start(api, ALICE, [10_003]), "active_jobs")
        assert (await start(api, BOB, [10_003])).status_code == 200
