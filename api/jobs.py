"""Job operations on Temporal: start (idempotent), retry, cancel, list; presigned links."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.storage import ObjectStore
from api.errors import ApiError
from api.schemas import JobLinks, JobList, JobSummary, JobView
from api.status import RPC_TIMEOUT, WORKFLOW_TYPE, JobRecord, describe_job, job_view
from config import Settings
from observability import DOWNLOAD_JOBS, get_logger
from workflows.client import new_request, start_download
from workflows.models import (
    STATE_MEMO_KEY,
    DownloadRequest,
    JobState,
    JobStatus,
)

log = get_logger("api.jobs")

# Job ids derived from (owner, Idempotency-Key): a repeated request finds the same workflow.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1f4e-4a53-5d0e-9a57-6d6f776e6c64")


def new_job_id(owner: str, idempotency_key: str | None) -> str:
    if idempotency_key:
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{owner}\n{idempotency_key}"))
    return str(uuid.uuid4())


def links(job_id: str) -> dict[str, str]:
    return JobLinks(
        status_url=f"/v1/download/status/{job_id}",
        subscribe_url=f"/v1/download/subscribe/{job_id}",
        details_url=f"/v1/download/{job_id}",
        file_url=f"/v1/download/{job_id}/file",
    ).model_dump()


async def start_job(
    client: Client,
    settings: Settings,
    *,
    job_id: str,
    owner: str,
    file_ids: list[int],
    callback_url: str | None,
    request_id: str | None,
) -> JobRecord:
    """Start the job's workflow; an id already in use returns that job (after a sanity check)."""
    request = new_request(
        settings,
        job_id,
        file_ids,
        owner=owner,
        callback_url=callback_url,
        request_id=request_id,
    )
    try:
        await start_download(client, settings, request)
    except WorkflowAlreadyStartedError:
        record = await describe_job(client, job_id, owner)
        if [f.file_id for f in record.state.files] != request.file_ids:
            raise ApiError(
                409, "idempotency_conflict", "Idempotency-Key was used for a different request"
            ) from None
        return record
    DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
    log.info("job started", jobId=job_id, files=len(request.file_ids), owner=owner)
    return await describe_job(client, job_id, owner)


async def retry_job(client: Client, settings: Settings, job_id: str, owner: str) -> JobRecord:
    """Run a failed or cancelled job again under the same id, with its original input."""
    record = await describe_job(client, job_id, owner)
    if record.view.status not in (JobStatus.failed, JobStatus.cancelled):
        raise ApiError.conflict(
            f"only failed or cancelled jobs can be retried; this one is {record.view.status.value}"
        )
    handle = client.get_workflow_handle(job_id)
    original = await _original_request(client, handle)
    request = original.model_copy(update={"created_at": datetime.now(UTC).replace(microsecond=0)})
    try:
        # Only a run that did not complete may be replaced.
        await start_download(
            client,
            settings,
            request,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
        )
    except WorkflowAlreadyStartedError:
        pass  # retried concurrently by another request: report that run
    else:
        DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
        log.info("job retried", jobId=job_id)
    return await describe_job(client, job_id, owner)


async def _original_request(client: Client, handle: WorkflowHandle[Any, Any]) -> DownloadRequest:
    async for event in handle.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
        payloads = event.workflow_execution_started_event_attributes.input.payloads
        (request,) = await client.data_converter.decode(payloads, [DownloadRequest])
        assert isinstance(request, DownloadRequest)
        return request
    raise ApiError.not_found(handle.id)


async def cancel_job(client: Client, job_id: str, owner: str, wait_seconds: float) -> JobRecord:
    """Request cancellation; wait briefly so the answer usually shows the job cancelled."""
    record = await describe_job(client, job_id, owner)
    if record.view.status.terminal:
        raise ApiError.conflict(f"the job is already {record.view.status.value}")
    handle = client.get_workflow_handle(job_id)
    await handle.cancel(rpc_timeout=RPC_TIMEOUT)
    log.info("job cancel requested", jobId=job_id)
    with contextlib.suppress(WorkflowFailureError, TimeoutError):
        await asyncio.wait_for(handle.result(), wait_seconds)
    return await describe_job(client, job_id, owner)


async def wait_for_result(
    client: Client, job_id: str, owner: str, seconds: float
) -> JobRecord | None:
    """The finished job, or None if it is still running after `seconds`."""
    handle = client.get_workflow_handle(job_id)
    try:
        await asyncio.wait_for(handle.result(), seconds)
    except TimeoutError:
        return None
    except WorkflowFailureError:
        pass  # failed or cancelled: the memo says why
    return await describe_job(client, job_id, owner)


def visibility_query(owner: str, status: JobStatus | None) -> str:
    quoted = owner.replace("\\", "\\\\").replace("'", "\\'")
    query = f"WorkflowType = '{WORKFLOW_TYPE}' AND Owner = '{quoted}'"
    if status is not None:
        query += f" AND DownloadStatus = '{status.value}'"
    return query


async def list_jobs(
    client: Client, owner: str, status: JobStatus | None, page_size: int, page_token: str | None
) -> JobList:
    query = visibility_query(owner, status)
    pages = client.list_workflows(
        query,
        page_size=page_size,
        next_page_token=_open_token(page_token, query) if page_token else None,
        rpc_timeout=RPC_TIMEOUT,
    )
    await pages.fetch_next_page()
    jobs = []
    for execution in pages.current_page or []:
        try:
            state = await execution.memo_value(STATE_MEMO_KEY, type_hint=JobState)
        except KeyError:
            continue
        view = job_view(state, execution.status, closed_at=execution.close_time)
        jobs.append(
            JobSummary(
                job_id=execution.id,
                status=view.status,
                total_files=view.total_files,
                created_at=view.created_at,
                completed_at=view.completed_at,
                error=view.error,
            )
        )
    next_token = pages.next_page_token
    return JobList(
        jobs=jobs, next_page_token=_seal_token(next_token, query) if next_token else None
    )


# Page tokens carry a digest of the query they continue, so a forged or foreign token is a 400
# here instead of an opaque server error from Temporal.
def _seal_token(raw: bytes, query: str) -> str:
    return base64.urlsafe_b64encode(_digest(raw, query) + raw).decode()


def _open_token(token: str, query: str) -> bytes:
    try:
        sealed = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        sealed = b""
    digest, raw = sealed[:12], sealed[12:]
    if not raw or not hmac.compare_digest(digest, _digest(raw, query)):
        raise ApiError(400, "validation_error", "pageToken is not a valid page token")
    return raw


def _digest(raw: bytes, query: str) -> bytes:
    return hashlib.sha256(query.encode() + b"\n" + raw).digest()[:12]


def with_download(
    view: JobView, state: JobState, store: ObjectStore, settings: Settings
) -> JobView:
    """A fresh presigned URL for a completed job (signed for S3_PUBLIC_ENDPOINT)."""
    if view.status is not JobStatus.completed or not state.archive_key:
        return view
    expiry = timedelta(seconds=settings.presign_expiry_seconds)
    url = store.presign(state.archive_key, expiry, filename=f"{view.job_id}.zip")
    expires = (datetime.now(UTC) + expiry).replace(microsecond=0)
    return view.model_copy(update={"download_url": url, "expires_at": expires})
