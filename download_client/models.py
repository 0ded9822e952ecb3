"""The API's JSON as the client reads it.

The client talks HTTP only and imports nothing from the service, so the few fields it shows are
parsed here, once, from the camelCase bodies of the status, event and list endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobStatus(StrEnum):
    queued = "queued"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)


@dataclass(frozen=True)
class FileEntry:
    file_id: int
    status: str
    size: int | None
    error: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FileEntry:
        return cls(body["file_id"], body["status"], body.get("size"), body.get("error"))


@dataclass(frozen=True)
class Job:
    """A job's status, from `GET /v1/download/status|{jobId}` or an SSE event's data."""

    job_id: str
    status: JobStatus
    progress: int = 0
    total_files: int = 0
    completed_files: int = 0
    failed_files: int = 0
    bytes_processed: int = 0
    total_bytes: int = 0
    current_file: int | None = None
    error: str | None = None
    download_url: str | None = None
    archive_size: int | None = None
    expires_at: str | None = None
    files: list[FileEntry] = field(default_factory=list)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Job:
        return cls(
            job_id=body["jobId"],
            status=JobStatus(body["status"]),
            progress=body.get("progress") or 0,
            total_files=body.get("totalFiles") or 0,
            completed_files=body.get("completedFiles") or 0,
            failed_files=body.get("failedFiles") or 0,
            bytes_processed=body.get("bytesProcessed") or 0,
            total_bytes=body.get("totalBytes") or 0,
            current_file=body.get("currentFile"),
            error=body.get("error"),
            download_url=body.get("downloadUrl"),
            archive_size=body.get("archiveSize"),
            expires_at=body.get("expiresAt"),
            files=[FileEntry.from_json(f) for f in body.get("files") or []],
        )

    @property
    def change(self) -> tuple[object, ...]:
        """What a new line is printed for when the job is polled instead of streamed."""
        return (
            self.status,
            self.progress,
            self.completed_files,
            self.failed_files,
            self.bytes_processed,
            self.current_file,
        )


@dataclass(frozen=True)
class JobSummary:
    """One row of `GET /v1/downloads`."""

    job_id: str
    status: JobStatus
    total_files: int
    created_at: str
    completed_at: str | None
    error: str | None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobSummary:
        return cls(
            job_id=body["jobId"],
            status=JobStatus(body["status"]),
            total_files=body.get("totalFiles") or 0,
            created_at=body.get("createdAt") or "",
            completed_at=body.get("completedAt"),
            error=body.get("error"),
        )
