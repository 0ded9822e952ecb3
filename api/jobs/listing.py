"""Listing jobs from Temporal visibility: the caller's jobs a page at a time, with page tokens
sealed to their query, and the count of the jobs waiting or running."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import timedelta

from temporalio.client import Client

from api.errors import ApiError
from api.jobs import RPC_TIMEOUT
from api.schemas import JobList, JobSummary
from api.views import job_view
from workflows import names
from workflows.models import JobState, JobStatus


class JobListing:
    """Visibility queries of one API process."""

    def __init__(self, client: Client) -> None:
        self.client = client

    async def list_jobs(
        self, owner: str, status: JobStatus | None, page_size: int, page_token: str | None
    ) -> JobList:
        query = visibility_query(owner, status)
        pages = self.client.list_workflows(
            query,
            page_size=page_size,
            next_page_token=_open_token(page_token, query) if page_token else None,
            rpc_timeout=RPC_TIMEOUT,
        )
        await pages.fetch_next_page()
        jobs = []
        for execution in pages.current_page or []:
            try:
                state = await execution.memo_value(names.STATE_MEMO_KEY, type_hint=JobState)
            except KeyError:
                continue
            view = job_view(state, execution.status, closed_at=execution.close_time)
            jobs.append(
                JobSummary(
                    job_id=execution.id,
                    status=view.status,
                    total_files=view.total_files,
                    created_at=view.created_at,
                    completed_at=view.completed_at,
                    error=view.error,
                    priority=view.priority,
                )
            )
        next_token = pages.next_page_token
        return JobList(
            jobs=jobs, next_page_token=_seal_token(next_token, query) if next_token else None
        )

    async def count_running(self, rpc_timeout: timedelta) -> int:
        """Jobs waiting or running, from Temporal visibility."""
        query = f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND ExecutionStatus = 'Running'"
        count = await self.client.count_workflows(query, rpc_timeout=rpc_timeout)
        return count.count


def visibility_query(owner: str, status: JobStatus | None) -> str:
    quoted = owner.replace("\\", "\\\\").replace("'", "\\'")
    query = f"WorkflowType = '{names.DOWNLOAD_WORKFLOW}' AND {names.OWNER.name} = '{quoted}'"
    if status is not None:
        query += f" AND {names.DOWNLOAD_STATUS.name} = '{status.value}'"
    return query


# Page tokens carry a digest of the query they continue, so a forged or foreign token is a 400
# here instead of an opaque server error from Temporal.
def _seal_token(raw: bytes, query: str) -> str:
    return base64.urlsafe_b64encode(_digest(raw, query) + raw).decode()


def _open_token(token: str, query: str) -> bytes:
    try:
        sealed = base64.b64decode(token.encode(), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        sealed = b""
    digest, raw = sealed[:12], sealed[12:]
    if not raw or not hmac.compare_digest(digest, _digest(raw, query)):
        raise ApiError(400, "validation_error", "pageToken is not a valid page token")
    return raw


def _digest(raw: bytes, query: str) -> bytes:
    return hashlib.sha256(query.encode() + b"\n" + raw).digest()[:12]
