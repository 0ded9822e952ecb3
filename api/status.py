"""A job's status read from Temporal alone: `describe()` works with every worker stopped.

The workflow memo holds the state after each phase change; live progress comes from the heartbeat
details of a running `package_archive` attempt; pending activities that no worker has started mean
the job is waiting (queued).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.errors import ApiError
from api.schemas import FileView, JobView
from workflows.models import (
    OWNER,
    STATE_MEMO_KEY,
    FileState,
    FileStatus,
    JobState,
    JobStatus,
    PackageProgress,
)

WORKFLOW_TYPE = "DownloadWorkflow"
JOB_ACTIVITIES = ("resolve_files", "package_archive")
RPC_TIMEOUT = timedelta(seconds=10)

_CLOSED: dict[WorkflowExecutionStatus, tuple[JobStatus, str | None, str | None]] = {
    WorkflowExecutionStatus.COMPLETED: (JobStatus.completed, None, None),
    WorkflowExecutionStatus.FAILED: (JobStatus.failed, "the job failed", "Error"),
    WorkflowExecutionStatus.CANCELED: (JobStatus.cancelled, "cancelled", None),
    WorkflowExecutionStatus.TERMINATED: (
        JobStatus.failed,
        "the job was terminated by an operator",
        "Terminated",
    ),
    WorkflowExecutionStatus.TIMED_OUT: (JobStatus.failed, "the job timed out", "TimedOut"),
}


@dataclass(frozen=True)
class PendingActivity:
    name: str
    started: bool
    progress: PackageProgress | None = None


@dataclass(frozen=True)
class JobRecord:
    """What one `describe()` tells about a job."""

    state: JobState
    view: JobView
    run_started: datetime


def job_view(
    state: JobState,
    run_status: WorkflowExecutionStatus | None,
    activities: Sequence[PendingActivity] = (),
    closed_at: datetime | None = None,
) -> JobView:
    """Map the workflow's memo, run status and pending activities to the client's view."""
    if run_status is not None and run_status in _CLOSED:
        return _closed_view(state, run_status, closed_at)
    if state.status.terminal:
        # Decided; the workflow may still be notifying the callback.
        return _view(state, state.status)
    pending = {a.name: a for a in activities if a.name in JOB_ACTIVITIES}
    package = pending.get("package_archive")
    if package is not None:
        status = JobStatus.processing if package.started else JobStatus.queued
        return _view(state, status, package.progress)
    if (resolve := pending.get("resolve_files")) is not None:
        return _view(state, JobStatus.processing if resolve.started else JobStatus.queued)
    return _view(state, state.status)


def _closed_view(
    state: JobState, run_status: WorkflowExecutionStatus, closed_at: datetime | None
) -> JobView:
    status, error, error_type = _CLOSED[run_status]
    if state.status is not status:
        state = state.model_copy(
            update={
                "status": status,
                "error": state.error or error,
                "error_type": state.error_type or error_type,
                "current_file": None,
            }
        )
    if state.completed_at is None and closed_at is not None:
        state = state.model_copy(update={"completed_at": closed_at})
    return _view(state, status)


def _view(state: JobState, status: JobStatus, progress: PackageProgress | None = None) -> JobView:
    files = [_file(f) for f in state.files]
    done, total = state.bytes_processed, state.total_bytes
    current = state.current_file if status is JobStatus.processing else None
    updated = state.updated_at
    eta = None
    if status is JobStatus.completed:
        done = total = max(done, total) if total else done
    elif progress is not None:
        files = _files_with_progress(state.files, progress, status)
        done, total = progress.bytes_done, progress.total_bytes or total
        if status is JobStatus.processing:
            current = progress.current_file
            eta = _estimate(progress)
        if progress.updated_at is not None and progress.updated_at > updated:
            updated = progress.updated_at
    completed = sum(1 for f in files if f.status is FileStatus.completed)
    failed = sum(1 for f in files if f.status is FileStatus.failed)
    return JobView(
        job_id=state.job_id,
        status=status,
        progress=_percent(status, done, total, completed, len(files)),
        current_file=current,
        total_files=len(files),
        completed_files=completed,
        failed_files=failed,
        bytes_processed=done,
        total_bytes=total,
        files=files,
        created_at=state.created_at,
        started_at=state.started_at,
        updated_at=updated,
        completed_at=state.completed_at if status.terminal else None,
        estimated_completion_at=eta,
        archive_size=state.archive_size if status is JobStatus.completed else None,
        error=state.error if status in (JobStatus.failed, JobStatus.cancelled) else None,
        error_type=state.error_type if status is JobStatus.failed else None,
    )


def _file(f: FileState) -> FileView:
    return FileView(file_id=f.file_id, status=f.status, size=f.size, error=f.error)


def _files_with_progress(
    files: list[FileState], progress: PackageProgress, status: JobStatus
) -> list[FileView]:
    """Files before `files_done` among the available ones are done; the next one is in work."""
    views, index = [], 0
    for f in files:
        view = _file(f)
        if f.status is not FileStatus.failed:
            if index < progress.files_done:
                view.status = FileStatus.completed
            elif index == progress.files_done and status is JobStatus.processing:
                view.status = FileStatus.processing
            else:
                view.status = FileStatus.pending
            index += 1
        views.append(view)
    return views


def _percent(status: JobStatus, done: int, total: int, completed: int, count: int) -> int:
    if status is JobStatus.completed:
        return 100
    if total > 0:
        ratio = done / total
    elif count > 0:
        ratio = completed / count
    else:
        ratio = 0.0
    # 100 means finished: the last part is still being written until the job completes.
    return max(0, min(99, math.floor(ratio * 100)))


def _estimate(progress: PackageProgress) -> datetime | None:
    if not progress.rate or progress.rate <= 0 or progress.total_bytes <= 0:
        return None
    remaining = max(0, progress.total_bytes - progress.bytes_done) / progress.rate
    base = progress.updated_at or datetime.now(UTC)
    return (base + timedelta(seconds=remaining)).replace(microsecond=0)


# --- reading from Temporal ---
async def describe_job(client: Client, job_id: str, owner: str) -> JobRecord:
    """The caller's job or 404 (unknown ids and other owners' jobs look the same)."""
    try:
        desc = await client.get_workflow_handle(job_id).describe(rpc_timeout=RPC_TIMEOUT)
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise ApiError.not_found(job_id) from None
        raise
    if desc.workflow_type != WORKFLOW_TYPE:
        raise ApiError.not_found(job_id)
    state = await _memo_state(desc, job_id)
    if desc.status == WorkflowExecutionStatus.COMPLETED and state.owner == owner:
        state = await completed_state(client, job_id, desc.run_id)
    if state.owner != owner:
        raise ApiError.not_found(job_id)
    activities = await pending_activities(client, desc)
    view = job_view(state, desc.status, activities, desc.close_time)
    return JobRecord(state=state, view=view, run_started=desc.start_time)


_COMPLETED_CACHE: dict[tuple[str, str | None], JobState] = {}
_COMPLETED_CACHE_SIZE = 4096


async def completed_state(client: Client, job_id: str, run_id: str | None) -> JobState:
    """A completed run's final state: its result, read from history (no worker needed).

    Immutable once completed, so each API process keeps the most recent ones.
    """
    key = (job_id, run_id)
    if (cached := _COMPLETED_CACHE.get(key)) is not None:
        return cached
    handle = client.get_workflow_handle(job_id, run_id=run_id, result_type=JobState)
    state: JobState = await handle.result(rpc_timeout=RPC_TIMEOUT)
    if len(_COMPLETED_CACHE) >= _COMPLETED_CACHE_SIZE:
        _COMPLETED_CACHE.pop(next(iter(_COMPLETED_CACHE)))
    _COMPLETED_CACHE[key] = state
    return state


async def _memo_state(desc: WorkflowExecutionDescription, job_id: str) -> JobState:
    try:
        state: JobState = await desc.memo_value(STATE_MEMO_KEY, type_hint=JobState)
    except KeyError:
        # Started without our memo (e.g. by hand with the CLI): nothing known yet but the id.
        started = desc.start_time
        owner = desc.typed_search_attributes.get(OWNER) or "anonymous"
        state = JobState(job_id=job_id, owner=owner, created_at=started, updated_at=started)
    return state


async def pending_activities(
    client: Client, desc: WorkflowExecutionDescription
) -> list[PendingActivity]:
    result = []
    for act in desc.raw_description.pending_activities:
        name = act.activity_type.name
        started = act.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
        progress = None
        if name == "package_archive" and act.heartbeat_details.payloads:
            try:
                (progress,) = await client.data_converter.decode(
                    act.heartbeat_details.payloads, [PackageProgress]
                )
            except Exception:  # details of another shape carry no progress
                progress = None
        result.append(PendingActivity(name=name, started=started, progress=progress))
    return result
