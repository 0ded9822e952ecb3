"""The API's JSON as the client reads it.

The client talks HTTP only and imports nothing from the service, so the few fields it shows are
parsed here, once, from the camelCase bodies of the status, event and list endpoints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
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


def _time(value: Any) -> datetime | None:
    """An ISO 8601 time of the API, or None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class FileEntry:
    file_id: int
    status: str
    size: int | None
    error: str | None
    sha256: str | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FileEntry:
        return cls(
            body["file_id"],
            body["status"],
            body.get("size"),
            body.get("error"),
            body.get("sha256"),
        )


@dataclass(frozen=True)
class Part:
    """One archive of a job: most jobs have one, a split job one per part."""

    number: int
    url: str
    size: int | None


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
    # The file in work and its bytes so far (servers that report them).
    current_file_bytes: int | None = None
    current_file_size: int | None = None
    estimated_completion_at: datetime | None = None
    # "rate", "estimate", "estimating" or None; `eta_reported` is False for a server that does
    # not say on what its ETA rests (no `etaBasis` at all).
    eta_basis: str | None = None
    eta_reported: bool = False
    download_urls: list[str] = field(default_factory=list)
    archive_sizes: list[int | None] = field(default_factory=list)
    priority: int | None = None

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
            current_file_bytes=body.get("currentFileBytes"),
            current_file_size=body.get("currentFileSize"),
            estimated_completion_at=_time(body.get("estimatedCompletionAt")),
            eta_basis=body.get("etaBasis"),
            eta_reported="etaBasis" in body,
            download_urls=list(body.get("downloadUrls") or []),
            archive_sizes=list(body.get("archiveSizes") or []),
            priority=body.get("priority"),
        )

    @property
    def parts(self) -> list[Part]:
        """Every archive to fetch: `downloadUrls` (with `archiveSizes`), else `downloadUrl`."""
        if self.download_urls:
            sizes = self.archive_sizes
            if len(sizes) != len(self.download_urls):
                sizes = [self.archive_size if len(self.download_urls) == 1 else None] * len(
                    self.download_urls
                )
            return [
                Part(n, url, size)
                for n, (url, size) in enumerate(zip(self.download_urls, sizes, strict=True), 1)
            ]
        if self.download_url:
            return [Part(1, self.download_url, self.archive_size)]
        return []

    @property
    def failed(self) -> list[FileEntry]:
        return [f for f in self.files if f.status == "failed"]

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
            self.current_file_bytes,
        )


@dataclass(frozen=True)
class JobSummary:
    """One row of `GET /v1/downloads`."""

    job_id: str
    status: JobStatus
    total_files: int
    created_at: datetime | None
    completed_at: datetime | None
    error: str | None
    # Servers that report them:
    completed_files: int | None = None
    failed_files: int | None = None
    total_bytes: int | None = None
    progress: int | None = None
    first_file_ids: list[int] = field(default_factory=list)
    priority: int | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobSummary:
        return cls(
            job_id=body["jobId"],
            status=JobStatus(body["status"]),
            total_files=body.get("totalFiles") or 0,
            created_at=_time(body.get("createdAt")),
            completed_at=_time(body.get("completedAt")),
            error=body.get("error"),
            completed_files=body.get("completedFiles"),
            failed_files=body.get("failedFiles"),
            total_bytes=body.get("totalBytes"),
            progress=body.get("progress"),
            first_file_ids=list(body.get("firstFileIds") or []),
            priority=body.get("priority"),
        )
