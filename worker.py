"""Worker process: runs download workflows and their activities from the task queue.

settings → telemetry → connect → schedule → build_worker → run until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.callbacks import CallbackActivities
from activities.expiry import ArchiveExpiry
from activities.packaging import DownloadActivities
from core.config import Settings, load_settings
from core.errortracking import ErrorTrackingInterceptor, close_error_tracking, setup_error_tracking
from core.observability import get_logger, setup_logging, setup_tracing, worker_runtime
from core.storage import ObjectStore
from workflows.cleanup import ArchiveCleanupWorkflow
from workflows.client import connect, ensure_cleanup_schedule
from workflows.download import DownloadWorkflow

log = get_logger("worker")

# Modules workflows use but that hold no workflow code: imported once, not again for every run.
PASSTHROUGH = ("activities", "core", "pydantic", "structlog")
CONTRACT = tuple(f"workflows.{name}" for name in ("models", "names", "errors"))
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(*PASSTHROUGH, *CONTRACT)
)


def build_worker(client: Client, settings: Settings, store: ObjectStore) -> Worker:
    """The worker with every workflow and activity registered; tests run this same function."""
    downloads = DownloadActivities(store, settings)
    expiry = ArchiveExpiry(store, settings)
    callbacks = CallbackActivities(settings)
    # Heartbeats are throttled to this interval, so it bounds how stale progress can be.
    throttle = timedelta(seconds=settings.heartbeat_interval_seconds)
    return Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[DownloadWorkflow, ArchiveCleanupWorkflow],
        activities=[
            downloads.resolve_files,
            downloads.package_archive,
            expiry.delete_expired_archives,
            callbacks.send_callback,
        ],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_heartbeat_throttle_interval=throttle,
        default_heartbeat_throttle_interval=throttle,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        workflow_runner=SANDBOX,
        interceptors=[ErrorTrackingInterceptor()],
    )


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = await connect(settings, runtime=worker_runtime(settings), wait_seconds=120)
    store = ObjectStore(settings)
    if not await store.wait_until_ready(stop):
        return
    await ensure_cleanup_schedule(client, settings)
    async with build_worker(client, settings, store):
        queue, address = settings.temporal_task_queue, settings.temporal_address
        log.info("worker started", task_queue=queue, temporal=address)
        await stop.wait()
        # Leaving the block shuts the worker down gracefully: running packaging attempts
        # checkpoint and fail over, to resume on another worker.
        log.info("worker stopping")


def main() -> None:
    settings = load_settings()
    setup_logging(settings, "worker")
    setup_tracing(settings, "worker")
    setup_error_tracking(settings, "worker")
    asyncio.run(run(settings))
    close_error_tracking()
    # The worker has shut down and reported everything; skip interpreter finalization, during
    # which the SDK's native threads can still call into Python and abort the process.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
