"""Listing jobs from Temporal visibility: the caller's jobs a page at a time, each job once in
its current state, with page tokens sealed to their query; and the count of the jobs waiting or
running."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecution, WorkflowExecutionStatus

from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.jobs.reads import JobReads
from api.schemas import JobList, JobSummary, JobView
from api.views import job_view
from workflows import names
from workflows.models import JobState, JobStatus, JobTally


class JobListing:
    """Visibility queries of one API process."""

    def __init__(self, client: Client, reads: JobReads) -> None:
        self.client = client
        self.reads = reads

    async def list_jobs(
        self, owner: str, status: JobStatus | None, page_size: int, page_token: str | None
    ) -> JobList:
        """The caller's jobs, each once in its current state.

        Temporal lists runs, and a retried job has several: only a job's newest run is listed,
        and a status filter matches that run's state. A listing is of the jobs that existed when
        its first page was asked for (`StartTime` up to then); Temporal lists open runs first,
        so a run seen open on one page and closed by the next is not listed again (the token
        keeps a short digest of each open run it listed). An open job is shown as its status
        shows it (queued or processing, live progress), read through the shared `describe()`.
        """
        base = visibility_query(owner)
        cursor = _open_token(page_token, base, status) if page_token else _Cursor.fresh()
        query = _filtered(base, status) + f" AND StartTime <= '{cursor.as_of_text}'"
        jobs: list[JobSummary] = []
        for _ in range(MAX_FETCHES_PER_PAGE):
            pages = self.client.list_workflows(
                query,
                page_size=page_size - len(jobs),
                next_page_token=cursor.temporal,
                rpc_timeout=RPC_TIMEOUT,
            )
            await pages.fetch_next_page()
            rows = pages.current_page or []
            newest = await self._newest_runs(base, {r.id for r in rows}, cursor.as_of_text)
            shown = [
                execution
                for execution in rows
                # Not an earlier run of a job run again since, nor a run shown open before.
                if newest.get(execution.id, execution.run_id) == execution.run_id
                and cursor.first_sighting(execution)
            ]
            for summary in await asyncio.gather(*(self._summary(e, owner) for e in shown)):
                if summary is not None and (status is None or summary.status is status):
                    jobs.append(summary)
            cursor.temporal = pages.next_page_token
            if not cursor.temporal or len(jobs) >= page_size:
                break
        token = _seal_token(cursor, base, status) if cursor.temporal else None
        return JobList(jobs=jobs, next_page_token=token)

    async def _summary(self, execution: WorkflowExecution, owner: str) -> JobSummary | None:
        """A job's list item: an open one as its status shows it, a closed one from its memo.
        Only the caller's: the owner is the one the run's sealed request names (the `Owner`
        search attribute only narrows the query; anyone who reaches Temporal can set it)."""
        if execution.status == WorkflowExecutionStatus.RUNNING:
            try:
                record = await self.reads.describe(execution.id, owner)
            except ApiError:  # not the caller's job, or no job of ours
                return None
            return await _summary(execution, record.state, record.view)
        try:
            request, _ = await self.reads.run_request(execution.id, execution)
        except ApiError:
            return None
        if request.owner != owner:
            return None
        try:
            state = await execution.memo_value(names.STATE_MEMO_KEY, type_hint=JobState)
        except KeyError:
            return None
        view = job_view(state, execution.status, closed_at=execution.close_time)
        return await _summary(execution, state, view)

    async def _newest_runs(self, base: str, job_ids: set[str], as_of: str) -> dict[str, str]:
        """The newest run id of each job (started up to `as_of`), in one visibility query."""
        if not job_ids:
            return {}
        quoted = ", ".join(f"'{_quote(i)}'" for i in sorted(job_ids))
        query = f"{base} AND WorkflowId IN ({quoted}) AND StartTime <= '{as_of}'"
        newest: dict[str, WorkflowExecution] = {}
        async for execution in self.client.list_workflows(
            query, page_size=100, rpc_timeout=RPC_TIMEOUT
        ):
            known = newest.get(execution.id)
            if known is None or execution.start_time > known.start_time:
                newest[execution.id] = execution
        return {job_id: execution.run_id for job_id, execution in newest.items()}

    async def count_running(self, rpc_timeout: timedelta) -> int:
        """Jobs waiting or running, from Temporal visibility."""
        query = f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND ExecutionStatus = 'Running'"
        count = await self.client.count_workflows(query, rpc_timeout=rpc_timeout)
        return count.count


def visibility_query(owner: str) -> str:
    """The owner's download workflows (every run of each)."""
    owned = f"{names.OWNER.name} = '{_quote(owner)}'"
    return f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND {owned}"


def _filtered(base: str, status: JobStatus | None) -> str:
    """Visibility's part of a status filter. `DownloadStatus` says whether a job is decided;
    whether an open job is queued or processing its status tells, after the query."""
    if status in (JobStatus.queued, JobStatus.processing):
        return f"{base} AND ExecutionStatus = 'Running'"
    if status is not None:
        return f"{base} AND {names.DOWNLOAD_STATUS.name} = '{status.value}'"
    return base


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


async def _summary(execution: WorkflowExecution, state: JobState, view: JobView) -> JobSummary:
    counts = (view.completed_files, view.failed_files, view.total_bytes)
    if view.status is JobStatus.completed and execution.status != WorkflowExecutionStatus.RUNNING:
        # A completed job's state is its result; its memo keeps the counts.
        with contextlib.suppress(KeyError):
            tally = await execution.memo_value(names.TALLY_MEMO_KEY, type_hint=JobTally)
            counts = (tally.completed_files, tally.failed_files, tally.total_bytes)
    return JobSummary(
        job_id=execution.id,
        status=view.status,
        total_files=view.total_files,
        completed_files=counts[0],
        failed_files=counts[1],
        total_bytes=counts[2],
        progress=view.progress,
        first_file_ids=[f.file_id for f in state.files[:FIRST_FILE_IDS]],
        created_at=view.created_at,
        completed_at=view.completed_at,
        error=view.error,
        priority=view.priority,
    )


# A page is filled from at most this many visibility pages (earlier runs are skipped).
MAX_FETCHES_PER_PAGE = 5
FIRST_FILE_IDS = 5
# Digests of the open runs a listing has shown, kept in its page token (a few bytes each).
TAG_BYTES = 6
MAX_TAGS = 400


@dataclass
class _Cursor:
    """Where a listing stands: as of when, Temporal's own token, and the open runs shown."""

    as_of: datetime
    temporal: bytes | None = None
    shown_open: set[bytes] = field(default_factory=set)

    @classmethod
    def fresh(cls) -> _Cursor:
        return cls(as_of=datetime.now(UTC))

    @property
    def as_of_text(self) -> str:
        return self.as_of.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def first_sighting(self, execution: WorkflowExecution) -> bool:
        """False for a run shown open on an earlier page that has closed since."""
        tag = hashlib.sha256(execution.run_id.encode()).digest()[:TAG_BYTES]
        if execution.status == WorkflowExecutionStatus.RUNNING:
            if len(self.shown_open) < MAX_TAGS:
                self.shown_open.add(tag)
            return True
        closed = execution.close_time
        return not (closed is not None and closed > self.as_of and tag in self.shown_open)

    def pack(self) -> bytes:
        temporal = self.temporal or b""
        head = struct.pack(">qH", int(self.as_of.timestamp() * 1_000_000), len(temporal))
        return head + temporal + b"".join(sorted(self.shown_open))

    @classmethod
    def unpack(cls, raw: bytes) -> _Cursor:
        micros, length = struct.unpack_from(">qH", raw)
        temporal = raw[10 : 10 + length]
        tags = raw[10 + length :]
        if len(temporal) != length or not temporal or len(tags) % TAG_BYTES:
            raise ValueError("malformed cursor")
        as_of = datetime.fromtimestamp(micros / 1_000_000, UTC)
        shown = {tags[i : i + TAG_BYTES] for i in range(0, len(tags), TAG_BYTES)}
        return cls(as_of=as_of, temporal=temporal, shown_open=shown)


# Page tokens carry a digest of the query they continue, so a forged or foreign token is a 400
# here instead of an opaque server error from Temporal.
def _seal_token(cursor: _Cursor, base: str, status: JobStatus | None) -> str:
    raw = cursor.pack()
    return base64.urlsafe_b64encode(_digest(raw, base, status) + raw).decode()


def _open_token(token: str, base: str, status: JobStatus | None) -> _Cursor:
    try:
        sealed = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        sealed = b""
    digest, raw = sealed[:12], sealed[12:]
    if raw and hmac.compare_digest(digest, _digest(raw, base, status)):
        with contextlib.suppress(ValueError, struct.error, OverflowError, OSError):
            return _Cursor.unpack(raw)
    raise ApiError(400, "validation_error", "pageToken is not a valid page token")


def _digest(raw: bytes, base: str, status: JobStatus | None) -> bytes:
    query = f"{base}\n{status.value if status else ''}"
    return hashlib.sha256(query.encode() + b"\n" + raw).digest()[:12]
