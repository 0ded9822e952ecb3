"""`download-client`: the commands, and the exit codes they end with (`EXIT_CODES`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from download_client.api import ApiClient
from download_client.display import Output, job_line
from download_client.errors import ClientError, ExitCode
from download_client.follow import follow
from download_client.helptext import Command, Group
from download_client.models import Job, JobStatus, Part
from download_client.transfer import download

DEFAULT_API = "http://localhost:3000"
MIB = 1024 * 1024
OUTCOME = {JobStatus.failed: ExitCode.failed, JobStatus.cancelled: ExitCode.cancelled}
EXIT_CODES = """\b
Exit codes:
  0  the job completed with every file (or the request succeeded)
  1  the job failed
  2  usage error
  3  the job was cancelled
  4  the API is unreachable or answered an error (its message on stderr)
  5  an archive download failed: run get again to resume
  6  the job completed without some files: their ids on stderr"""

app = typer.Typer(
    cls=Group,
    help="Start, follow and fetch download jobs of the download service (over its HTTP API).",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
command = app.command

JobArg = Annotated[str, typer.Argument(metavar="JOB", help="the job id")]
FollowOpt = Annotated[bool, typer.Option("--follow", "-f", help="show progress until the job ends")]
OutputOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        metavar="FILE",
        help="save the archive here when completed (implies --follow); parts 2, 3… of a split "
        "archive beside it as NAME.part2.zip, …",
    ),
]


@dataclass(frozen=True)
class Session:
    api: ApiClient
    out: Output


@app.callback()
def options(
    ctx: typer.Context,
    api: Annotated[
        str,
        typer.Option("--api", metavar="URL", envvar="DOWNLOAD_API_URL", help="the API's base URL"),
    ] = DEFAULT_API,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            metavar="TOKEN",
            envvar="DOWNLOAD_API_TOKEN",
            help="bearer token or API key, sent as Authorization: Bearer",
            show_default=False,
        ),
    ] = None,
) -> None:
    ctx.obj = Session(ctx.with_resource(ApiClient(api.rstrip("/"), token)), Output())


@app.command(cls=Command)
def start(
    ctx: typer.Context,
    file_ids: Annotated[
        list[int],
        typer.Argument(metavar="ID", help="file ids to bundle (10000 to 100000000)"),
    ],
    follow_job: FollowOpt = False,
    output: OutputOpt = None,
    priority: Annotated[
        int | None,
        typer.Option(
            "--priority",
            metavar="N",
            min=1,
            max=5,
            help="1 (most urgent) to 5; default: the service's (a 403 names your ceiling)",
            show_default=False,
        ),
    ] = None,
    max_archive_mb: Annotated[
        int | None,
        typer.Option(
            "--max-archive-mb",
            metavar="MIB",
            min=1,
            help="split the archive into parts of at most MIB mebibytes (default: one archive)",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Start a job; with --follow, show its progress and exit with its outcome."""
    session: Session = ctx.obj
    limit = max_archive_mb * MIB if max_archive_mb is not None else None
    job = session.api.initiate(file_ids, priority, limit)
    session.out.line(job_line(job))
    if follow_job or output:
        raise typer.Exit(_follow_and_save(session, job.job_id, output))


@app.command(cls=Command)
def status(ctx: typer.Context, job_id: JobArg) -> None:
    """Show a job and its files; exits 1 if it failed, 3 if it was cancelled, 6 if files are
    missing."""
    session: Session = ctx.obj
    job = session.api.status(job_id)
    session.out.job(job)
    raise typer.Exit(_outcome(session, job))


@app.command(cls=Command)
def watch(ctx: typer.Context, job_id: JobArg) -> None:
    """Show a job's progress until it ends; exit with its outcome."""
    session: Session = ctx.obj
    raise typer.Exit(_outcome(session, _follow(session, job_id)))


@app.command(cls=Command)
def cancel(ctx: typer.Context, job_id: JobArg) -> None:
    """Cancel a queued or running job."""
    session: Session = ctx.obj
    state = session.api.cancel(job_id)
    session.out.line(f"{job_id} cancel requested, now {state.value}")


@app.command(cls=Command)
def retry(
    ctx: typer.Context, job_id: JobArg, follow_job: FollowOpt = False, output: OutputOpt = None
) -> None:
    """Run a failed or cancelled job again under the same id."""
    session: Session = ctx.obj
    job = session.api.retry(job_id)
    session.out.line(job_line(job))
    if follow_job or output:
        raise typer.Exit(_follow_and_save(session, job_id, output))


@app.command("list", cls=Command)
def list_jobs(
    ctx: typer.Context,
    state: Annotated[
        JobStatus | None,
        typer.Option(
            "--status",
            metavar="STATE",
            help="only jobs in this state: queued, processing, completed, failed or cancelled",
            show_choices=False,
        ),
    ] = None,
) -> None:
    """Your jobs, newest first (every page), with a header line."""
    session: Session = ctx.obj
    session.out.jobs(session.api.jobs(state))


@app.command(cls=Command)
def get(
    ctx: typer.Context,
    job_id: JobArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="FILE",
            help="where to save it (default: JOB.zip); parts 2, 3… of a split archive beside it "
            "as NAME.part2.zip, …",
        ),
    ] = None,
) -> None:
    """Download a job's archive (every part), resuming an interrupted download; waits for a
    running job."""
    session: Session = ctx.obj
    job = session.api.details(job_id)
    if not job.status.terminal:
        job = _follow(session, job_id)
    if job.status is JobStatus.completed:
        _save(session, job_id, output or Path(f"{job_id}.zip"))
    raise typer.Exit(_outcome(session, job))


def _follow(session: Session, job_id: str) -> Job:
    last: Job | None = None
    with session.out.job_progress() as bar:
        for last in follow(session.api, job_id):
            bar.update(last)
    assert last is not None, "follow always yields the final state"
    return last


def _follow_and_save(session: Session, job_id: str, output: Path | None) -> ExitCode:
    job = _follow(session, job_id)
    if job.status is JobStatus.completed and output is not None:
        _save(session, job_id, output)
    return _outcome(session, job)


def _outcome(session: Session, job: Job) -> ExitCode:
    """The job's exit code; a failed or cancelled job, and files a completed job is without, are
    also reported on stderr."""
    if job.status is JobStatus.failed:
        session.out.error(f"job {job.job_id} failed: {job.error or 'no reason given'}")
    elif job.status is JobStatus.cancelled:
        session.out.error(f"job {job.job_id} was cancelled")
    elif job.status is JobStatus.completed and (job.failed or job.failed_files):
        failed = job.failed
        count = len(failed) or job.failed_files
        named = ", ".join(f"{f.file_id} ({f.error})" if f.error else str(f.file_id) for f in failed)
        session.out.error(
            f"job {job.job_id} completed without {count} of {job.total_files} files"
            + (f": {named}" if named else "")
        )
        return ExitCode.partial
    return OUTCOME.get(job.status, ExitCode.completed)


def part_path(dest: Path, part: Part) -> Path:
    """Part 1 is saved as `dest`, part n beside it as `NAME.partN.zip` (as the service names
    its parts)."""
    if part.number == 1:
        return dest
    return dest.with_name(f"{dest.stem}.part{part.number}{dest.suffix}")


def _save(session: Session, job_id: str, dest: Path) -> None:
    # Asked again for fresh presigned URLs, even right after the completed event.
    job = session.api.details(job_id)
    parts = job.parts
    if not parts:
        raise ClientError(f"job {job_id} has no archive")
    for part in parts:
        path = part_path(dest, part)
        with session.out.transfer(path) as bar:
            got = download(part.url, path, part.size, bar)
        session.out.line(f"saved {path} ({got} bytes)", "green")


def main() -> None:
    try:
        app()
    except ClientError as exc:
        Output().error(str(exc))
        raise SystemExit(exc.exit_code) from None
