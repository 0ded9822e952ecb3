"""Worker process: runs download workflows and their activities from the task queue."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import urllib.request
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
)
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.callbacks import CallbackActivities
from activities.packaging import DownloadActivities
from activities.storage import ObjectStore, StorageError
from config import Settings, load_settings
from observability import (
    DOWNLOAD_JOB_DURATION,
    DOWNLOAD_JOBS,
    get_logger,
    setup_logging,
    setup_tracing,
)
from workflows.cleanup import CLEANUP_SCHEDULE_ID, ArchiveCleanupWorkflow
from workflows.client import connect
from workflows.download import DownloadWorkflow

log = get_logger("worker")


# Modules workflows use but that hold no workflow code: imported once, not again for every run.
SANDBOX = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules(
        "activities", "config", "observability", "workflows.models", "pydantic", "structlog"
    )
)


def build_worker(client: Client, settings: Settings, store: ObjectStore) -> Worker:
    """The worker with every workflow and activity registered; tests run this same function."""
    downloads = DownloadActivities(store, settings)
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
            downloads.delete_expired_archives,
            callbacks.send_callback,
        ],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_heartbeat_throttle_interval=throttle,
        default_heartbeat_throttle_interval=throttle,
        graceful_shutdown_timeout=timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        workflow_runner=SANDBOX,
    )


async def ensure_cleanup_schedule(client: Client, settings: Settings) -> None:
    """Hourly archive expiry as a Temporal Schedule (visible and pausable in the Web UI)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ArchiveCleanupWorkflow.run,
            id=f"{CLEANUP_SCHEDULE_ID}-run",
            task_queue=settings.temporal_task_queue,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(hours=1))]),
    )
    try:
        await client.create_schedule(CLEANUP_SCHEDULE_ID, schedule)
        log.info("archive cleanup schedule created", schedule_id=CLEANUP_SCHEDULE_ID)
    except ScheduleAlreadyRunningError:
        pass


class SdkMetrics(Collector):
    """Re-exports the Temporal SDK's Prometheus metrics on our own /metrics endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
        except OSError:
            return
        yield from text_string_to_metric_families(text)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics_runtime(settings: Settings) -> Runtime:
    """A runtime whose SDK metrics are served on loopback and merged into our endpoint."""
    sdk_address = f"127.0.0.1:{_free_loopback_port()}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=sdk_address, durations_as_seconds=True, counters_total_suffix=True
            )
        )
    )
    if settings.worker_metrics_port:
        # Workflows count jobs through the SDK meter; these names come from there on a worker.
        for local in (DOWNLOAD_JOBS, DOWNLOAD_JOB_DURATION):
            REGISTRY.unregister(local)
        REGISTRY.register(SdkMetrics(f"http://{sdk_address}/metrics"))
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")  # noqa: S104
    return runtime


async def run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runtime = metrics_runtime(settings)
    client = await connect(settings, runtime=runtime, wait_seconds=120)
    store = ObjectStore(settings)
    for delay in (0.5, 1, 2, 4, 8, 15, 30):
        if stop.is_set():
            return
        try:
            await asyncio.to_thread(store.ensure_bucket)
            break
        except StorageError as exc:
            log.info("waiting for storage", endpoint=settings.s3_endpoint, error=str(exc))
            await asyncio.sleep(delay)
    await ensure_cleanup_schedule(client, settings)
    async with build_worker(client, settings, store):
        log.info(
            "worker started",
            task_queue=settings.temporal_task_queue,
            temporal=settings.temporal_address,
            metrics_port=settings.worker_metrics_port,
        )
        await stop.wait()
        # Leaving the block shuts the worker down gracefully: running packaging attempts
        # checkpoint and fail over, to resume on another worker.
        log.info("worker stopping")


def main() -> None:
    settings = load_settings()
    setup_logging(settings, "worker")
    setup_tracing(settings, "worker")
    asyncio.run(run(settings))
    # The worker has shut down and reported everything; skip interpreter finalization, during
    # which the SDK's native threads can still call into Python and abort the process.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
