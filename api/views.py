"""A job's view from what Temporal says about it: pure functions, no client, no I/O.

The workflow memo holds the state after each phase change; live progress comes from the heartbeat
details of a running packaging attempt; pending activities that no worker has started mean
the job is waiting (queued); a closed run's status overrides a memo it had no chance to update.
`api.jobs` reads those from Temporal and hands them here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.client import WorkflowExecutionStatus

from api.schemas import FileView, JobView
from workflows import names
from workflows.errors import ErrorType, public_message
from workflows.models import FileState, FileStatus, JobState, JobStatus, ProgressSummary

# What a closed run means for the job when the memo does not say so already.
_CLOSED: dict[WorkflowExecutionStatus, tuple[JobStatus, str | None]] = {
    WorkflowExecutionStatus.COMPLETED: (JobStatus.completed, None),
    WorkflowExecutionStatus.FAILED: (JobStatus.failed, ErrorType.unknown.value),
    WorkflowExecutionStatus.CANCELED: (JobStatus.cancelled, None),
    WorkflowExecutionStatus.TERMINATED: (JobStatus.failed, ErrorType.terminated.value),
    WorkflowExecutionStatus.TIMED_OUT: (JobStatus.failed, ErrorType.timed_out.value),
}


@dataclass(frozen=True)
class PendingActivity:
    """A pending activity of the run; `progress` is a packaging attempt's heartbeat."""

    name: str
    started: bool
    progress: ProgressSummary | None = None


@dataclass(frozen=True)
class JobRecord:
    """What one `describe()` tells about a job; `encoded` keeps answers rendered from it, so
    that every reader of one snapshot is sent the same bytes, encoded once."""

    state: JobState
    view: JobView
    run_started: datetime
    # The run whose archive the job serves: its parts' keys are `Settings.archive_key(job_id,
    # run_id, part)`; None for a run from before sealing, whose one archive is named after the
    # job id alone.
    run_id: str | None = None
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)


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
    pending = {a.name: a for a in activities if a.name in names.JOB_ACTIVITIES}
    package = pending.get(names.PACKAGE_ARCHIVE)
    if package is not None:
        status = JobStatus.processing if package.started else JobStatus.queued
        return _view(state, status, package.progress)
    if (resolve := pending.get(names.RESOLVE_FILES)) is not None:
        return _view(state, JobStatus.processing if resolve.started else JobStatus.queued)
    return _view(state, state.status)


def _closed_view(
    state: JobState, run_status: WorkflowExecutionStatus, closed_at: datetime | None
) -> JobView:
    status, error_type = _CLOSED[run_status]
    error = (
        "cancelled" if status is JobStatus.cancelled else error_type and public_message(error_type)
    )
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


def _view(state: JobState, status: JobStatus, progress: ProgressSummary | None = None) -> JobView:
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
        archive_sizes=state.archive_sizes if status is JobStatus.completed else None,
        error=state.error if status in (JobStatus.failed, JobStatus.cancelled) else None,
        error_type=state.error_type if status is JobStatus.failed else None,
        priority=state.priority,
    )


def _file(f: FileState) -> FileView:
    return FileView(
        file_id=f.file_id,
        status=f.status,
        size=f.size,
        error=f.error,
        sha256=f.sha256 if f.status is FileStatus.completed else None,
    )


def _files_with_progress(
    files: list[FileState], progress: ProgressSummary, status: JobStatus
) -> list[FileView]:
    """Files before `files_done` among the available ones are done; the next one is in work.
    Ids the attempt found unavailable so far are failed already."""
    views, index = [], 0
    unavailable = set(progress.unavailable)
    for f in files:
        view = _file(f)
        if f.status is not FileStatus.failed and f.file_id in unavailable:
            view.status, view.error = FileStatus.failed, public_message(ErrorType.file_not_found)
        elif f.status is not FileStatus.failed:
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


def _estimate(progress: ProgressSummary) -> datetime | None:
    if not progress.rate or progress.rate <= 0 or progress.total_bytes <= 0:
        return None
    remaining = max(0, progress.total_bytes - progress.bytes_done) / progress.rate
    base = progress.updated_at or datetime.now(UTC)
    return (base + timedelta(seconds=remaining)).replace(microsecond=0)
