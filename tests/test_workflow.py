"""The download workflow end to end on the real Temporal dev server and the real S3 server."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.checkpoints import checkpoint_key
from core.config import Settings
from core.storage import ObjectStore, UploadGone
from devstack.servers import S3Server
from tests.helpers import (
    assert_archive_matches,
    expect_failure,
    http_receiver,
    package_results,
    put_sources,
    read_archive,
    read_errors,
    slow_origin,
    slow_origin_env,
    start_job,
    wait_for,
    wait_for_checkpoint,
    worker_process,
)
from worker import build_worker
from workflows.download import INLINE_RESOLVE_LIMIT
from workflows.errors import PUBLIC_MESSAGES, ErrorType
from workflows.models import FileStatus, JobState, JobStatus
from workflows.names import (
    DOWNLOAD_STATUS,
    PACKAGE_ARCHIVE,
    STATE_MEMO_KEY,
    STATUS_QUERY,
)

MIB = 1024 * 1024


async def test_archive_holds_every_file_byte_for_byte(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    sources = put_sources(store, settings, {10_001: 1234, 10_002: 0, 10_003: 12 * MIB + 17})
    handle = await start_job(env.client, settings, [10_001, 10_002, 10_003, 10_001])
    state = await handle.result()

    assert state.status is JobStatus.completed
    assert [f.file_id for f in state.files] == [10_001, 10_002, 10_003]  # deduplicated, in order
    assert all(f.status is FileStatus.completed for f in state.files)
    assert state.archive_key == settings.archive_key(handle.id, handle.result_run_id)
    assert state.archive_sizes == [state.archive_size]
    assert all(f.sha256 == hashlib.sha256(sources[f.file_id]).hexdigest() for f in state.files)
    assert state.bytes_processed == sum(len(d) for d in sources.values())
    assert store.stat(state.archive_key).size == state.archive_size
    assert_archive_matches(read_archive(store, state.archive_key), sources)

    desc = await handle.describe()
    assert desc.typed_search_attributes.get(DOWNLOAD_STATUS) == "completed"
    query = await handle.query(STATUS_QUERY, result_type=JobState)
    assert query.status is JobStatus.completed


async def test_visibility_query_finds_jobs_by_status(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, settings, {10_001: 10})
    done = await start_job(env.client, settings, [10_001])
    failed = await start_job(env.client, settings, [10_009])
    await done.result()
    with pytest.raises(WorkflowFailureError):
        await failed.result()

    async def listed(status: str) -> list[str]:
        query = f"DownloadStatus = '{status}' AND TaskQueue = '{settings.temporal_task_queue}'"
        return [w.id async for w in env.client.list_workflows(query)]

    assert await wait_for(lambda: listed("completed")) == [done.id]
    assert await wait_for(lambda: listed("failed")) == [failed.id]


async def test_missing_files_are_marked_and_the_rest_packaged(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    sources = put_sources(store, settings, {10_001: 100, 10_003: 300})
    handle = await start_job(env.client, settings, [10_001, 10_002, 10_003])
    state = await handle.result()

    assert state.status is JobStatus.completed
    by_id = {f.file_id: f for f in state.files}
    assert by_id[10_002].status is FileStatus.failed
    assert by_id[10_002].error == "not found"
    assert by_id[10_002].error_type == ErrorType.file_not_found
    assert state.failed_files == 1 and state.completed_files == 2
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)


async def test_nothing_available_fails_in_plain_words(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    handle = await start_job(env.client, settings, [10_005, 10_006])
    cause = await expect_failure(handle.result(), ErrorType.nothing_to_package)
    assert "none of the requested files" in cause.message
    memo = await (await handle.describe()).memo_value(STATE_MEMO_KEY, type_hint=JobState)
    assert memo.status is JobStatus.failed
    assert memo.error == cause.message
    assert all(f.status is FileStatus.failed for f in memo.files)


async def test_cancel_mid_package_aborts_the_upload(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    slow = slow_origin(settings, 3000)
    put_sources(store, settings, {10_001: 6 * MIB, 10_002: 6 * MIB, 10_003: 6 * MIB})
    async with build_worker(env.client, slow, store):
        handle = await start_job(env.client, settings, [10_001, 10_002, 10_003])
        progress = await wait_for_checkpoint(env.client, handle)
        assert progress.resume is not None
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        assert isinstance(err.value.cause, CancelledError)

    key = settings.archive_key(handle.id, handle.result_run_id)
    assert store.stat_or_none(key) is None
    with pytest.raises(UploadGone):
        store.list_parts(key, progress.resume.upload_id)
    assert store.stat_or_none(checkpoint_key(key)) is None
    memo = await (await handle.describe()).memo_value(STATE_MEMO_KEY, type_hint=JobState)
    assert memo.status is JobStatus.cancelled


async def test_resume_after_worker_is_killed(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
) -> None:
    """A worker process killed mid-archive: the next attempt continues from the checkpoint."""
    sizes = {10_000 + i: 6 * MIB + i for i in range(1, 6)}
    sources = put_sources(store, settings, sizes)
    total = sum(sizes.values())
    # Leaving the block kills the worker (SIGKILL): no chance to checkpoint or hand over.
    with worker_process(slow_origin_env(subprocess_env, 400)):
        handle = await start_job(env.client, settings, list(sizes))
        progress = await wait_for_checkpoint(env.client, handle, min_parts=2)
    assert progress.bytes_done < total

    async with build_worker(env.client, settings, store):
        state = await handle.result()

    assert state.status is JobStatus.completed
    result = await package_results(env.client, handle)
    assert result.resumed_from > 0, "the second attempt started over"
    assert result.source_bytes_read < total, "finished bytes were read again"
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)


async def test_retries_across_a_short_storage_outage(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    s3_server: S3Server | None,
) -> None:
    if s3_server is None:
        pytest.skip("needs the S3 server started by the fixtures")
    patient = settings.model_copy(
        update={
            "activity_max_attempts": 6,
            "retry_initial_interval_seconds": 1.0,
            "download_delay_enabled": True,
            "download_delay_min_ms": 300,
            "download_delay_max_ms": 300,
        }
    )
    sources = put_sources(store, settings, {10_000 + i: 6 * MIB for i in range(1, 5)})
    async with build_worker(env.client, patient, store):
        handle = await start_job(env.client, patient, list(sources))
        await wait_for_checkpoint(env.client, handle)
        s3_server.stop()
        await asyncio.sleep(2)
        s3_server.start()
        state = await handle.result()
    assert state.status is JobStatus.completed
    history = await handle.fetch_history()
    failures = [e for e in history.events if e.activity_task_started_event_attributes.attempt > 1]
    assert failures, "the outage did not cause a retry"
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)


async def test_access_denied_fails_fast_without_retry(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    put_sources(store, settings, {10_001: 10})
    wrong = settings.model_copy(update={"s3_secret_access_key": "not-the-secret"})
    errors_before = read_errors()
    async with build_worker(env.client, settings, ObjectStore(wrong)):
        handle = await start_job(env.client, settings, [10_001])
        await expect_failure(handle.result(), ErrorType.access_denied)
    # One read in all: the packaging attempt gave up at once instead of retrying.
    assert read_errors() - errors_before == 1
    # What clients are told: fixed words, not the storage error (key, code, endpoint).
    memo = await (await handle.describe()).memo_value(STATE_MEMO_KEY, type_hint=JobState)
    assert memo.error == PUBLIC_MESSAGES[ErrorType.access_denied]
    endpoint = settings.s3_endpoint.split("//")[1]
    for internal in (settings.source_key(10_001), "SignatureDoesNotMatch", endpoint):
        assert internal not in memo.model_dump_json()


async def test_long_id_lists_are_resolved_while_packaging(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    """However long the id list, one packaging activity resolves the ids as it reads them."""
    ids = list(range(20_000, 20_000 + INLINE_RESOLVE_LIMIT + 10))
    sources = put_sources(store, settings, {ids[0]: 10, ids[-1]: 20})
    handle = await start_job(env.client, settings, ids)
    state = await handle.result()
    assert state.completed_files == 2 and state.failed_files == len(ids) - 2
    assert {f.error for f in state.files if f.status is FileStatus.failed} == {"not found"}
    assert state.total_bytes == 30
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)
    history = await handle.fetch_history()
    scheduled = [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]
    assert scheduled == [PACKAGE_ARCHIVE]


async def test_terminal_state_is_posted_to_the_callback(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore
) -> None:
    allowed = settings.model_copy(update={"callback_allow_private": True})
    put_sources(store, settings, {10_001: 10})
    with http_receiver() as (base, requests):
        async with build_worker(env.client, allowed, store):
            url = f"{base}/hook"
            handle = await start_job(env.client, settings, [10_001, 10_002], callback_url=url)
            await handle.result()
    received = [json.loads(body) for _, body in requests]
    assert received == [
        {
            "jobId": handle.id,
            "status": "completed",
            "totalFiles": 2,
            "completedFiles": 1,
            "failedFiles": 1,
            "error": None,
            "completedAt": received[0]["completedAt"],
        }
    ]


async def test_a_refused_callback_never_fails_the_job(
    env: WorkflowEnvironment, settings: Settings, store: ObjectStore, worker: Worker
) -> None:
    put_sources(store, settings, {10_001: 10})
    handle = await start_job(
        env.client, settings, [10_001], callback_url="http://127.0.0.1:9/private"
    )
    state = await handle.result()
    assert state.status is JobStatus.completed
    history = await handle.fetch_history()
    failed = [
        e.activity_task_failed_event_attributes.failure.application_failure_info.type
        for e in history.events
        if e.HasField("activity_task_failed_event_attributes")
    ]
    assert failed == [ErrorType.callback_refused]


async def test_a_job_outlives_more_interruptions_than_storage_attempts(
    env: WorkflowEnvironment,
    settings: Settings,
    store: ObjectStore,
    subprocess_env: dict[str, str],
) -> None:
    """Deploy hand-overs and lost workers, each more often than ACTIVITY_MAX_ATTEMPTS: the job
    completes, every attempt resuming from the last stored part."""
    two = settings.model_copy(update={"activity_max_attempts": 2})
    sizes = {10_000 + i: 6 * MIB + i for i in range(1, 10)}
    sources = put_sources(store, settings, sizes)
    slow = slow_origin_env(subprocess_env, 400)
    handle = await start_job(env.client, two, list(sizes))
    parts = 0
    for signal_name in ("SIGTERM",) * 3 + ("SIGKILL",) * 3:
        with worker_process(slow) as proc:
            progress = await wait_for_checkpoint(env.client, handle, min_parts=parts + 1)
            assert progress.resume is not None
            parts = progress.resume.parts
            if signal_name == "SIGTERM":
                proc.terminate()  # a deploy: hand over
                assert proc.wait(timeout=30) == 0
            # Leaving the block kills a worker still running: lost, noticed by heartbeat timeout.
    async with build_worker(env.client, settings, store):
        state = await handle.result()

    assert state.status is JobStatus.completed
    assert_archive_matches(read_archive(store, str(state.archive_key)), sources)
    history = await handle.fetch_history()
    attempts = [
        e.activity_task_started_event_attributes.attempt
        for e in history.events
        if e.HasField("activity_task_started_event_attributes")
    ]
    assert attempts[-1] >= 7  # six interruptions, then the attempt that finished
    result = await package_results(env.client, handle)
    assert result.resumed_from > 0
    assert result.source_bytes_read < sum(sizes.values())
