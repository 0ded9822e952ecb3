"""Reading jobs: how a job is found (workflow type, owner, memo, completed result, pending
activities) and shown with its download links, and the caches that let many readers share one
Temporal read.

Routes and the job watchers read through `JobReads`, so how a job is found is decided once, here;
`api.views` turns what is read into the client's view.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import UTC, timedelta
from typing import Any

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.service import RPCError, RPCStatusCode

from api.caches import CompletedStates, Pace, PresignedLinks, Snapshots
from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.schemas import JobView
from api.views import JobRecord, PendingActivity, job_view
from core.config import Settings
from core.metrics import STATUS_DESCRIBES
from core.storage import ObjectStore
from workflows import names
from workflows.models import ANONYMOUS_OWNER, FileStatus, JobState, JobStatus, ProgressSummary

# How old a shared `describe()` answer may be: a quarter of a second, the event streams' pace.
SNAPSHOT_MAX_AGE = 0.25
# Open runs remembered by job id (about 150 bytes each), so describes can name the run.
OPEN_RUNS_KEPT = 10_000


class JobReads:
    """The job reads of one API process: its Temporal client, settings, store and caches."""

    def __init__(self, client: Client, settings: Settings, store: ObjectStore) -> None:
        self.client, self.settings, self.store = client, settings, store
        self.snapshots = Snapshots(self._describe, max_age=SNAPSHOT_MAX_AGE)
        self.completed = CompletedStates(settings.completed_cache_mb << 20)
        self.links = PresignedLinks(store, timedelta(seconds=settings.presign_expiry_seconds))
        self.pace = Pace(settings.estimated_ms_per_file)
        self.open_runs: OrderedDict[str, str] = OrderedDict()  # job id -> run id, newest last

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
        desc = await self._current_run(job_id)
        if desc.workflow_type != names.DOWNLOAD_WORKFLOW:
            raise ApiError.not_found(job_id)
        state = await _memo_state(desc, job_id)
        if desc.status == WorkflowExecutionStatus.COMPLETED:
            state = await self.completed_state(job_id, desc.run_id)
        activities = await self.pending_activities(desc)
        pace = self.pace.observed_ms_per_file
        view = job_view(state, desc.status, activities, desc.close_time, pace)
        return JobRecord(state=state, view=view, run_started=desc.start_time, run_id=desc.run_id)

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
        files = [
            f.model_copy(update={"download_url": self._source_link(f.file_id)})
            if f.status is FileStatus.completed
            else f
            for f in view.files
        ]
        update: dict[str, Any] = {"files": files}
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
        if state.archive_sizes is None or record.run_id is None:
            return [self.settings.archive_key(state.job_id)]
        return [
            self.settings.archive_key(state.job_id, record.run_id, number)
            for number in range(1, len(state.archive_sizes) + 1)
        ]

    def _source_link(self, file_id: int) -> str:
        url, _ = self.links.get(self.settings.source_key(file_id), f"{file_id}.zip")
        return url

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
