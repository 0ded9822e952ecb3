"""The worker process itself: graceful shutdown hands the job over; metrics are served."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import urllib3
from temporalio.testing import WorkflowEnvironment

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import S3Server, free_port, wait_for_port
from tests.helpers import (
    assert_archive_matches,
    expect_failure,
    log_lines,
    package_results,
    put_sources,
    read_archive,
    slow_origin_env,
    start_job,
    wait_for,
    wait_for_checkpoint,
    worker_process,
)
from workflows.errors import ErrorType
from workflows.models import JobStatus

MIB = 1024 * 1024


async def test_sigterm_hands_over_and_each_attempt_is_logged(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """SIGTERM checkpoints the attempt; another worker resumes it. Both log each attempt."""
    sizes = {10_000 + i: 6 * MIB for i in range(1, 6)}
    sources = put_sources(store, settings, sizes)
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with worker_process(slow_origin_env(subprocess_env, 500), first_log) as proc:
        handle = await start_job(env.client, settings, list(sizes))
        await wait_for_checkpoint(env.client, handle, min_parts=1)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        # Shut down within the graceful period, not by a heartbeat timeout.
        assert time.monotonic() - stopped < settings.worker_graceful_shutdown_seconds + 5

    with worker_process(subprocess_env, second_log):
        state = await handle.result()
    assert state.status is JobStatus.completed
    result = await package_results(env.client, handle)
    assert result.resumed_from > 0
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)

    (started,) = log_lines(first_log, "job attempt started")
    (handed_over,) = log_lines(first_log, "job attempt failed")
    assert handed_over["errorType"] == ErrorType.worker_shutdown and handed_over["willRetry"]
    (retried,) = log_lines(second_log, "job attempt retried")
    (resumed,) = log_lines(second_log, "job attempt resumed")
    (finished,) = log_lines(second_log, "job attempt finished")
    assert resumed["archiveOffset"] == result.resumed_from
    assert finished["bytesRead"] == result.source_bytes_read < sum(sizes.values())
    assert (started["attempt"], retried["attempt"], finished["attempt"]) == (1, 2, 2)
    for line in (started, handed_over, retried, resumed, finished):
        assert line["jobId"] == handle.id and len(line["traceId"]) == 32
    assert handed_over["durationMs"] > 0 and finished["durationMs"] > 0


async def test_a_failing_attempt_logs_whether_it_is_retried(
    env: WorkflowEnvironment,
    settings: Settings,
    subprocess_env: dict[str, str],
    s3_server: S3Server | None,
    tmp_path: Path,
) -> None:
    if s3_server is None:
        pytest.skip("needs the S3 server started by the fixtures")
    log = tmp_path / "worker.log"
    with worker_process(subprocess_env, log):

        async def started() -> bool:
            return bool(log_lines(log, "worker started"))

        await wait_for(started)
        s3_server.stop()  # an outage that outlasts both attempts
        try:
            # The retry policy travels with the job: two attempts.
            two = settings.model_copy(update={"activity_max_attempts": 2})
            handle = await start_job(env.client, two, [10_001])
            await expect_failure(handle.result(), ErrorType.storage_unavailable)
        finally:
            s3_server.start()
    failed = log_lines(log, "job attempt failed")
    assert [(f["attempt"], f["willRetry"]) for f in failed] == [(1, True), (2, False)]
    assert {f["errorType"] for f in failed} == {ErrorType.storage_unavailable}


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
    assert 's3_operations_total{operation="get",status="success"}' in text
    assert "download_bytes_packaged_total 1000.0" in text
    assert "temporal_activity_execution_latency" in text  # from the SDK
    assert text.count("# TYPE download_jobs_total ") == 1
