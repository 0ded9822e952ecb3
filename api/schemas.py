"""Request and response bodies of the HTTP API; the OpenAPI document is generated from them.

New endpoints speak camelCase; the existing service's endpoints keep their snake_case fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from core import bounds
from workflows.models import (
    HIGHEST_PRIORITY,
    LOWEST_PRIORITY,
    MAX_FILE_ID,
    MAX_FILES_PER_JOB,
    MIN_FILE_ID,
    FileStatus,
    JobStatus,
)

# What a job's completion estimate rests on (`etaBasis`).
EtaBasis = Literal["rate", "estimate", "estimating"]
FileId = Annotated[int, Field(strict=True, ge=MIN_FILE_ID, le=MAX_FILE_ID, examples=[10_001])]


class CamelModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class ErrorResponse(BaseModel):
    error: str = Field(description="stable machine-readable code, e.g. validation_error")
    message: str
    requestId: str | None = None
    details: Any | None = None


# --- requests ---
class InitiateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_ids: list[FileId] = Field(min_length=1, max_length=MAX_FILES_PER_JOB)
    callback_url: AnyHttpUrl | None = Field(
        None, description="POSTed a signed JSON notice when the job ends"
    )
    priority: int | None = Field(
        None,
        strict=True,
        ge=HIGHEST_PRIORITY,
        le=LOWEST_PRIORITY,
        description="1 (most urgent) to 5; Temporal's task-queue priority key. Default 3, or the "
        "caller's ceiling (PRIORITY_CEILING) when less urgent; more urgent than it is a 403",
    )
    max_archive_bytes: int | None = Field(
        None,
        ge=bounds.MIN_ARCHIVE_BYTES,
        le=bounds.MAX_ARCHIVE_BYTES,
        description="split the archive into standalone zips of at most this many bytes "
        "(a file larger than that makes a part of its own); at most MAX_ARCHIVE_BYTES_LIMIT",
    )


class FileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file_id: FileId


# --- job views ---
class FileView(BaseModel):
    """One requested file. `file_id` is spelled as in the request's `file_ids`; a completed file
    has a presigned URL of its own source beside the bundle's."""

    model_config = ConfigDict(populate_by_name=True)

    file_id: int
    status: FileStatus
    size: int | None = None
    error: str | None = None
    download_url: str | None = Field(default=None, serialization_alias="downloadUrl")
    sha256: str | None = Field(default=None, description="SHA-256 (hex) of a completed file")


class JobProgress(CamelModel):
    """What every view of a job's progress says: the status JSON and the SSE `progress` event."""

    job_id: str
    status: JobStatus
    progress: int = Field(ge=0, le=100)
    current_file: int | None = None
    total_files: int
    completed_files: int
    failed_files: int
    bytes_processed: int
    total_bytes: int
    eta_basis: EtaBasis | None = Field(
        default=None,
        description="what `estimatedCompletionAt` comes from: the observed rate, the start "
        "estimate, or nothing yet (`estimating`, no time given); null once the job is finished",
    )
    current_file_bytes: int | None = Field(
        default=None, description="bytes of the file in work packaged so far"
    )
    current_file_size: int | None = Field(default=None, description="size of the file in work")


# `updated_at` and `estimated_completion_at` are declared in both subclasses, not in the base:
# pydantic keeps base fields first, and both JSON shapes keep their published field order.
class JobView(JobProgress):
    """A job's status as clients see it (`GET /v1/download/status/{jobId}`)."""

    files: list[FileView]
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime
    completed_at: datetime | None = None
    estimated_completion_at: datetime | None = None
    download_url: str | None = None
    expires_at: datetime | None = None
    archive_size: int | None = None
    download_urls: list[str] | None = Field(
        default=None,
        description="one presigned URL per archive part (a single archive: [downloadUrl])",
    )
    archive_sizes: list[int] | None = Field(default=None, description="bytes of each part")
    error: str | None = None
    error_type: str | None = None
    priority: int | None = Field(None, description="1 (most urgent) to 5")


class JobLinks(CamelModel):
    status_url: str
    subscribe_url: str
    details_url: str
    file_url: str


def job_links(job_id: str) -> dict[str, str]:
    """The `JobLinks` fields of a job, for the responses that include them."""
    return JobLinks(
        status_url=f"/v1/download/status/{job_id}",
        subscribe_url=f"/v1/download/subscribe/{job_id}",
        details_url=f"/v1/download/{job_id}",
        file_url=f"/v1/download/{job_id}/file",
    ).model_dump()


class InitiateResponse(JobLinks):
    job_id: str
    status: JobStatus
    total_files: int
    total_file_ids: int
    created_at: datetime
    estimated_time_ms: int = Field(
        description="expected time to finish once started: the observed time per file of "
        "recent jobs, or ESTIMATED_MS_PER_FILE per file before any job has been observed"
    )


class CancelResponse(CamelModel):
    job_id: str
    cancelled: bool
    status: JobStatus


class StreamTicket(CamelModel):
    """A credential for one job's event streams (`?ticket=`), so no bearer token is in a URL."""

    ticket: str
    expires_at: datetime


class JobSummary(CamelModel):
    job_id: str
    status: JobStatus
    total_files: int
    completed_files: int | None = None
    failed_files: int | None = None
    total_bytes: int | None = None
    progress: int | None = Field(
        default=None, ge=0, le=100, description="as of the job's last phase change"
    )
    first_file_ids: list[int] | None = Field(default=None, description="up to 5 of its file ids")
    created_at: datetime
    completed_at: datetime | None = None
    error: str | None = None
    priority: int | None = None


class JobList(CamelModel):
    jobs: list[JobSummary]
    next_page_token: str | None = None


class ProgressEvent(JobProgress):
    """Data of an SSE `progress` event; terminal events carry a whole `JobView`."""

    updated_at: datetime
    estimated_completion_at: datetime | None = None
    changed_files: list[FileView] | None = Field(
        default=None,
        description="files whose state changed since the stream's previous event; a stream's "
        "first event (also after a resume) carries every file",
    )


# --- the existing service's shapes ---
class CheckResponse(BaseModel):
    file_id: int
    available: bool
    s3Key: None = Field(
        None, description="always null: kept for today's clients; storage keys are not disclosed"
    )
    size: int | None


class LegacyStartResponse(BaseModel):
    file_id: int
    status: Literal["completed", "failed"]
    downloadUrl: str | None
    size: int | None
    processingTimeMs: int
    message: str


class StartAccepted(JobLinks):
    """`POST /v1/download/start` that did not finish within the request timeout."""

    file_id: int = Field(alias="file_id")
    job_id: str
    status: JobStatus
    message: str


Check = Literal["ok", "error"]


class HealthResponse(BaseModel):
    status: Literal["healthy", "unhealthy"]
    checks: dict[str, Check]


class Liveness(BaseModel):
    status: Literal["alive"]


class ServiceInfo(BaseModel):
    message: str
    version: str
    docs: str
    health: str
    temporalUiUrl: str = Field(description="the Temporal Web UI operators use")
    authRequired: bool = Field(description="whether calls need a bearer token or an API key")
