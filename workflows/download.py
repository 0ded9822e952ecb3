"""`DownloadWorkflow`: resolve the requested files, package them into one archive, notify.

Orchestration only; every side effect is an activity, called by its name in the contract
(`workflows.names`), so no activity code is imported here. The job state is kept in the memo
(readable with no worker running) and in the `DownloadStatus` search attribute (for visibility
queries).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from core import jobmetrics
    from workflows.errors import (
        NON_RETRYABLE_ERRORS,
        ErrorType,
        describe_failure,
        failure_details,
        is_cancellation,
        nothing_to_package,
        root_message,
    )
    from workflows.models import (
        CallbackNotice,
        DownloadRequest,
        FileState,
        FileStatus,
        JobState,
        JobStatus,
        JobTally,
        PackageInput,
        PackageResult,
        PackagingRecord,
        ResolveInput,
        ResolveResult,
        RetryOptions,
        SourceFile,
        available_sources,
    )
    from workflows.names import (
        DOWNLOAD_STATUS,
        DOWNLOAD_WORKFLOW,
        PACKAGE_ARCHIVE,
        PACKAGING_STOPPED_SIGNAL,
        RESOLVE_FILES,
        SEND_CALLBACK,
        STATE_MEMO_KEY,
        STATUS_QUERY,
        TALLY_MEMO_KEY,
        callback_task_queue,
    )


# Before RESOLVE_WHILE_PACKAGING, id lists up to this length were resolved by the packaging
# activity itself and longer ones by a heartbeating activity of their own; runs started then
# replay that way.
INLINE_RESOLVE_LIMIT = 50
RESOLVE_WHILE_PACKAGING = "resolve-while-packaging"
# Since then a completed job's counts are in its memo, for lists.
TALLY_IN_MEMO = "tally-in-memo"


def interruptions_policy(storage: RetryOptions) -> RetryPolicy:
    """Packaging attempts are retried however often a worker is lost or handed over: the
    activity counts storage failures itself (`PackageInput.storage_retry`) and makes them
    final when the job's storage attempts are used up; the deadline bounds the rest."""
    return RetryPolicy(
        maximum_attempts=0,
        initial_interval=timedelta(seconds=1),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=storage.maximum_interval_seconds),
        non_retryable_error_types=NON_RETRYABLE_ERRORS,
    )


@workflow.defn(name=DOWNLOAD_WORKFLOW)
class DownloadWorkflow:
    def __init__(self) -> None:
        self._state: JobState | None = None
        self._stopped: PackagingRecord | None = None

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> JobState:
        if self._state is None:
            raise ApplicationError("workflow has not started yet")
        return self._state

    @workflow.signal(name=PACKAGING_STOPPED_SIGNAL)
    def packaging_stopped(self, record: PackagingRecord) -> None:
        """What the packaging attempt that stopped the job had done; kept in its final state."""
        self._stopped = record

    @workflow.run
    async def run(self, payload: object) -> JobState:
        # Taken as plain JSON and checked here: anyone who reaches Temporal can start this
        # workflow, and a bad input must fail the run at once, not its workflow task forever.
        request = DownloadRequest.checked(payload, workflow.info().workflow_id)
        self._state = state = JobState.for_request(
            request, JobStatus.processing, started_at=workflow.now()
        )
        retry = request.options.retry.policy()
        try:
            if workflow.patched(RESOLVE_WHILE_PACKAGING) or (
                len(request.file_ids) <= INLINE_RESOLVE_LIMIT
            ):
                # The packaging attempt resolves the ids itself, as it reads them: the first
                # answer for each source says its size. Until it ends the memo written at start
                # stands, and the API reads progress from the running activity.
                sources: list[SourceFile] = []
                file_ids: list[int] | None = request.file_ids
            else:
                sources = await self._resolve(request, retry)
                file_ids = None
            result: PackageResult = await workflow.execute_activity(
                PACKAGE_ARCHIVE,
                PackageInput(
                    job_id=request.job_id,
                    sources=sources,
                    file_ids=file_ids,
                    compression=request.options.compression,
                    mtime=request.created_at,
                    request_id=request.request_id,
                    storage_retry=request.options.retry,
                    max_archive_bytes=request.options.max_archive_bytes,
                    keys_per_run=True,
                    request=request,
                ),
                start_to_close_timeout=timedelta(seconds=request.options.package_timeout_seconds),
                schedule_to_close_timeout=timedelta(seconds=request.options.deadline_seconds),
                # Cancellation and lost workers are only noticed through heartbeats.
                heartbeat_timeout=timedelta(seconds=request.options.heartbeat_timeout_seconds),
                retry_policy=interruptions_policy(request.options.retry),
                # Wait for the activity to abort its upload before the job reports cancelled.
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                result_type=PackageResult,
            )
            if result.files_packaged == 0:
                # Every source vanished between resolving and packaging.
                raise nothing_to_package()
            self._completed(result)
        except asyncio.CancelledError:
            self._keep_record()
            self._finish(JobStatus.cancelled, "cancelled")
            await self._notify(request)
            raise
        except (ActivityError, ApplicationError) as err:
            self._keep_record()
            if is_cancellation(err):
                self._finish(JobStatus.cancelled, "cancelled")
                await self._notify(request)
                raise
            message, kind = describe_failure(err)
            if kind == ErrorType.nothing_to_package.value:
                self._record_unavailable(err)
            self._finish(JobStatus.failed, message, kind)
            await self._notify(request)
            raise ApplicationError(message, type=kind, non_retryable=True) from err
        await self._notify(request)
        return state

    async def _resolve(self, request: DownloadRequest, retry: RetryPolicy) -> list[SourceFile]:
        """Resolve a long id list in its own heartbeating activity, then publish the result."""
        state = self._require_state()
        resolved: ResolveResult = await workflow.execute_activity(
            RESOLVE_FILES,
            ResolveInput(
                job_id=request.job_id,
                file_ids=request.file_ids,
                request_id=request.request_id,
                request=request,
            ),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(seconds=request.options.heartbeat_timeout_seconds),
            retry_policy=retry,
            result_type=ResolveResult,
        )
        state.files = resolved.files
        sources = available_sources(resolved.files)
        state.total_bytes = sum(s.size for s in sources)
        if not sources:
            raise nothing_to_package()
        self._publish()
        return sources

    def _completed(self, result: PackageResult) -> None:
        state = self._require_state()
        if result.resolved is not None:
            state.files = result.resolved
            state.total_bytes = result.bytes_packaged
        missing = set(result.missing)
        for f in state.files:
            if f.status is FileStatus.failed:
                continue
            if f.file_id in missing:
                f.status, f.error = FileStatus.failed, "not found"
                f.error_type = ErrorType.file_not_found.value
            else:
                f.status = FileStatus.completed
                f.sha256 = result.digests.get(f.file_id)
        state.bytes_processed = result.bytes_packaged
        state.started_at = result.started_at or state.started_at
        state.archive_key = result.archive_key
        state.archive_size = result.archive_size
        if result.parts:
            state.archive_sizes = [part.size for part in result.parts]
        self._finish(JobStatus.completed)

    def _keep_record(self) -> None:
        """What packaging had done before the job stopped: files, sizes, bytes moved."""
        record, state = self._stopped, self._require_state()
        if record is None:
            return
        done = {f.file_id: f for f in record.files}
        state.files = [done.get(f.file_id, f) for f in state.files]
        state.bytes_processed = record.bytes_done
        state.total_bytes = record.total_bytes or state.total_bytes
        state.started_at = record.started_at or state.started_at

    def _record_unavailable(self, err: BaseException) -> None:
        """Per-file reasons sent along by a packaging attempt that found nothing to package."""
        files = failure_details(err)
        if isinstance(files, list):
            self._require_state().files = [FileState.model_validate(f) for f in files]

    def _finish(self, status: JobStatus, error: str | None = None, kind: str | None = None) -> None:
        state = self._require_state()
        state.status = status
        state.current_file = None
        if status is not JobStatus.completed:
            state.error, state.error_type = error, kind
            state.archive_key = None
            state.archive_sizes = None
        state.completed_at = workflow.now()
        # A completed job's final state is the workflow result, readable from history; the memo
        # is still needed when a callback keeps the run open after the job is decided.
        self._publish(memo=status is not JobStatus.completed or state.callback_url is not None)
        if status is JobStatus.completed and workflow.patched(TALLY_IN_MEMO):
            tally = JobTally(
                completed_files=state.completed_files,
                failed_files=state.failed_files,
                total_bytes=state.total_bytes,
            )
            workflow.upsert_memo({TALLY_MEMO_KEY: tally})
        # The SDK meter is replay-safe; the worker exports it with its Prometheus metrics.
        meter, labels = workflow.metric_meter(), {jobmetrics.STATUS_LABEL: status.value}
        jobs, duration = jobmetrics.DOWNLOAD_JOBS, jobmetrics.DOWNLOAD_JOB_DURATION
        meter.create_counter(jobs.name, jobs.description).add(1, labels)
        meter.create_histogram_float(duration.name, duration.description, duration.unit).record(
            (state.completed_at - state.created_at).total_seconds(), labels
        )

    def _publish(self, *, memo: bool = True) -> None:
        """Make the state visible without a worker: memo for the API, search attribute for lists."""
        state = self._require_state()
        state.updated_at = workflow.now()
        if memo:
            workflow.upsert_memo({STATE_MEMO_KEY: state.memo()})
        workflow.upsert_search_attributes([DOWNLOAD_STATUS.value_set(state.status.value)])

    async def _notify(self, request: DownloadRequest) -> None:
        """Tell the caller's callback URL about the terminal state; never fails the job."""
        if not request.callback_url:
            return
        state = self._require_state()
        notice = CallbackNotice(
            url=request.callback_url,
            owner=request.owner,
            delivery_id=f"{state.job_id}:{workflow.info().run_id}:{state.status.value}",
            request=request,
            payload={
                "jobId": state.job_id,
                "status": state.status.value,
                "totalFiles": len(state.files),
                "completedFiles": state.completed_files,
                "failedFiles": state.failed_files,
                "error": state.error,
                "completedAt": state.completed_at.isoformat() if state.completed_at else None,
            },
        )
        try:
            # Shielded: a cancelled job still reports that it was cancelled.
            await asyncio.shield(
                workflow.execute_activity(
                    SEND_CALLBACK,
                    notice,
                    task_queue=callback_task_queue(workflow.info().task_queue),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=RetryPolicy(
                        maximum_attempts=5,
                        initial_interval=timedelta(seconds=2),
                        non_retryable_error_types=[ErrorType.callback_refused.value],
                    ),
                    result_type=int,
                )
            )
        except ActivityError as err:
            workflow.logger.warning("callback failed: %s", root_message(err))

    def _require_state(self) -> JobState:
        assert self._state is not None
        return self._state
