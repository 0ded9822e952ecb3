"""The seeds' retry policy with its real intervals, on the time-skipping test server."""

from __future__ import annotations

from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import expect_failure, read_errors, start_job
from worker import build_worker
from workflows.errors import ErrorType


async def test_storage_outage_exhausts_three_attempts_then_fails(
    time_env: WorkflowEnvironment, settings: Settings
) -> None:
    """5 s -> 10 s backoff would take 15 s of wall time; the test server skips it."""
    seeds = settings.model_copy(
        update={
            "s3_endpoint": "http://127.0.0.1:9",  # nothing listens: every call is refused
            "activity_max_attempts": 3,
            "retry_initial_interval_seconds": 5,
            "retry_backoff_coefficient": 2,
            "retry_maximum_interval_seconds": 20,
        }
    )
    before = read_errors()
    async with build_worker(time_env.client, seeds, ObjectStore(seeds)):
        handle = await start_job(time_env.client, seeds, [10_001])
        cause = await expect_failure(handle.result(), ErrorType.storage_unavailable)
    assert "retries exhausted" in cause.message
    # Three attempts in all, each one failing read (the storage budget's, not the interruptions').
    assert read_errors() - before == 3
