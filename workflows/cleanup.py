"""`ArchiveCleanupWorkflow`: run on a Temporal Schedule, deletes archives past their TTL."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.models import CleanupResult
    from workflows.names import CLEANUP_WORKFLOW, DELETE_EXPIRED_ARCHIVES


@workflow.defn(name=CLEANUP_WORKFLOW)
class ArchiveCleanupWorkflow:
    @workflow.run
    async def run(self) -> CleanupResult:
        result: CleanupResult = await workflow.execute_activity(
            DELETE_EXPIRED_ARCHIVES,
            start_to_close_timeout=timedelta(minutes=30),
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=3, initial_interval=timedelta(seconds=5)),
            result_type=CleanupResult,
        )
        return result
