"""The status mapping (memo + run status + pending activities -> client view) and SSE event ids."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from temporalio.client import WorkflowExecutionStatus

from api.views import JobRecord, PendingActivity, job_view
from api.watchers import event_key, format_event_id, parse_event_id
from workflows import names
from workflows.models import FileState, FileStatus, JobState, JobStatus, PackageProgress

T0 = datetime(2025, 1, 1, tzinfo=UTC)
RUNNING = WorkflowExecutionStatus.RUNNING


def state(status: JobStatus = JobStatus.processing, **kwargs: object) -> JobState:
    files = [
        FileState(file_id=10_001, size=100),
        FileState(file_id=10_002, status=FileStatus.failed, error="not found"),
        FileState(file_id=10_003, size=300),
        FileState(file_id=10_004, size=600),
    ]
    values: dict[str, object] = {
        "job_id": "j1",
        "status": status,
        "files": files,
        "total_bytes": 1000,
        "created_at": T0,
        "started_at": T0,
        "updated_at": T0,
    }
    values.update(kwargs)
    return JobState.model_validate(values)


def package(started: bool = True, **progress: object) -> PendingActivity:
    details = PackageProgress.model_validate({"total_files": 3, "total_bytes": 1000, **progress})
    return PendingActivity(names.PACKAGE_ARCHIVE, started=started, progress=details)


def test_new_job_with_no_worker_is_queued() -> None:
    memo = state(JobStatus.queued, files=[FileState(file_id=10_001)], total_bytes=0)
    view = job_view(memo, RUNNING, [])
    assert view.status is JobStatus.queued
    assert view.progress == 0
    assert [f.status for f in view.files] == [FileStatus.pending]


def test_scheduled_activity_nobody_started_is_queued() -> None:
    view = job_view(state(), RUNNING, [PendingActivity(names.RESOLVE_FILES, started=False)])
    assert view.status is JobStatus.queued
    view = job_view(state(), RUNNING, [package(started=False, bytes_done=400, files_done=1)])
    assert view.status is JobStatus.queued
    assert view.bytes_processed == 400  # progress kept from the last attempt's checkpoint
    assert view.current_file is None
    assert view.estimated_completion_at is None


def test_running_package_reports_heartbeat_progress() -> None:
    beat = T0 + timedelta(seconds=10)
    view = job_view(
        state(),
        RUNNING,
        [
            package(
                files_done=1,
                bytes_done=250,
                current_file=10_003,
                current_file_bytes=150,
                current_file_size=300,
                started_at=T0,
                file_seconds=2.0,
                byte_rate=50.0,
                updated_at=beat,
            )
        ],
    )
    assert view.status is JobStatus.processing
    # Files: 1 done, 1 failed and half of the one in work of 4; bytes: 250 of 1000.
    assert view.progress == math.floor(100 * (0.5 * 2.5 / 4 + 0.5 * 0.25))
    assert view.bytes_processed == 250 and view.total_bytes == 1000
    assert view.current_file == 10_003
    assert (view.current_file_bytes, view.current_file_size) == (150, 300)
    assert [f.status for f in view.files] == [
        FileStatus.completed,
        FileStatus.failed,
        FileStatus.processing,
        FileStatus.pending,
    ]
    assert (view.completed_files, view.failed_files, view.total_files) == (1, 1, 4)
    # One file not begun at 2 s, 750 bytes at 50 B/s.
    assert view.eta_basis == "rate"
    assert view.estimated_completion_at == beat + timedelta(seconds=17)
    assert view.updated_at == beat


def test_one_large_file_does_not_hold_many_small_ones_at_zero() -> None:
    files = [FileState(file_id=10_001 + i) for i in range(9)]
    memo = state(files=files, total_bytes=0)
    beat = package(files_done=4, bytes_done=4 * 1024, total_files=9, total_bytes=100 << 20)
    view = job_view(memo, RUNNING, [beat])
    assert view.completed_files == 4
    assert view.progress == 22  # half of 4/9 files; the bytes are nearly all still to come


def test_the_rate_waits_for_seconds_and_bytes_then_stays_near_the_estimate() -> None:
    memo = state(started_at=None)
    figures: dict[str, Any] = {"started_at": T0, "file_seconds": 0.5, "byte_rate": 1.0}
    early = package(files_done=1, updated_at=T0 + timedelta(seconds=1), **figures)
    view = job_view(memo, RUNNING, [early], ms_per_file=None)
    assert (view.eta_basis, view.estimated_completion_at) == ("estimating", None)
    assert view.started_at == T0  # packaging began, as the heartbeat says
    view = job_view(memo, RUNNING, [early], ms_per_file=2000)
    assert view.eta_basis == "estimate"
    # Two files left at 2 s each.
    assert view.estimated_completion_at == T0 + timedelta(seconds=1 + 4)
    later = package(files_done=1, updated_at=T0 + timedelta(seconds=5), **figures)
    view = job_view(memo, RUNNING, [later], ms_per_file=2000)
    # 1000 bytes at 1 B/s would be 1 000 s: held to ten times the 4 s estimate.
    assert view.eta_basis == "rate"
    assert view.estimated_completion_at == T0 + timedelta(seconds=5 + 40)
    queued = job_view(memo, RUNNING, [package(started=False)], ms_per_file=2000)
    assert (queued.eta_basis, queued.estimated_completion_at) == ("estimating", None)


def test_started_package_without_heartbeat_yet_is_processing() -> None:
    activity = PendingActivity(names.PACKAGE_ARCHIVE, started=True)
    view = job_view(state(), RUNNING, [activity])
    assert view.status is JobStatus.processing
    assert view.progress == 12  # the failed file of four is settled; no byte moved yet


def test_all_bytes_written_is_not_yet_100_percent() -> None:
    view = job_view(state(), RUNNING, [package(files_done=3, bytes_done=1000)])
    assert view.progress == 99


def test_callback_after_the_outcome_does_not_hide_it() -> None:
    memo = state(JobStatus.completed, archive_key="a.zip", archive_size=1200, completed_at=T0)
    view = job_view(memo, RUNNING, [PendingActivity(names.SEND_CALLBACK, started=True)])
    assert view.status is JobStatus.completed
    assert view.progress == 100


def test_closed_workflow_uses_the_memo() -> None:
    memo = state(JobStatus.failed, error="none of the requested files is available")
    view = job_view(memo, WorkflowExecutionStatus.FAILED, [], closed_at=T0)
    assert view.status is JobStatus.failed
    assert view.error == "none of the requested files is available"
    assert view.completed_at == T0


@pytest.mark.parametrize(
    ("run_status", "status", "words"),
    [
        (WorkflowExecutionStatus.TERMINATED, JobStatus.failed, "terminated"),
        (WorkflowExecutionStatus.TIMED_OUT, JobStatus.failed, "timed out"),
        (WorkflowExecutionStatus.CANCELED, JobStatus.cancelled, "cancelled"),
    ],
)
def test_closed_by_an_operator_overrides_a_stale_memo(
    run_status: WorkflowExecutionStatus, status: JobStatus, words: str
) -> None:
    view = job_view(state(current_file=10_001), run_status, [package()], closed_at=T0)
    assert view.status is status
    assert view.error is not None and words in view.error
    assert view.current_file is None
    assert view.completed_at == T0


def test_event_ids_order_a_job_and_round_trip() -> None:
    def key(
        view_state: JobState, acts: list[PendingActivity], run: datetime = T0
    ) -> tuple[int, ...]:
        view = job_view(view_state, RUNNING if not view_state.status.terminal else None, acts)
        return event_key(JobRecord(state=view_state, view=view, run_started=run))

    queued = key(state(JobStatus.queued), [])
    processing = key(state(), [PendingActivity(names.RESOLVE_FILES, started=True)])
    halfway = key(state(), [package(bytes_done=500, files_done=1)])
    done = key(state(JobStatus.completed, bytes_processed=1000), [])
    retried = key(state(JobStatus.queued), [], run=T0 + timedelta(minutes=1))
    assert queued < processing < halfway < done < retried
    assert parse_event_id(format_event_id(halfway)) == halfway
    for bad in (None, "", "1.2.3", "a.b.c.d.e", "1.2.3.4.-5", "9" * 30 + ".1.1.1.1"):
        assert parse_event_id(bad) is None
