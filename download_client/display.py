"""How the client shows a job and a transfer.

On a terminal: live rich progress bars. Otherwise (a pipe, a log, CI): one plain line per change,
no ANSI codes, so the output can be read by a program or a person scrolling a log.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import typer
from rich.console import Console
from rich.markup import escape
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


ESTIMATING = "estimating…"


def size(n: int | None) -> str:
    """Bytes in binary units, as the service counts them: 512 B, 97.7 KiB, 40.0 MiB."""
    if n is None:
        return "-"
    value, unit = float(n), 0
    while value >= 1024 and unit < 4:
        value, unit = value / 1024, unit + 1
    return f"{n} B" if unit == 0 else f"{value:.1f} {('KiB', 'MiB', 'GiB', 'TiB')[unit - 1]}"


def duration(seconds: float) -> str:
    """12 s, 3 min, 2 h, 4 days."""
    s = max(0, round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    if s < 36 * 3600:
        return f"{round(s / 3600)} h"
    return f"{round(s / 86400)} days"


def ago(when: datetime | None, now: datetime | None = None) -> str:
    """`when` in words: "just now", "5 min ago"."""
    if when is None:
        return "-"
    seconds = ((now or datetime.now(UTC)) - when).total_seconds()
    return "just now" if seconds < 5 else f"{duration(seconds)} ago"


def eta(job: Job, now: datetime | None = None) -> str | None:
    """Time left, "estimating…" while the figure would be a guess, None once the job ended.

    A guess: the API says so (`etaBasis` "estimating"), gives no time, or does not say on what
    its time rests (an older server) while less than 10 % of the job is done.
    """
    if job.status.terminal:
        return None
    early = not job.eta_reported and job.progress < 10
    at = job.estimated_completion_at
    if job.eta_basis == "estimating" or early or at is None:
        return ESTIMATING
    return duration((at - (now or datetime.now(UTC))).total_seconds())


def job_line(job: Job) -> str:
    parts = [job.job_id, job.status.value, f"{job.progress}%"]
    parts.append(f"files {job.completed_files}/{job.total_files}")
    if job.failed_files:
        parts.append(f"failed {job.failed_files}")
    if job.total_bytes:
        parts.append(f"{size(job.bytes_processed)}/{size(job.total_bytes)}")
    if job.current_file is not None and not job.status.terminal:
        parts.append(f"now {job.current_file}")
        if job.current_file_size is not None:
            parts.append(f"({size(job.current_file_bytes or 0)}/{size(job.current_file_size)})")
    left = eta(job)
    if left is not None:
        parts.append(f"eta {left}")
    if job.priority is not None:
        parts.append(f"priority {job.priority}")
    if job.error:
        parts.append(f"error: {job.error}")
    return " ".join(parts)


LIST_COLUMNS = ("JOB", "STATUS", "FILES", "FAILED", "SIZE", "CREATED", "TOOK", "FILE IDS", "ERROR")


def summary_row(job: JobSummary, now: datetime | None = None) -> list[str]:
    """A job as the cells of `list`: LIST_COLUMNS."""
    files = str(job.total_files)
    if job.completed_files is not None:
        files = f"{job.completed_files}/{job.total_files}"
    took = "-"
    if job.created_at is not None and job.completed_at is not None:
        took = duration((job.completed_at - job.created_at).total_seconds())
    elif job.status is JobStatus.processing and job.progress is not None:
        took = f"{job.progress}%"
    ids = " ".join(str(i) for i in job.first_file_ids)
    if ids and job.total_files > len(job.first_file_ids):
        ids += " …"
    return [
        job.job_id,
        job.status.value,
        files,
        str(job.failed_files) if job.failed_files is not None else "-",
        size(job.total_bytes) if job.total_bytes else "-",
        ago(job.created_at, now),
        took,
        ids or "-",
        job.error or "",
    ]


def plain_table(header: Iterable[str], rows: list[list[str]]) -> list[str]:
    """Columns aligned with spaces, the last one left ragged."""
    table = [list(header), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return [
        "  ".join(
            [*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]]
        ).rstrip()
        for row in table
    ]


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
            error = f" {f.error}" if f.error else ""
            digest = f" sha256 {f.sha256}" if f.sha256 else ""
            self.line(f"  {f.file_id} {f.status} {size(f.size)}{error}{digest}")
        parts = job.parts
        for part in parts:
            name = "archive" if len(parts) == 1 else f"archive part {part.number}/{len(parts)}"
            self.line(f"  {name} ({size(part.size)}): {part.url}")

    def jobs(self, jobs: Iterable[JobSummary]) -> None:
        """`list`: a header, then one row per job."""
        now = datetime.now(UTC)
        rows = [(job, summary_row(job, now)) for job in jobs]
        if not self.live:
            for text in plain_table(LIST_COLUMNS, [cells for _, cells in rows]):
                typer.echo(text)
            return
        # Job ids are what the other commands take: never shortened.
        width = max((len(job.job_id) for job, _ in rows), default=3)
        columns = [Column(LIST_COLUMNS[0], no_wrap=True, min_width=width)]
        columns += [Column(name, no_wrap=name != "ERROR") for name in LIST_COLUMNS[1:]]
        table = Table(*columns)
        for job, cells in rows:
            status = Text(cells[1], style=_STYLE.get(job.status, ""))
            table.add_row(cells[0], status, *(escape(c) for c in cells[2:]))
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
        )

    def update(self, job: Job) -> None:
        if self.progress is None:
            self.out.line(job_line(job))
            return
        files = f"files {job.completed_files}/{job.total_files}"
        if job.failed_files:
            files += f" ({job.failed_files} failed)"
        if job.current_file is not None and not job.status.terminal:
            files += f" · {job.current_file}"
            if job.current_file_size is not None:
                files += f" {size(job.current_file_bytes or 0)}/{size(job.current_file_size)}"
        left = eta(job)
        if left is not None:
            files += f" · eta {left}"
        self.show(
            f"{job.job_id} {job.status.value}", total=100, done=job.progress, files=escape(files)
        )


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
