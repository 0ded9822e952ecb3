"""Worker process: runs download workflows and their activities from the task queue.

settings → telemetry → connect → schedule → build_worker → run until SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.callbacks import CallbackActivities
from activities.errorreports import ErrorTrackingInterceptor
from activities.expiry import ArchiveExpiry
from activities.packaging import DownloadActivities
from core import bus, heap
from core.config import Process, Settings, load_settings
from core.errortracking import close_error_tracking, setup_error_tracking
from core.observability import get_logger, setup_logging, setup_tracing, worker_runtime
from core.storage import ObjectStore
from core.temporalenv import describe
from workflows.cleanup import ArchiveCleanupWorkflow
from workflows.client import connect, ensure_cleanup_schedule
from workflows.download import DownloadWorkflow
from workflows.names import callback_task_queue
from workflows.sandbox import SANDBOX, cache_workflow_bytecode, worker_build_id

log = get_logger("worker")


@contextlib.asynccontextmanager
async def build_worker(
    client: Client, settings: Settings, store: ObjectStore
) -> AsyncIterator[Worker]:
    """The packaging worker and the callbacks worker (own queue and slots); tests run this too."""
    async with bus.publisher(settings, "worker") as progress:
        downloads = DownloadActivities(store, settings, progress)
        async with _workers(client, settings, store, downloads) as packaging:
            yield packaging


@contextlib.asynccontextmanager
async def _workers(
    client: Client, settings: Settings, store: ObjectStore, downloads: DownloadActivities
) -> AsyncIterator[Worker]:
    expiry = ArchiveExpiry(store, settings)
    # Heartbeats are throttled to this interval, so it bounds how stale progress can be.
    throttle = timedelta(seconds=settings.heartbeat_interval_seconds)
    # Runs compile nothing, and the build id hashes only the workflow code (see both functions).
    cache_workflow_bytecode()
    common: dict[str, Any] = {
        "graceful_shutdown_timeout": timedelta(seconds=settings.worker_graceful_shutdown_seconds),
        "interceptors": [ErrorTrackingInterceptor()],
        "build_id": worker_build_id(),
    }
    packaging = Worker(
        client,
        task_queue=settings.temporal_task_queue,
        workflows=[DownloadWorkflow, ArchiveCleanupWorkflow],
        activities=[
            downloads.resolve_files,
            downloads.package_archive,
            expiry.delete_expired_archives,
        ],
        max_concurrent_activities=settings.worker_max_concurrent_activities,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_workflow_tasks,
        max_heartbeat_throttle_interval=throttle,
        default_heartbeat_throttle_interval=throttle,
        workflow_runner=SANDBOX,
        **common,
    )
    callbacks = Worker(
        client,
        task_queue=callback_task_queue(settings.temporal_task_queue),
        activities=[CallbackActivities(settings).send_callback],
        max_concurrent_activities=settings.callback_max_concurrent,
        **common,
    )
    async with packaging, callbacks:
        yield packaging


# The event loop shares the GIL with the S3 threads (HTTP parsing, zip writing): at CPython's
# default 5 ms switch interval each busy thread holds the loop off that long at every turn, and
# a burst of jobs was taken in late. 1 000 jobs on two workers of 510 slots each, from Temporal
# marking an attempt started to its first line here: p50 0.82 s, p99 6.6 s; at 1 ms, 0.17 s and
# 4.0 s. Packaging throughput is the same (512 MiB: 203.5 vs 205.1 MiB/s).
SWITCH_INTERVAL_SECONDS = 0.001


async def run(settings: Settings) -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
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
        temporal = describe(settings.temporal_client_config())
        log.info("worker started", task_queue=settings.temporal_task_queue, temporal=temporal)
        # Everything made so far lives as long as the process (`core.heap`).
        heap.settle()
        await stop.wait()
        # Leaving the block shuts the worker down gracefully: running packaging attempts
        # checkpoint and fail over, to resume on another worker.
        log.info("worker stopping")


def share_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate their own malloc arenas (up to eight per core), and each
    keeps the freed memory of the large buffers it held (segments read, parts sent): with dozens
    of S3 threads that is a hundred MB the worker no longer uses. A few arenas shared by every
    thread keep it within its memory bound. Other C libraries: nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_arena_max = -8  # <malloc.h>
    libc.mallopt(m_arena_max, arenas)


def main() -> None:
    share_malloc_arenas()
    settings = load_settings(Process.worker)
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
