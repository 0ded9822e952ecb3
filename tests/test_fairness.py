"""Owners share workers fairly: the task queues dispatch round robin between owners."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import put_sources, slow_origin, start_job
from worker import build_worker
from workflows.client import fairness_key

BACKLOG = 300


async def test_one_owners_backlog_does_not_starve_another(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    """Owner A queues 300 one-second jobs on a worker with 4 slots; B's one job still finishes
    within 15 s (first come, first served it would wait ~75 s)."""
    put_sources(store, settings, {10_001: 10})
    four_slots = slow_origin(settings, 1000).model_copy(
        update={"worker_max_concurrent_activities": 4}
    )
    async with build_worker(env.client, four_slots, store):
        backlog = await asyncio.gather(
            *(start_job(env.client, settings, [10_001], owner="owner-a") for _ in range(BACKLOG))
        )
        began = time.monotonic()
        single = await start_job(env.client, settings, [10_001], owner="owner-b")
        await asyncio.wait_for(single.result(), timeout=60)
        waited = time.monotonic() - began
        # Most of A's backlog is still waiting: B did not merely come after it.
        finished = sum(
            1
            for desc in await asyncio.gather(*(h.describe() for h in backlog))
            if desc.close_time is not None
        )
    await asyncio.gather(*(h.terminate() for h in backlog), return_exceptions=True)
    assert waited < 15, f"owner B waited {waited:.1f} s behind owner A's backlog"
    assert finished < BACKLOG / 2


def test_long_owners_get_a_short_fairness_key() -> None:
    assert fairness_key("alice") == "alice"
    long = "x" * 300
    assert len(fairness_key(long).encode()) <= 64
    assert fairness_key(long) != fairness_key("y" * 300)


def test_owner_weights_are_parsed_once_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OWNER_WEIGHTS", "alice=2, batch=0.5")
    weighted = Settings(_env_file=None)  # type: ignore[call-arg]
    assert weighted.owner_weights == {"alice": 2, "batch": 0.5}
    assert weighted.owner_weight("someone") == 1
    for bad in ("alice", "alice=-1", "alice=many"):
        monkeypatch.setenv("OWNER_WEIGHTS", bad)
        with pytest.raises(ValidationError):
            Settings(_env_file=None)  # type: ignore[call-arg]
