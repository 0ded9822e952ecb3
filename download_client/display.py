"""How the client shows a job and a transfer.

On a terminal: live rich progress bars. Otherwise (a pipe, a log, CI): one plain line per change,
no ANSI codes, so the output can be read by a program or a person scrolling a log.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Column, Table
from rich.text import Text

from download_client.models import Job, JobStatus, JobSummary

_STYLE = {
    JobStatus.completed: "green",
    JobStatus.failed: "red",
    JobStatus.cancelled: "yellow",
}


def job_line(job: Job) -> str:
    parts = [job.job_id, job.status.value, f"{job.progress}%"]
    parts.append(f"files {job.completed_files}/{job.total_files}")
    if job.failed_files:
        parts.append(f"failed {job.failed_files}")
    if job.total_bytes:
        parts.append(f"bytes {job.bytes_processed}/{job.total_bytes}")
    if job.error:
        parts.append(f"error: {job.error}")
    return " ".join(parts)


def summary_line(job: JobSummary) -> str:
    done = job.completed_at or "-"
    error = f" error: {job.error}" if job.error else ""
    return f"{job.job_id} {job.status.value} files {job.total_files} {job.created_at} {done}{error}"


class Output:
    """Everything the commands print; errors go to stderr."""

    def __init__(self) -> None:
        self.console = Console(highlight=False)
        self.errors = Console(stderr=True, highlight=False)
        self.live = self.console.is_terminal and not self.console.is_dumb_terminal

    def line(self, text: str, style: str | None = None) -> None:
        if self.live:
            self.console.print(Text(text, style=style or ""), soft_wrap=True)
        else:
            typer.echo(text)

    def error(self, message: str) -> None:
        if self.errors.is_terminal:
            self.errors.print(Text(f"error: {message}", style="red"))
        else:
            typer.echo(f"error: {message}", err=True)

    def job(self, job: Job) -> None:
        """A job's status with its files, for `status`."""
        self.line(job_line(job), _STYLE.get(job.status))
        for f in job.files:
            size = "-" if f.size is None else str(f.size)
            error = f" {f.error}" if f.error else ""
            self.line(f"  {f.file_id} {f.status} {size}{error}")
        if job.download_url:
            self.line(f"  archive: {job.download_url}")

    def jobs(self, jobs: Iterable[JobSummary]) -> None:
        if not self.live:
            for job in jobs:
                typer.echo(summary_line(job))
            return
        rows = list(jobs)
        # Job ids are what the other commands take: never shortened.
        width = max((len(j.job_id) for j in rows), default=3)
        job_column = Column("job", no_wrap=True, min_width=width)
        table = Table(job_column, "status", "files", "created", "completed", "error")
        for job in rows:
            status = Text(job.status.value, style=_STYLE.get(job.status, ""))
            table.add_row(
                job.job_id,
                status,
                str(job.total_files),
                job.created_at,
                job.completed_at or "",
                job.error or "",
            )
        self.console.print(table)

    def job_progress(self) -> JobProgress:
        return JobProgress(self)

    def transfer(self, dest: Path) -> TransferProgress:
        return TransferProgress(self, dest)


class _Bar:
    """A rich progress bar on a terminal, or nothing; entered and left around its updates."""

    def __init__(self, out: Output, *columns: str | ProgressColumn) -> None:
        self.out = out
        self.progress = Progress(*columns, console=out.console) if out.live else None
        self.task: TaskID | None = None

    def __enter__(self) -> Self:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.progress is not None:
            self.progress.stop()

    def show(self, description: str, *, total: float | None, done: int, files: str = "") -> None:
        assert self.progress is not None
        if self.task is None:
            self.task = self.progress.add_task(
                description, total=total, completed=done, files=files
            )
        else:
            self.progress.update(
                self.task, description=description, total=total, completed=done, files=files
            )


class JobProgress(_Bar):
    """A job's progress: percent bar with its file count, or one line per event."""

    def __init__(self, out: Output) -> None:
        super().__init__(
            out,
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[files]}"),
            TimeRemainingColumn(),
        )

    def update(self, job: Job) -> None:
        if self.progress is None:
            self.out.line(job_line(job))
            return
        files = f"files {job.completed_files}/{job.total_files}"
        if job.failed_files:
            files += f" ({job.failed_files} failed)"
        self.show(f"{job.job_id} {job.status.value}", total=100, done=job.progress, files=files)


class TransferProgress(_Bar):
    """The archive's bytes: a download bar, or a line per request and one when saved."""

    def __init__(self, out: Output, dest: Path) -> None:
        super().__init__(
            out,
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        )
        self.dest = dest

    def start(self, total: int | None, done: int) -> None:
        if self.progress is None:
            resume = f", resuming at byte {done}" if done else ""
            self.out.line(
                f"downloading {self.dest} ({total if total is not None else '?'} bytes{resume})"
            )
            return
        self.show(str(self.dest), total=total, done=done)

    def advance(self, size: int) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task, size)
