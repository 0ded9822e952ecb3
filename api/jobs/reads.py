"""Reading jobs: how a job is found (workflow type, owner, memo, completed result, pending
activities) and shown with its download links, and the caches that let many readers share one
Temporal read.

Routes and the job watchers read through `JobReads`, so how a job is found is decided once, here;
`api.views` turns what is read into the client's view.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from datetime import UTC, timedelta
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.caches import CompletedStates, Pace, PresignedLinks, Snapshots
from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.schemas import FileView, JobView
from api.views import JobRecord, PendingActivity, job_view
from core.config import Settings
from core.metrics import STATUS_CLOSE_WAITS, STATUS_DESCRIBES
from core.storage import ObjectStore
from workflows import names
from workflows.models import (
    ANONYMOUS_OWNER,
    DownloadRequest,
    FileStatus,
    JobState,
    JobStatus,
    ProgressSummary,
)
from workflows.sealing import is_sealed, predates_sealing

# How old a shared `describe()` answer may be: a quarter of a second, the event streams' pace.
SNAPSHOT_MAX_AGE = 0.25
# Open runs remembered by job id (about 150 bytes each), so describes can name the run.
OPEN_RUNS_KEPT = 10_000
# Runs whose start input was read and judged (a request of up to 1 000 ids is ~10 kB).
RUN_REQUESTS_KEPT = 10_000


class JobReads:
    """The job reads of one API process: its Temporal client, settings, store and caches."""

    def __init__(self, client: Client, settings: Settings, store: ObjectStore) -> None:
        self.client, self.settings, self.store = client, settings, store
        self.snapshots = Snapshots(self._describe, max_age=SNAPSHOT_MAX_AGE)
        self.completed = CompletedStates(settings.completed_cache_mb << 20)
        self.links = PresignedLinks(store, timedelta(seconds=settings.presign_expiry_seconds))
        self.pace = Pace(settings.estimated_ms_per_file)
        self.open_runs: OrderedDict[str, str] = OrderedDict()  # job id -> run id, newest last
        # run id -> its trusted request and archive run id (None: not a job of ours)
        self.run_requests: OrderedDict[str, tuple[DownloadRequest, str | None] | None] = (
            OrderedDict()
        )
        # archive keys of running runs found written, with their sizes
        self.written: OrderedDict[str, int] = OrderedDict()

    async def describe(self, job_id: str, owner: str) -> JobRecord:
        """The caller's job or 404 (unknown ids and other owners' jobs look the same).

        Concurrent readers of one job share one `describe()` and its answer for up to
        SNAPSHOT_MAX_AGE: status pollers and the job's event-stream watcher alike.
        """
        record = await self.snapshots.get(job_id)
        if record.state.owner != owner:
            raise ApiError.not_found(job_id)
        return record

    def offer(self, record: JobRecord) -> None:
        """A job's live record from the progress bus: status readers share it while it is fresh,
        as they share a `describe()` (never over a terminal one)."""
        self.snapshots.offer(
            record.view.job_id, record, keep=lambda held: held.view.status.terminal
        )

    async def _describe(self, job_id: str) -> JobRecord:
        """The job as its current run tells it. Temporal-side data is no authority: the owner is
        the one the run's sealed request names, the archive key is derived from the run, and the
        job is completed only when the run closed with a result, or when the archive of that very
        run is in S3 (the run is still notifying its callback)."""
        desc = await self._current_run(job_id)
        if desc.workflow_type != names.DOWNLOAD_WORKFLOW:
            raise ApiError.not_found(job_id)
        request, sealed_run = await self.run_request(job_id, desc)
        state = await _memo_state(desc, job_id)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            state = await self.completed_state(job_id, desc.run_id)
        run_id = archive_run(state, sealed_run, desc.run_id)
        archive_key = self.settings.archive_key(job_id, run_id)
        if desc.status != WorkflowExecutionStatus.COMPLETED and state.status is JobStatus.completed:
            state = await self._confirmed(state, archive_key)
        state = self._trusted_state(state, job_id, request, run_id)
        activities = await self.pending_activities(desc)
        pace = self.pace.observed_ms_per_file
        view = job_view(state, desc.status, activities, desc.close_time, pace)
        return JobRecord(
            state=state, view=view, run_started=desc.start_time, run_id=run_id, request=request
        )

    async def run_request(
        self, job_id: str, run: WorkflowExecution
    ) -> tuple[DownloadRequest, str | None]:
        """The request the run was started with, if the API sealed it for this job, with the
        run's id; a run from before sealing (started before REQUEST_SEAL_LEGACY_BEFORE, by
        Temporal's clock) with None. Any other run is no job of ours: 404. Read once per run and
        process (`run` is a described or a listed run)."""
        if run.run_id not in self.run_requests:
            request = await self.start_request(job_id, run.run_id)
            trusted: tuple[DownloadRequest, str | None] | None = None
            if request is None or request.job_id != job_id:
                trusted = None
            elif request.seal is not None:
                trusted = (request, run.run_id) if is_sealed(request, self.settings) else None
            elif predates_sealing(run.start_time, self.settings):
                trusted = (request, None)
            self.run_requests[run.run_id] = trusted
            if len(self.run_requests) > RUN_REQUESTS_KEPT:
                self.run_requests.popitem(last=False)
        found = self.run_requests[run.run_id]
        if found is None:
            raise ApiError.not_found(job_id)
        return found

    async def start_request(self, job_id: str, run_id: str | None) -> DownloadRequest | None:
        """The input a run of the job was started with (its first history event), if it is a
        `DownloadRequest` at all."""
        handle = self.client.get_workflow_handle(job_id, run_id=run_id)
        async for event in handle.fetch_history_events(page_size=1, rpc_timeout=RPC_TIMEOUT):
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            try:
                (request,) = await self.client.data_converter.decode(payloads, [DownloadRequest])
            except Exception:  # an input of another shape: not a job the API started
                return None
            return request if isinstance(request, DownloadRequest) else None
        return None

    def _trusted_state(
        self, state: JobState, job_id: str, request: DownloadRequest, run_id: str | None
    ) -> JobState:
        """The run's state with what Temporal-side data cannot decide: the job id, the owner the
        sealed request names, the archive key derived from the run, and no more parts than
        the request has ids (every part holds a file at least)."""
        archive_key = self.settings.archive_key(job_id, run_id)
        return state.model_copy(
            update={
                "job_id": job_id,
                "owner": request.owner,
                "archive_key": archive_key if state.status is JobStatus.completed else None,
                "archive_sizes": state.archive_sizes[: len(request.file_ids)]
                if state.archive_sizes is not None
                else None,
            }
        )

    async def _confirmed(self, state: JobState, archive_key: str) -> JobState:
        """A running run's memo says completed: believed once the archive of this run is in S3
        (only a worker that verified the run's seal writes it); else the job is processing."""
        if archive_key not in self.written:
            info = await asyncio.to_thread(self.store.stat_or_none, archive_key)
            if info is None:
                return state.model_copy(update={"status": JobStatus.processing})
            self.written[archive_key] = info.size
            if len(self.written) > RUN_REQUESTS_KEPT:
                self.written.popitem(last=False)
        return state.model_copy(update={"archive_size": self.written[archive_key]})

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
        self._keep_completed(job_id, run_id, state)
        return state

    def _keep_completed(self, job_id: str, run_id: str | None, state: JobState) -> None:
        """A completed run's result, read once: cached, and its pace observed."""
        self.completed.put(job_id, run_id, state)
        self.pace.observe(state)

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
            started_at = act.last_started_time.ToDatetime(UTC) if started else None
            result.append(
                PendingActivity(
                    name=name, started=started, progress=progress, started_at=started_at
                )
            )
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
        update: dict[str, Any] = {"files": [self.file_link(f) for f in view.files]}
        keys = self.archive_keys(record)
        if view.status is JobStatus.completed and keys:
            links = [
                self.links.get(key, archive_filename(view.job_id, number, len(keys)))
                for number, key in enumerate(keys, 1)
            ]
            update.update(
                download_url=links[0][0],
                expires_at=links[0][1],
                download_urls=[url for url, _ in links],
                archive_sizes=state.archive_sizes or [state.archive_size or 0],
            )
        return view.model_copy(update=update)

    def archive_keys(self, record: JobRecord) -> list[str]:
        """The keys of a completed run's archive parts, derived from the job id, the run id and
        the part numbers (only their count is read from the run's result). Runs of earlier
        versions, which recorded no part sizes, wrote one archive under the job id alone."""
        state = record.state
        if not state.archive_key:
            return []
        if record.run_id is None:
            return [self.settings.archive_key(state.job_id)]
        return [
            self.settings.archive_key(state.job_id, record.run_id, number)
            for number in range(1, len(state.archive_sizes or [0]) + 1)
        ]

    def file_link(self, f: FileView) -> FileView:
        """A completed file with a fresh presigned URL of its own source; others as they are."""
        if f.status is not FileStatus.completed:
            return f
        url, _ = self.links.get(self.settings.source_key(f.file_id), f"{f.file_id}.zip")
        return f.model_copy(update={"download_url": url})

    async def details(self, job_id: str, owner: str) -> JobView:
        """The job with a fresh download URL, and 410 once its archive has expired."""
        record = await self.describe(job_id, owner)
        view = self.with_download(record)
        keys = self.archive_keys(record)
        if view.status is JobStatus.completed and keys:
            infos = await asyncio.gather(
                *(asyncio.to_thread(self.store.stat_or_none, key) for key in keys)
            )
            sizes = [info.size for info in infos if info is not None]
            if len(sizes) != len(keys):
                raise ApiError(410, "gone", "the archive has expired; retry is not possible")
            view = view.model_copy(update={"archive_size": sizes[0], "archive_sizes": sizes})
        return view

    async def closed(self, record: JobRecord, owner: str) -> JobRecord:
        """`record`'s job once the run it was read from closes: one long poll of that run's
        history for its close event, parked in Temporal however long the run takes (the caller
        bounds the wait). A completed run's record is built from the result the poll returns,
        with the request already judged for this run: no `describe()`. A run that failed or was
        cancelled is described (its memo says why)."""
        job_id = record.view.job_id
        run_id = self.open_runs.get(job_id)
        trusted = self.run_requests.get(run_id) if run_id is not None else None
        handle = self.client.get_workflow_handle(job_id, run_id=run_id, result_type=JobState)
        STATUS_CLOSE_WAITS.inc()
        state: JobState | None = None
        with contextlib.suppress(WorkflowFailureError):  # failed or cancelled: the memo says why
            state = await handle.result(follow_runs=False)
        if state is None or trusted is None or run_id is None:
            self.snapshots.forget(job_id)
            return await self.describe(job_id, owner)
        self.open_runs.pop(job_id, None)
        self._keep_completed(job_id, run_id, state)
        request, sealed_run = trusted
        if request.owner != owner:
            raise ApiError.not_found(job_id)
        archive = archive_run(state, sealed_run, run_id)
        done = self._trusted_state(state, job_id, request, archive)
        view = job_view(done, WorkflowExecutionStatus.COMPLETED, (), state.completed_at)
        closed = JobRecord(
            state=done, view=view, run_started=record.run_started, run_id=archive, request=request
        )
        self.offer(closed)
        return closed

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


def archive_run(state: JobState, sealed_run: str | None, run_id: str) -> str | None:
    """The run a job's archive is named after: its sealed run; for runs from before sealing,
    the run itself if its version recorded the sizes of parts named after the run, else none
    (one archive per job)."""
    return sealed_run or (run_id if state.archive_sizes is not None else None)


def archive_filename(job_id: str, part: int, parts: int) -> str:
    """The name a browser saves part `part` of `parts` under."""
    return f"{job_id}.zip" if parts == 1 else f"{job_id}.part{part}.zip"


async def _memo_state(desc: WorkflowExecutionDescription, job_id: str) -> JobState:
    try:
        state: JobState = await desc.memo_value(names.STATE_MEMO_KEY, type_hint=JobState)
    except KeyError:
        # Started without our memo (e.g. by hand with the CLI): nothing known yet but the id.
        started = desc.start_time
        owner = desc.typed_search_attributes.get(names.OWNER) or ANONYMOUS_OWNER
        state = JobState(job_id=job_id, owner=owner, created_at=started, updated_at=started)
    return state
