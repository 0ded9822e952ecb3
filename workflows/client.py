"""How the API, the worker and the tools reach Temporal: one connect function, one data converter."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleSpec,
    WorkflowHandle,
)
from temporalio.common import (
    Priority,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter
from temporalio.runtime import Runtime
from temporalio.service import RPCError

from core.config import Settings
from core.observability import get_logger
from core.payloadcodec import EncryptionCodec
from core.temporalenv import describe
from workflows.models import (
    ANONYMOUS_OWNER,
    DownloadRequest,
    JobOptions,
    JobState,
    JobStatus,
    RetryOptions,
)
from workflows.names import (
    CLEANUP_SCHEDULE_ID,
    CLEANUP_WORKFLOW,
    DOWNLOAD_PRIORITY,
    DOWNLOAD_STATUS,
    DOWNLOAD_WORKFLOW,
    FILE_COUNT,
    OWNER,
    STATE_MEMO_KEY,
)
from workflows.sealing import seal

log = get_logger(__name__)


def data_converter(settings: Settings) -> DataConverter:
    """Pydantic payloads, encrypted when PAYLOAD_ENCRYPTION_KEYS is set (API and worker alike)."""
    if not settings.payload_encryption_keys:
        return pydantic_data_converter
    return dataclasses.replace(
        pydantic_data_converter, payload_codec=EncryptionCodec(settings.encryption_keys)
    )


async def connect(
    settings: Settings,
    *,
    runtime: Runtime | None = None,
    lazy: bool = False,
    wait_seconds: float = 0.0,
) -> Client:
    """Connect as every Temporal client does (address, namespace, API key, TLS from the settings,
    the environment and the TOML profile: see core/temporalenv.py), with the project's data
    converter and tracing; optionally wait for the server."""
    config = settings.temporal_client_config()
    where = describe(config)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    delay = 0.5
    while True:
        try:
            return await Client.connect(
                **config,
                data_converter=data_converter(settings),
                interceptors=[TracingInterceptor()],
                runtime=runtime,
                lazy=lazy,
            )
        except (RuntimeError, RPCError) as exc:
            if asyncio.get_running_loop().time() >= deadline:
                raise
            log.info("waiting for temporal", temporal=where, error=str(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def job_options(
    settings: Settings, compression: str | None = None, max_archive_bytes: int | None = None
) -> JobOptions:
    """Per-job options fixed at start from the deployment's settings (and the caller's
    archive part size)."""
    return JobOptions(
        compression=compression or settings.archive_compression.value,  # type: ignore[arg-type]
        retry=RetryOptions(
            maximum_attempts=settings.activity_max_attempts,
            initial_interval_seconds=settings.retry_initial_interval_seconds,
            backoff_coefficient=settings.retry_backoff_coefficient,
            maximum_interval_seconds=settings.retry_maximum_interval_seconds,
        ),
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        deadline_seconds=settings.job_deadline_minutes * 60,
        max_archive_bytes=max_archive_bytes,
    )


def new_request(
    settings: Settings,
    job_id: str,
    file_ids: list[int],
    *,
    owner: str = ANONYMOUS_OWNER,
    callback_url: str | None = None,
    request_id: str | None = None,
    compression: str | None = None,
    priority: int | None = None,
    max_archive_bytes: int | None = None,
) -> DownloadRequest:
    """A workflow input, sealed: ids deduplicated in their order, options from the settings."""
    request = DownloadRequest(
        job_id=job_id,
        owner=owner,
        file_ids=list(dict.fromkeys(file_ids)),
        callback_url=callback_url,
        options=job_options(settings, compression, max_archive_bytes),
        created_at=datetime.now(UTC).replace(microsecond=0),
        request_id=request_id,
        priority=priority,
    )
    return seal(request, settings)


async def start_download(
    client: Client,
    settings: Settings,
    request: DownloadRequest,
    *,
    id_reuse_policy: WorkflowIDReusePolicy = WorkflowIDReusePolicy.REJECT_DUPLICATE,
) -> WorkflowHandle[Any, JobState]:
    """Start the job's workflow with its initial memo and search attributes (readable at once)."""
    initial = JobState.for_request(request, JobStatus.queued)
    attributes: list[SearchAttributePair[Any]] = [
        SearchAttributePair(DOWNLOAD_STATUS, JobStatus.queued.value),
        SearchAttributePair(OWNER, request.owner),
        SearchAttributePair(FILE_COUNT, len(request.file_ids)),
    ]
    if request.priority is not None:
        attributes.append(SearchAttributePair(DOWNLOAD_PRIORITY, request.priority))
    return await client.start_workflow(
        DOWNLOAD_WORKFLOW,
        request,
        id=request.job_id,
        task_queue=settings.temporal_task_queue,
        result_type=JobState,
        memo={STATE_MEMO_KEY: initial.memo()},
        search_attributes=TypedSearchAttributes(attributes),
        id_reuse_policy=id_reuse_policy,
        # Owners share workers fairly: the task queues dispatch round robin between fairness
        # keys (weighted), and the job's activities inherit its key. The priority key comes
        # first (lower sooner); the activities inherit it too.
        priority=Priority(
            priority_key=request.priority,
            fairness_key=fairness_key(request.owner),
            fairness_weight=settings.owner_weight(request.owner),
        ),
    )


def fairness_key(owner: str) -> str:
    """The owner itself, or a digest of it when longer than a fairness key may be (64 bytes)."""
    if len(owner.encode()) <= 64:
        return owner
    return "sha256:" + hashlib.sha256(owner.encode()).hexdigest()[:56]


async def ensure_cleanup_schedule(client: Client, settings: Settings) -> None:
    """Hourly archive expiry as a Temporal Schedule (visible and pausable in the Web UI)."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            CLEANUP_WORKFLOW,
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
