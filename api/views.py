"""A job's view from what Temporal says about it: pure functions, no client, no I/O.

The workflow memo holds the state after each phase change; live progress comes from the heartbeat
details of a running packaging attempt; pending activities that no worker has started mean
the job is waiting (queued); a closed run's status overrides a memo it had no chance to update.
`api.jobs` reads those from Temporal and hands them here.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import TypeAdapter, ValidationError
from temporalio.client import WorkflowExecutionStatus

from api.schemas import EtaBasis, FileView, JobView
from workflows import names
from workflows.errors import ErrorType, public_message
from workflows.models import (
    DownloadRequest,
    FileState,
    FileStatus,
    JobState,
    JobStatus,
    ProgressSummary,
)

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
    # When its current attempt started.
    started_at: datetime | None = None


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
    # The request the run was started with, as the API sealed it (or from before sealing).
    request: DownloadRequest | None = None
    encoded: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)


# A record as JSON (its encoded answers left out: each replica encodes its own).
_RECORDS = TypeAdapter(JobRecord)
# What a claim's body begins with (a record's, JSON, begins with "{").
_CLAIM = "claim:"


class SignedRecords:
    """A job's record passed between API replicas over the progress bus, and a replica's claim
    that it is reading one: signed with a key derived from REQUEST_SEAL_SECRET (held by the API
    and the workers only), so a message from anyone else on the bus is never taken for a record
    read from Temporal, nor holds a replica's read back."""

    def __init__(self, seal_key: bytes) -> None:
        self.key = hmac.new(seal_key, b"job records between API replicas", hashlib.sha256).digest()

    def sign(self, record: JobRecord) -> bytes:
        body = _RECORDS.dump_json(record, exclude={"encoded"})
        return self._mac(body) + b"." + body

    @staticmethod
    def signature(payload: bytes) -> bytes:
        """What tells one signed record from another (however large the record)."""
        return payload.partition(b".")[0]

    def open(self, payload: bytes, job_id: str) -> JobRecord | None:
        """The record `payload` carries if it is signed and of job `job_id`, else None."""
        mac, _, body = payload.partition(b".")
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            record = _RECORDS.validate_json(body)
        except ValidationError:
            return None
        if record.view.job_id != job_id or record.state.job_id != job_id:
            return None
        return record

    def claim(self, job_id: str, replica: str) -> bytes:
        """A note from `replica` that it is reading job `job_id` now, its record to follow."""
        body = f"{_CLAIM}{job_id}:{replica}".encode()
        return self._mac(body) + b"." + body

    def claimant(self, payload: bytes, job_id: str) -> str | None:
        """The replica that signed `payload` as a claim on job `job_id`, else None."""
        mac, _, body = payload.partition(b".")
        prefix = f"{_CLAIM}{job_id}:".encode()
        if not body.startswith(prefix) or not hmac.compare_digest(mac, self._mac(body)):
            return None
        return body[len(prefix) :].decode()

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self.key, body, hashlib.sha256).hexdigest().encode()


def job_view(
    state: JobState,
    run_status: WorkflowExecutionStatus | None,
    activities: Sequence[PendingActivity] = (),
    closed_at: datetime | None = None,
    ms_per_file: float | None = None,
    files_before: Sequence[FileView] = (),
) -> JobView:
    """Map the workflow's memo, run status and pending activities to the client's view;
    `ms_per_file` is the time per file observed on finished jobs (`api.caches.Pace`). A file
    whose view is as in `files_before` (the job's previous view) keeps that view, the same
    object: a job of many files is mapped at the cost of the files that changed."""
    if run_status is not None and run_status in _CLOSED:
        return _closed_view(state, run_status, closed_at)
    if state.status.terminal:
        # Decided; the workflow may still be notifying the callback.
        return _view(state, state.status)
    pending = {a.name: a for a in activities if a.name in names.JOB_ACTIVITIES}
    package = pending.get(names.PACKAGE_ARCHIVE)
    if package is not None:
        status = JobStatus.processing if package.started else JobStatus.queued
        # Packaging began with its first attempt (a retried one may be waiting for a worker).
        began = package.progress.started_at if package.progress else None
        began = began or (package.started_at if package.started else None)
        if state.started_at is None and began is not None:
            state = state.model_copy(update={"started_at": began})
        return _view(state, status, package.progress, ms_per_file, files_before)
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


def _view(
    state: JobState,
    status: JobStatus,
    progress: ProgressSummary | None = None,
    ms_per_file: float | None = None,
    files_before: Sequence[FileView] = (),
) -> JobView:
    done, total = state.bytes_processed, state.total_bytes
    current = state.current_file if status is JobStatus.processing else None
    current_bytes = current_size = None
    updated = state.updated_at
    eta: datetime | None = None
    basis: EtaBasis | None = None if status.terminal else "estimating"
    if progress is not None and status is not JobStatus.completed:
        files = _files_with_progress(state.files, progress, status, files_before)
    else:
        files = [_file(f) for f in state.files]
    if status is JobStatus.completed:
        done = total = max(done, total) if total else done
    elif progress is not None:
        done, total = progress.bytes_done, progress.total_bytes or total
        if status is JobStatus.processing:
            current = progress.current_file
            current_bytes, current_size = progress.current_file_bytes, progress.current_file_size
        if progress.updated_at is not None and progress.updated_at > updated:
            updated = progress.updated_at
    completed = sum(1 for f in files if f.status is FileStatus.completed)
    failed = sum(1 for f in files if f.status is FileStatus.failed)
    in_work = current_bytes / current_size if current_bytes and current_size else 0.0
    fraction = work_done(completed + failed + in_work, len(files), done, total)
    if status is JobStatus.processing and progress is not None:
        eta, basis = _estimate(progress, in_work, ms_per_file)
    return JobView(
        job_id=state.job_id,
        status=status,
        progress=100 if status is JobStatus.completed else _percent(fraction),
        current_file=current,
        total_files=len(files),
        completed_files=completed,
        failed_files=failed,
        bytes_processed=done,
        total_bytes=total,
        eta_basis=basis,
        current_file_bytes=current_bytes,
        current_file_size=current_size,
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


def _file_fields(f: FileState) -> dict[str, Any]:
    """What a file's view says of it (a digest only once the file is complete)."""
    return {
        "file_id": f.file_id,
        "status": f.status,
        "size": f.size,
        "error": f.error,
        "sha256": f.sha256 if f.status is FileStatus.completed else None,
    }


def _file(f: FileState) -> FileView:
    return FileView(**_file_fields(f))


def _files_with_progress(
    files: list[FileState],
    progress: ProgressSummary,
    status: JobStatus,
    before: Sequence[FileView] = (),
) -> list[FileView]:
    """Files before `files_done` among the available ones are done; the next one is in work.
    Ids the attempt found unavailable so far are failed already. A file's view in `before`
    (same place) is kept when it says the same."""
    views, index = [], 0
    unavailable = set(progress.unavailable)
    for place, f in enumerate(files):
        file_status, error = f.status, f.error
        if f.status is not FileStatus.failed and f.file_id in unavailable:
            file_status, error = FileStatus.failed, public_message(ErrorType.file_not_found)
        elif f.status is not FileStatus.failed:
            if index < progress.files_done:
                file_status = FileStatus.completed
            elif index == progress.files_done and status is JobStatus.processing:
                file_status = FileStatus.processing
            else:
                file_status = FileStatus.pending
            index += 1
        fields = {**_file_fields(f), "status": file_status, "error": error}
        old = before[place] if place < len(before) else None
        if (
            old is not None
            and old.download_url is None
            and all(getattr(old, name) == value for name, value in fields.items())
        ):
            views.append(old)
        else:
            views.append(FileView(**fields))
    return views


# `progress` blends the share of files settled (the file in work counted by its bytes) with
# the share of bytes packaged: one large file does not hold a job of many files at 0 %, and
# many small ones do not hide a large one.
FILES_WEIGHT = 0.5
# The observed rate is trusted once packaging has run this long and moved this much...
RATE_MIN_SECONDS = 3.0
RATE_MIN_BYTES = 1 << 20
# ...and it never strays more than this factor from the observed pace of finished jobs.
ETA_CLAMP = 10.0


def work_done(files_settled: float, files: int, bytes_done: int, total_bytes: int) -> float:
    """The share of a job's work done, from 0 to 1."""
    by_files = min(1.0, files_settled / files) if files else 0.0
    if total_bytes <= 0:
        return by_files
    by_bytes = min(1.0, bytes_done / total_bytes)
    return FILES_WEIGHT * by_files + (1 - FILES_WEIGHT) * by_bytes


def _percent(fraction: float) -> int:
    # 100 means finished: the last part is still being written until the job completes.
    return max(0, min(99, math.floor(fraction * 100)))


def _estimate(
    progress: ProgressSummary, in_work: float, ms_per_file: float | None
) -> tuple[datetime | None, EtaBasis]:
    """When the job should complete, and what that rests on ("rate", "estimate" or
    "estimating": nothing yet). Relative to the heartbeat's time, so the view stays pure."""
    at = progress.updated_at or datetime.now(UTC)
    files_left = max(0.0, progress.total_files - progress.files_done - in_work)
    bytes_left = max(0, progress.total_bytes - progress.bytes_done)
    estimate = ms_per_file / 1000 * files_left if ms_per_file else None
    remaining = _by_rate(progress, at, bytes_left)
    basis: EtaBasis
    if remaining is not None:
        if estimate is not None:
            remaining = min(max(remaining, estimate / ETA_CLAMP), estimate * ETA_CLAMP)
        basis = "rate"
    elif estimate is not None:
        remaining, basis = estimate, "estimate"
    else:
        return None, "estimating"
    eta = at + timedelta(seconds=remaining)
    return eta.replace(microsecond=eta.microsecond // 1000 * 1000), basis


def _by_rate(progress: ProgressSummary, at: datetime, bytes_left: int) -> float | None:
    """Seconds left at the pace observed: each file not begun costs the time files took before
    their bytes flowed, each byte left the time bytes took to flow. None until that means
    something (a few seconds of packaging, a file done or some bytes moved)."""
    spent = (at - progress.started_at).total_seconds() if progress.started_at else 0.0
    moved = progress.files_done > 0 or progress.bytes_done >= RATE_MIN_BYTES
    if spent < RATE_MIN_SECONDS or not moved or progress.file_seconds is None:
        return None
    if bytes_left and not progress.byte_rate:
        return None
    begun = 1 if progress.current_file_size is not None else 0
    not_begun = max(0, progress.total_files - progress.files_done - begun)
    flowing = bytes_left / progress.byte_rate if bytes_left and progress.byte_rate else 0.0
    return not_begun * progress.file_seconds + flowing
