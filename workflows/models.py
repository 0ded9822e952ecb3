"""Types shared by the API, the workflows and the activities.

They cross the Temporal boundary with the pydantic data converter, so they are plain pydantic
models; `JobState` is also kept in the workflow memo so a job's state is readable with no worker.
Part of the Temporal contract: besides temporalio and pydantic they import only the option bounds
the settings share (`core.bounds`).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError
from temporalio.common import RetryPolicy

from core import bounds
from workflows.errors import NON_RETRYABLE_ERRORS, invalid_request

MIN_FILE_ID = 10_000
MAX_FILE_ID = 100_000_000
MAX_FILES_PER_JOB = 1000
# A job id is its workflow id, and it names the archive: no path separator, bounded length.
# The API's path pattern and URL convertor build on it too.
JOB_ID = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}"
JOB_ID_PATTERN = f"^{JOB_ID}$"
# Owners are opaque names: printable, no control characters, bounded length.
OWNER_PATTERN = r"^[^\x00-\x1f\x7f]{1,256}$"
# The owner of jobs started without credentials (authentication off) and of older inputs.
ANONYMOUS_OWNER = "anonymous"

FileId = Annotated[int, Field(ge=MIN_FILE_ID, le=MAX_FILE_ID)]

# A job's priority is Temporal's task-queue priority key itself: 1 is dispatched first, 5 last,
# 3 (Temporal's default) when none is asked for. Owners share workers fairly within a priority.
HIGHEST_PRIORITY, DEFAULT_PRIORITY, LOWEST_PRIORITY = 1, 3, 5
PriorityLevel = Annotated[int, Field(ge=HIGHEST_PRIORITY, le=LOWEST_PRIORITY)]


class JobStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)


class FileStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"


class RetryOptions(BaseModel):
    """The seeds' policy: 3 attempts, 5 s -> 10 s -> 20 s; configurable per deployment.

    Bounded, like every option a job carries: anyone who reaches Temporal can start a workflow.
    """

    maximum_attempts: bounds.MaxAttempts = bounds.MAX_ATTEMPTS
    initial_interval_seconds: bounds.InitialIntervalSeconds = bounds.INITIAL_INTERVAL_SECONDS
    backoff_coefficient: bounds.BackoffCoefficient = bounds.BACKOFF_COEFFICIENT
    maximum_interval_seconds: bounds.MaxIntervalSeconds = bounds.MAX_INTERVAL_SECONDS

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            maximum_attempts=self.maximum_attempts,
            initial_interval=timedelta(seconds=self.initial_interval_seconds),
            backoff_coefficient=self.backoff_coefficient,
            maximum_interval=timedelta(seconds=self.maximum_interval_seconds),
            non_retryable_error_types=NON_RETRYABLE_ERRORS,
        )


class JobOptions(BaseModel):
    compression: Literal["stored", "deflate"] = "stored"
    retry: RetryOptions = Field(default_factory=RetryOptions)
    heartbeat_timeout_seconds: bounds.HeartbeatTimeoutSeconds = bounds.HEARTBEAT_TIMEOUT_SECONDS
    # Upper bound for one attempt of the packaging activity; heartbeats detect a lost worker sooner.
    package_timeout_seconds: float = Field(default=6 * 3600.0, ge=10, le=7 * 86_400)
    # The whole job's packaging, every attempt and wait included: lost workers and deploys are
    # retried as often as they happen until then.
    deadline_seconds: float = Field(
        default=bounds.DEADLINE_MINUTES * 60.0,
        ge=bounds.MIN_DEADLINE_MINUTES * 60,
        le=bounds.MAX_DEADLINE_MINUTES * 60,
    )
    # Split the archive into standalone zips of at most this many bytes (None: one archive).
    max_archive_bytes: bounds.ArchiveBytes | None = None


class DownloadRequest(BaseModel):
    """Input of `DownloadWorkflow`; workflow id = `job_id`.

    Validated by the workflow itself, whoever started it. It names no S3 key: the worker derives
    every key from the job id, run id and file ids with its own templates. Sealed by the API
    (`seal`), which is what lets the worker act for its owner.
    """

    job_id: str = Field(pattern=JOB_ID_PATTERN)
    owner: str = Field(default=ANONYMOUS_OWNER, pattern=OWNER_PATTERN)
    file_ids: list[FileId] = Field(min_length=1, max_length=MAX_FILES_PER_JOB)
    callback_url: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")
    options: JobOptions = Field(default_factory=JobOptions)
    created_at: datetime
    request_id: str | None = Field(default=None, max_length=128)
    # Temporal's priority key of the run and its activities (None: Temporal's default).
    priority: PriorityLevel | None = None
    # HMAC-SHA256 (hex) over `sealed_content()` with a secret only the API and the worker hold:
    # the worker acts for the owner only on a request the API sealed (`workflows.sealing`).
    seal: str | None = Field(default=None, max_length=128)

    def sealed_content(self) -> bytes:
        """What the seal covers: every field but the seal, as canonical JSON. Fields at their
        default are left out, so a field added later with a default keeps earlier seals valid."""
        content = self.model_dump(mode="json", exclude={"seal"}, exclude_defaults=True)
        return json.dumps(content, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def checked(cls, payload: object, workflow_id: str) -> DownloadRequest:
        """The input of the run whose id is `workflow_id`, or a final `InvalidRequest` error."""
        try:
            request = cls.model_validate(payload)
        except ValidationError as exc:
            fields = sorted({".".join(str(p) for p in e["loc"]) or "input" for e in exc.errors()})
            raise invalid_request(f"invalid fields: {', '.join(fields)}") from None
        if request.job_id != workflow_id:
            raise invalid_request("job_id is not the workflow id")
        return request


class FileState(BaseModel):
    file_id: int
    status: FileStatus = FileStatus.pending
    key: str | None = None
    size: int | None = None
    error: str | None = None
    error_type: str | None = None
    # SHA-256 (hex) of the file's bytes, once it is in the archive.
    sha256: str | None = None


class JobState(BaseModel):
    """What the workflow query returns and what the memo holds after each phase change."""

    job_id: str
    owner: str = ANONYMOUS_OWNER
    status: JobStatus = JobStatus.queued
    files: list[FileState] = Field(default_factory=list)
    total_bytes: int = 0
    bytes_processed: int = 0
    current_file: int | None = None
    archive_key: str | None = None
    archive_size: int | None = None
    # Bytes of each archive part, in order (set by runs whose keys carry the run id; their
    # part keys are `Settings.archive_key(job_id, run_id, n)`).
    archive_sizes: list[int] | None = None
    error: str | None = None
    error_type: str | None = None
    callback_url: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime
    completed_at: datetime | None = None
    priority: int | None = None

    @classmethod
    def for_request(
        cls, request: DownloadRequest, status: JobStatus, started_at: datetime | None = None
    ) -> JobState:
        """The state before any file is resolved: every file pending."""
        return cls(
            job_id=request.job_id,
            owner=request.owner,
            status=status,
            files=[FileState(file_id=i) for i in request.file_ids],
            callback_url=request.callback_url,
            created_at=request.created_at,
            started_at=started_at,
            updated_at=started_at or request.created_at,
            priority=request.priority,
        )

    def memo(self) -> dict[str, Any]:
        """The state as the memo holds it: fields left empty (None) are left out, and read back
        as None, so the memo of a job of tens of files stays within the 2 KiB Temporal (server
        and SDK) warns above."""
        return self.model_dump(mode="json", exclude_none=True)

    @property
    def completed_files(self) -> int:
        return sum(1 for f in self.files if f.status is FileStatus.completed)

    @property
    def failed_files(self) -> int:
        return sum(1 for f in self.files if f.status is FileStatus.failed)


class JobTally(BaseModel):
    """A completed job's counts, kept in its memo for lists: its whole state is its result."""

    completed_files: int
    failed_files: int
    total_bytes: int


class SourceFile(BaseModel):
    file_id: int
    key: str
    size: int


class ResolveInput(BaseModel):
    job_id: str
    file_ids: list[int]
    # The id of the API request that started the job, for error reports.
    request_id: str | None = None
    # The job's sealed request (see `PackageInput.request`).
    request: DownloadRequest | None = None


class ResolveResult(BaseModel):
    files: list[FileState]


def available_sources(files: list[FileState]) -> list[SourceFile]:
    """The resolved files that exist, in request order."""
    return [
        SourceFile(file_id=f.file_id, key=f.key, size=f.size)
        for f in files
        if f.status is not FileStatus.failed and f.key is not None and f.size is not None
    ]


class PackageInput(BaseModel):
    # The archive's key is derived by the worker from the run Temporal says the attempt belongs
    # to (workflow id, run id: `Settings.archive_key`), never from this input.
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    sources: list[SourceFile] = Field(default_factory=list)
    # Set instead of `sources` for short id lists: the packaging attempt resolves them itself.
    file_ids: list[int] | None = None
    compression: Literal["stored", "deflate"] = "stored"
    # Modification time stamped on every entry, so a resumed archive is byte-identical.
    mtime: datetime | None = None
    # The id of the API request that started the job, for error reports.
    request_id: str | None = None
    # The budget of attempts that fail on storage errors, counted by the activity itself (lost
    # workers and deploy hand-overs use none of it); unset, Temporal's policy counts every attempt.
    storage_retry: RetryOptions | None = None
    # Archive parts of at most this many bytes, each a standalone zip (None: one archive).
    max_archive_bytes: bounds.ArchiveBytes | None = None
    # Set by current workflows: archives are keyed by the run too,
    # `Settings.archive_key(job_id, run_id, part)`; runs of earlier versions keep `archive_key(job_id)`.
    keys_per_run: bool = False
    # The job's sealed request: the attempt packages only for a request the API sealed, for the
    # workflow run it belongs to (unset in inputs of runs from before requests were sealed).
    request: DownloadRequest | None = None


class ArchivePart(BaseModel):
    """One archive of a job, complete in S3: its number (from 1), key and size."""

    number: int
    key: str
    size: int


class Checkpoint(BaseModel):
    """Where a retried packaging attempt resumes: its multipart upload and the zip writer right
    after the last part S3 has stored."""

    upload_id: str
    # (part number, ETag) of every stored part, checked against S3 with ListParts on resume.
    # Empty in a checkpoint kept in S3, which names the parts by count and digest instead.
    parts: list[tuple[int, str]]
    part_count: int | None = None
    parts_sha256: str | None = None
    # The zip writer's own state (`ResumableZipWriter.checkpoint`), which validates it on resume.
    writer: dict[str, Any]
    # The source being written and how many of its bytes are in the archive already.
    file_index: int
    file_offset: int
    files_done: int
    bytes_done: int
    # Sources that vanished between resolving and packaging.
    missing: list[int] = Field(default_factory=list)
    # Set when the attempt resolved the ids itself, so a resumed attempt packages the same list.
    sources: list[SourceFile] | None = None
    # The ids resolved so far (all of them, with `sources`; else those before `file_index`).
    resolved: list[FileState] | None = None
    # Set once the archive is complete: what a late attempt of the same run returns.
    result: PackageResult | None = None
    # The workflow run that wrote it: an attempt whose heartbeat holds no pointer adopts only a
    # checkpoint of its own run.
    run_id: str | None = None
    # SHA-256 of every file written so far (file id -> hex), and the resumable SHA-256 state
    # of the one being written (`activities.digests`).
    digests: dict[int, str] = Field(default_factory=dict)
    digest_state: str | None = None
    # The archive part being written (from 1), and the parts completed before it.
    part: int = 1
    archive_parts: list[ArchivePart] = Field(default_factory=list)
    # This part's upload is complete already (found so on resume): it is only recorded.
    part_stored: bool = False


class ProgressSummary(BaseModel):
    """The live-progress part of `package_archive`'s heartbeat: what status readers decode
    (unknown fields, such as the checkpoint, are skipped without being built)."""

    files_done: int = 0
    total_files: int = 0
    bytes_done: int = 0
    total_bytes: int = 0
    current_file: int | None = None
    # Bytes per second over the attempt so far, for completion estimates.
    rate: float | None = None
    updated_at: datetime | None = None
    # Requested ids known not to be in the archive (missing or invalid), as far as known.
    unavailable: list[int] = Field(default_factory=list)
    # When the job's first packaging attempt started (kept by every later attempt).
    started_at: datetime | None = None
    # The file in work: its bytes in the archive so far and its size, once known.
    current_file_bytes: int | None = None
    current_file_size: int | None = None
    # What the time went on so far: seconds per file before its bytes flow (origin latency, a
    # slow origin), and bytes per second while they flow. Completion estimates build on both.
    file_seconds: float | None = None
    byte_rate: float | None = None


class ProgressNotice(ProgressSummary):
    """A packaging attempt's live progress as published on the progress bus (NATS), not through
    Temporal: the same summary, the job and run it belongs to, and `ended` once the attempt is
    over (whatever comes next, Temporal says)."""

    job_id: str
    run_id: str | None = None
    # The activity attempt publishing (1 for the first): a retry's messages are told apart from
    # those of the attempt before it.
    attempt: int = 0
    ended: bool = False


class ResumePointer(BaseModel):
    """Which checkpoint a retried attempt resumes from: the one kept in S3 for this upload,
    written once `parts` parts were stored (or later)."""

    upload_id: str
    parts: int


class PackageProgress(ProgressSummary):
    """Heartbeat details of `package_archive`: live progress, where to resume, and how many
    attempts in a row failed on storage errors. Small whatever the archive."""

    # A whole checkpoint, as heartbeated by earlier workers; resumed from, never written.
    checkpoint: Checkpoint | None = None
    resume: ResumePointer | None = None
    storage_failures: int = 0


class PackageResult(BaseModel):
    archive_key: str
    archive_size: int
    files_packaged: int
    bytes_packaged: int
    # Sources that disappeared between resolving and packaging.
    missing: list[int] = Field(default_factory=list)
    # Per-file resolution, when the attempt resolved the ids itself.
    resolved: list[FileState] | None = None
    # Archive offset this attempt resumed from (0 = started fresh) and source bytes it read.
    resumed_from: int = 0
    source_bytes_read: int = 0
    # SHA-256 of every packaged file (file id -> hex); every archive part, first = archive_key.
    digests: dict[int, str] = Field(default_factory=dict)
    parts: list[ArchivePart] = Field(default_factory=list)
    # When the job's packaging began (its first attempt).
    started_at: datetime | None = None


class PackagingRecord(BaseModel):
    """What packaging had done when the job stopped (cancelled or failed): every file as far as
    it got (completed with its size, failed with the reason, else pending), the bytes moved."""

    files: list[FileState]
    bytes_done: int = 0
    total_bytes: int = 0
    started_at: datetime | None = None


class CallbackNotice(BaseModel):
    url: str
    payload: dict[str, Any]
    # Whose key signs it (notices scheduled by older workflow code have none: anonymous).
    owner: str = ANONYMOUS_OWNER
    # The same for every retry of one notice, so receivers drop duplicates and replays.
    delivery_id: str | None = None
    # The job's sealed request, which binds owner and URL: only such a notice is signed.
    request: DownloadRequest | None = None


class CleanupResult(BaseModel):
    deleted: list[str]
