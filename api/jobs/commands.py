"""Job commands: start, retry and cancel a job's workflow. Each answers with the job read afresh
(`JobReads`), so the answer shows what the command did."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.jobs.quotas import OwnerQuotas
from api.jobs.reads import JobReads
from api.views import JobRecord
from core.config import Settings
from core.metrics import DOWNLOAD_JOBS
from core.observability import get_logger
from workflows.client import new_request, start_download
from workflows.models import DEFAULT_PRIORITY, DownloadRequest, JobStatus
from workflows.sealing import seal

log = get_logger("api.jobs")

# Job ids derived from (owner, Idempotency-Key): a repeated request finds the same workflow.
IDEMPOTENCY_NAMESPACE = uuid.UUID("6f1c1f4e-4a53-5d0e-9a57-6d6f776e6c64")


def new_job_id(owner: str, idempotency_key: str | None) -> str:
    if idempotency_key:
        return str(uuid.uuid5(IDEMPOTENCY_NAMESPACE, f"{owner}\n{idempotency_key}"))
    return str(uuid.uuid4())


class JobCommands:
    """Writes to jobs' workflows, read back through `reads` (whose snapshots they invalidate)."""

    def __init__(self, client: Client, settings: Settings, reads: JobReads) -> None:
        self.client, self.settings, self.reads = client, settings, reads
        self.quotas = OwnerQuotas(client, settings)

    async def start(
        self,
        *,
        owner: str,
        file_ids: list[int],
        callback_url: str | None,
        request_id: str | None,
        idempotency_key: str | None,
        priority: int | None = None,
        max_archive_bytes: int | None = None,
    ) -> JobRecord:
        """Start the job's workflow within the owner's quotas and priority ceiling; an id
        already in use returns that job (after a sanity check)."""
        job_id = new_job_id(owner, idempotency_key)
        request = new_request(
            self.settings,
            job_id,
            file_ids,
            owner=owner,
            callback_url=callback_url,
            request_id=request_id,
            priority=self._priority(owner, priority),
            max_archive_bytes=max_archive_bytes,
        )
        try:
            admission = await self.quotas.admit(owner, len(request.file_ids))
        except ApiError:
            if idempotency_key is None:
                raise
            # A repeated request for a job that exists is answered, whatever the quota says.
            with contextlib.suppress(ApiError):
                return self._same_request(await self.reads.describe(job_id, owner), request)
            raise
        try:
            await start_download(self.client, self.settings, request)
        except WorkflowAlreadyStartedError:
            await self.quotas.release(admission)
            return self._same_request(await self.reads.describe(job_id, owner), request)
        except BaseException:
            await self.quotas.release(admission)
            raise
        DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
        log.info("job started", jobId=job_id, files=len(request.file_ids), owner=owner)
        self.reads.snapshots.forget(job_id)
        return await self.reads.describe(job_id, owner)

    def _priority(self, owner: str, asked: int | None) -> int:
        """The job's priority: as asked, within the owner's ceiling (1 is the most urgent)."""
        ceiling = self.settings.priority_ceiling_of(owner)
        if asked is None:
            return max(DEFAULT_PRIORITY, ceiling)
        if asked < ceiling:
            raise ApiError(
                403,
                "priority_not_allowed",
                f"priority {asked} is more urgent than this caller may ask for: {ceiling} to 5 "
                "(1 is the most urgent)",
                details={"ceiling": ceiling},
            )
        return asked

    @staticmethod
    def _same_request(record: JobRecord, request: DownloadRequest) -> JobRecord:
        if [f.file_id for f in record.state.files] != request.file_ids:
            raise ApiError(
                409, "idempotency_conflict", "Idempotency-Key was used for a different request"
            )
        return record

    async def retry(self, job_id: str, owner: str) -> JobRecord:
        """Run a failed or cancelled job again under the same id, with its original input."""
        record = await self.reads.describe(job_id, owner)
        if record.view.status not in (JobStatus.failed, JobStatus.cancelled):
            raise ApiError.conflict(
                "only failed or cancelled jobs can be retried; "
                f"this one is {record.view.status.value}"
            )
        original = record.request
        if original is None:
            raise ApiError.not_found(job_id)
        # The same request, sealed again for its new start (the one `describe` trusted: sealed,
        # or from before sealing, and the caller's).
        request = seal(
            original.model_copy(update={"created_at": datetime.now(UTC).replace(microsecond=0)}),
            self.settings,
        )
        admission = await self.quotas.admit(owner, len(request.file_ids))
        try:
            # Only a run that did not complete may be replaced.
            await start_download(
                self.client,
                self.settings,
                request,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
            )
        except WorkflowAlreadyStartedError:
            # Retried concurrently by another request: report that run.
            await self.quotas.release(admission)
        except BaseException:
            await self.quotas.release(admission)
            raise
        else:
            DOWNLOAD_JOBS.labels(JobStatus.queued.value).inc()
            log.info("job retried", jobId=job_id)
        self.reads.snapshots.forget(job_id)
        return await self.reads.describe(job_id, owner)

    async def cancel(self, job_id: str, owner: str) -> JobRecord:
        """Request cancellation; wait briefly so the answer usually shows the job cancelled."""
        record = await self.reads.describe(job_id, owner)
        if record.view.status.terminal:
            raise ApiError.conflict(f"the job is already {record.view.status.value}")
        handle = self.client.get_workflow_handle(job_id)
        await handle.cancel(rpc_timeout=RPC_TIMEOUT)
        log.info("job cancel requested", jobId=job_id)
        # Well within the request timeout, so the answer is never cut off.
        wait_seconds = min(3.0, self.settings.request_timeout_ms / 2000)
        with contextlib.suppress(WorkflowFailureError, TimeoutError):
            await asyncio.wait_for(handle.result(), wait_seconds)
        self.reads.snapshots.forget(job_id)
        return await self.reads.describe(job_id, owner)
