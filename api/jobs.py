"""Every Temporal read and write for jobs, in one object of the API's services (`api.services`).

Routes and the SSE watchers go through `JobService`, so how a job is found (workflow type, owner,
memo, completed result, pending activities), started, retried, cancelled and listed is decided
once, here; `api.views` turns what is read into the client's view.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import uuid
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.caches import CompletedStates, Pace, PresignedLinks, Snapshots
from api.errors import ApiError
from api.schemas import JobList, JobSummary, JobView
from api.views import JobRecord, PendingActivity, job_view
from core.config import Settings
from core.metrics import DOWNLOAD_JOBS, STATUS_DESCRIBES
from core.observability import get_logger
from core.storage import ObjectStore
from workflows import names
from workflows.client import new_request, start_download
from workflows.models import (
    ANONYMOUS_OWNER,
    DownloadRequest,
    FileStatus,
    JobState,
    JobStatus,
    ProgressSummary,
)

log = get_logger("api.jobs")

# How old a shared `describe()` answer may be: a quarter of a second, the event streams' pace.
SNAPSHOT_MAX_AGE = 0.25
RPC_TIMEOUT = timedelta(seconds=10)
# Open runs remembered by job id (about 150 bytes each), so describes can name the run.
OPEN_RUNS_KEPT = 10_000
# Job ids derived from (owner, Idempotency-Key): a repeated request finds the same workflow.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1f4e-4a53-5d0e-9a57-6d6f776e6c64")


def new_job_id(owner: str, idempotency_key: str | None) -> str:
    if idempotency_key:
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{owner}\n{idempotency_key}"))
    return str(uuid.uuid4())


class JobService:
    """The jobs of one API process: its Temporal client, settings, store and completed states."""

    def __init__(self, client: Client, settings: Settings, store: ObjectStore) -> None:
        self.client, self.settings, self.store = client, settings, store
        self.snapshots = Snapshots(self._describe, max_age=SNAPSHOT_MAX_AGE)
        self.completed = CompletedStates(settings.completed_cache_mb << 20)
        self.links = PresignedLinks(store, timedelta(seconds=settings.presign_expiry_seconds))
        self.pace = Pace(settings.estimated_ms_per_file)
        self.open_runs: OrderedDict[str, str] = OrderedDict()  # job id -> run id, newest last

    # --- reading ---
    async def describe(self, job_id: str, owner: str) -> JobRecord:
        """The caller's job or 404 (unknown ids and other owners' jobs look the same).

        Concurrent readers of one job share one `describe()` and its answer for up to
        SNAPSHOT_MAX_AGE: status pollers and the job's event-stream watcher alike.
        """
        record = await self.snapshots.get(job_id)
        if record.state.owner != owner:
            raise ApiError.not_found(job_id)
        return record

    async def _describe(self, job_id: str) -> JobRecord:
        desc = await self._current_run(job_id)
        if desc.workflow_type != names.DOWNLOAD_WORKFLOW:
            raise ApiError.not_found(job_id)
        state = await _memo_state(desc, job_id)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            state = await self.completed_state(job_id, desc.run_id)
        activities = await self.pending_activities(desc)
        view = job_view(state, desc.status, activities, desc.close_time)
        return JobRecord(state=state, view=view, run_started=desc.start_time)

    async def _current_run(self, job_id: str) -> WorkflowExecutionDescription:
        """The job's current run. Asked by its run id while that run was last seen open, which
        spares Temporal its costliest read for a describe (the lookup of the current run)."""
        run_id = self.open_runs.pop(job_id, None)
        desc = await self._describe_or_none(job_id, run_id) if run_id else None
        if desc is None or desc.status != WorkflowExecutionStatus.RUNNING:
            # Not known, or that run has closed: a newer one (a retry) may run under the same id.
            desc = await self._describe_or_none(job_id, None)
        if desc is None:
            raise ApiError.not_found(job_id)
        if desc.status == WorkflowExecutionStatus.RUNNING:
            self.open_runs[job_id] = desc.run_id
            if len(self.open_runs) > OPEN_RUNS_KEPT:
                self.open_runs.popitem(last=False)
        return desc

    async def _describe_or_none(
        self, job_id: str, run_id: str | None
    ) -> WorkflowExecutionDescription | None:
        STATUS_DESCRIBES.inc()
        try:
            handle = self.client.get_workflow_handle(job_id, run_id=run_id)
            return await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                return None
            raise

    async def completed_state(self, job_id: str, run_id: str | None) -> JobState:
        """A completed run's final state: its result, read from history (no worker needed)."""
        if (cached := self.completed.get(job_id, run_id)) is not None:
            return cached
        handle = self.client.get_workflow_handle(job_id, run_id=run_id, result_type=JobState)
        state: JobState = await handle.result(rpc_timeout=RPC_TIMEOUT)
        self.completed.put(job_id, run_id, state)
        self.pace.observe(state)
        return state

    async def pending_activities(self, desc: WorkflowExecutionDescription) -> list[PendingActivity]:
        result = []
        for act in desc.raw_description.pending_activities:
            name = act.activity_type.name
            started = act.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
            progress = None
            if name == names.PACKAGE_ARCHIVE and act.heartbeat_details.payloads:
                try:
                    (progress,) = await self.client.data_converter.decode(
                        act.heartbeat_details.payloads, [ProgressSummary]
                    )
                except Exception:  # details of another shape carry no progress
                    progress = None
            result.append(PendingActivity(name=name, started=started, progress=progress))
        return result

    def status_json(self, record: JobRecord) -> bytes:
        """The status answer (`JobView` with download links) as JSON, encoded once per snapshot
        and shared by every poller of the job while the snapshot is fresh."""
        body = record.encoded.get("status")
        if body is None:
            body = self.with_download(record).model_dump_json(by_alias=True).encode()
            record.encoded["status"] = body
        return body

    def with_download(self, record: JobRecord) -> JobView:
        """Fresh presigned URLs (signed for S3_PUBLIC_ENDPOINT): the archive of a completed job,
        and each completed file's own source."""
        view, state = record.view, record.state
        files = [
            f.model_copy(update={"download_url": self._source_link(f.file_id)})
            if f.status is FileStatus.completed
            else f
            for f in view.files
        ]
        update: dict[str, Any] = {"files": files}
        if view.status is JobStatus.completed and state.archive_key:
            url, expires = self.links.get(state.archive_key, f"{view.job_id}.zip")
            update.update(download_url=url, expires_at=expires)
        return view.model_copy(update=update)

    def _source_link(self, file_id: int) -> str:
        url, _ = self.links.get(self.settings.source_key(file_id), f"{file_id}.zip")
        return url

    async def details(self, job_id: str, owner: str) -> JobView:
        """The job with a fresh download URL, and 410 once its archive has expired."""
        record = await self.describe(job_id, owner)
        view = self.with_download(record)
        if view.status is JobStatus.completed and record.state.archive_key:
            info = await asyncio.to_thread(self.store.stat_or_none, record.state.archive_key)
            if info is None:
                raise ApiError(410, "gone", "the archive has expired; retry is not possible")
            view = view.model_copy(update={"archive_size": info.size})
        return view

    async def wait_for_result(self, job_id: str, owner: str, seconds: float) -> JobRecord | None:
        """The finished job, or None if it is still running after `seconds`."""
        handle = self.client.get_workflow_handle(job_id)
        try:
            await asyncio.wait_for(handle.result(), seconds)
        except TimeoutError:
            return None
        except WorkflowFailureError:
            pass  # failed or cancelled: the memo says why
        self.snapshots.forget(job_id)
        return await self.describe(job_id, owner)

    async def list_jobs(
        self, owner: str, status: JobStatus | None, page_size: int, page_token: str | None
    ) -> JobList:
        query = visibility_query(owner, status)
        pages = self.client.list_workflows(
            query,
            page_size=page_size,
            next_page_token=_open_token(page_token, query) if page_token else None,
            rpc_timeout=RPC_TIMEOUT,
        )
        await pages.fetch_next_page()
        jobs = []
        for execution in pages.current_page or []:
            try:
                state = await execution.memo_value(names.STATE_MEMO_KEY, type_hint=JobState)
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

    async def count_running(self, rpc_timeout: timedelta) -> int:
        """Jobs waiting or running, from Temporal visibility."""
        query = f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND ExecutionStatus = 'Running'"
        count = await self.client.count_workflows(query, rpc_timeout=rpc_timeout)
        return count.count

    # --- writing ---
    async def start(
        self,
        *,
        owner: str,
        file_ids: list[int],
        callback_url: str | None,
        request_id: str | None,
        idempotency_key: str | None,
    ) -> JobRecord:
        """Start the job's workflow; an id already in use returns that job (after a sanity check)."""
        job_id = new_job_id(owner, idempotency_key)
        request = new_request(
            self.settings,
            job_id,
            file_ids,
            owner=owner,
            callback_url=callback_url,
            request_id=request_id,
        )
        try:
            await start_download(self.client, self.settings, request)
        except WorkflowAlreadyStartedError:
            record = await self.describe(job_id, owner)
            if [f.file_id for f in record.state.files] != request.file_ids:
                raise ApiError(
                    409, "idempotency_conflict", "Idempotency-Key was used for a different request"
                ) from None
            return record
        DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
        log.info("job started", jobId=job_id, files=len(request.file_ids), owner=owner)
        self.snapshots.forget(job_id)
        return await self.describe(job_id, owner)

    async def retry(self, job_id: str, owner: str) -> JobRecord:
        """Run a failed or cancelled job again under the same id, with its original input."""
        record = await self.describe(job_id, owner)
        if record.view.status not in (JobStatus.failed, JobStatus.cancelled):
            raise ApiError.conflict(
                "only failed or cancelled jobs can be retried; "
                f"this one is {record.view.status.value}"
            )
        handle = self.client.get_workflow_handle(job_id)
        original = await self._original_request(handle)
        request = original.model_copy(
            update={"created_at": datetime.now(UTC).replace(microsecond=0)}
        )
        try:
            # Only a run that did not complete may be replaced.
            await start_download(
                self.client,
                self.settings,
                request,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        except WorkflowAlreadyStartedError:
            pass  # retried concurrently by another request: report that run
        else:
            DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
            log.info("job retried", jobId=job_id)
        self.snapshots.forget(job_id)
        return await self.describe(job_id, owner)

    async def _original_request(self, handle: WorkflowHandle[Any, Any]) -> DownloadRequest:
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            (request,) = await self.client.data_converter.decode(payloads, [DownloadRequest])
            assert isinstance(request, DownloadRequest)
            return request
        raise ApiError.not_found(handle.id)

    async def cancel(self, job_id: str, owner: str) -> JobRecord:
        """Request cancellation; wait briefly so the answer usually shows the job cancelled."""
        record = await self.describe(job_id, owner)
        if record.view.status.terminal:
            raise ApiError.conflict(f"the job is already {record.view.status.value}")
        handle = self.client.get_workflow_handle(job_id)
        await handle.cancel(rpc_timeout=RPC_TIMEOUT)
        log.info("job cancel requested", jobId=job_id)
        # Well within the request timeout, so the answer is never cut off.
        wait_seconds = min(3.0, self.settings.request_timeout_ms / 2000)
        with contextlib.suppress(WorkflowFailureError, TimeoutError):
            await asyncio.wait_for(handle.result(), wait_seconds)
        self.snapshots.forget(job_id)
        return await self.describe(job_id, owner)


async def _memo_state(desc: WorkflowExecutionDescription, job_id: str) -> JobState:
    try:
        state: JobState = await desc.memo_value(names.STATE_MEMO_KEY, type_hint=JobState)
    except KeyError:
        # Started without our memo (e.g. by hand with the CLI): nothing known yet but the id.
        started = desc.start_time
        owner = desc.typed_search_attributes.get(names.OWNER) or ANONYMOUS_OWNER
        state = JobState(job_id=job_id, owner=owner, created_at=started, updated_at=started)
    return state


def visibility_query(owner: str, status: JobStatus | None) -> str:
    quoted = owner.replace("\\", "\\\\").replace("'", "\\'")
    query = f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND {names.OWNER.name} = '{quoted}'"
    if status is not None:
        query += f" AND {names.DOWNLOAD_STATUS.name} = '{status.value}'"
    return query


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
