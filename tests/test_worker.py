"""The worker process itself: graceful shutdown hands the job over; metrics are served."""

from __future__ import annotations

import signal
import time

import urllib3
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import free_port, wait_for_port
from tests.helpers import (
    assert_archive_matches,
    package_results,
    put_sources,
    read_archive,
    slow_origin_env,
    start_job,
    wait_for_checkpoint,
    worker_process,
)
from worker import build_worker
from workflows.models import JobStatus

MIB = 1024 * 1024


async def test_sigterm_checkpoints_and_another_worker_resumes(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
) -> None:
    sizes = {10_000 + i: 6 * MIB for i in range(1, 6)}
    sources = put_sources(store, settings, sizes)
    with worker_process(slow_origin_env(subprocess_env, 500)) as proc:
        handle = await start_job(env.client, settings, list(sizes))
        await wait_for_checkpoint(env.client, handle, min_parts=1)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # Shut down within the graceful period, not by a heartbeat timeout.
        assert time.monotonic() - stopped < settings.worker_graceful_shutdown_seconds + 5

    async with build_worker(env.client, settings, store):
        state = await handle.result()
    assert state.status is JobStatus.completed
    result = await package_results(env.client, handle)
    assert result.resumed_from > 0
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)


async def test_worker_serves_its_own_and_sdk_metrics(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
    http: urllib3.PoolManager,
) -> None:
    port = free_port()
    with worker_process({**subprocess_env, "WORKER_METRICS_PORT": str(port)}):
        put_sources(store, settings, {10_001: 1000})
        handle = await start_job(env.client, settings, [10_001, 10_002])
        await handle.result()
        wait_for_port(port)
        text = http.request("GET", f"http://127.0.0.1:{port}/metrics").data.decode()
    assert "download_jobs_total{" in text and 'status="completed"' in text
    assert "download_job_duration_seconds_bucket" in text
    assert 's3_operations_total{operation="stat",status="success"}' in text
    assert "download_bytes_packaged_total 1000.0" in text
    assert "temporal_activity_execution_latency" in text  # from the SDK
    assert text.count("# TYPE download_jobs_total ") == 1
