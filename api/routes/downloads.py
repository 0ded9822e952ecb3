"""Download jobs: start, status, details, file, cancel, retry, list, stream tickets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import RedirectResponse

from api.caches import Pace
from api.deps import JobIdDep, OwnerDep, ServicesDep
from api.errors import ApiError, error_responses
from api.schemas import (
    CancelResponse,
    InitiateRequest,
    InitiateResponse,
    JobList,
    JobView,
    StreamTicket,
    job_links,
)
from api.views import JobRecord
from core.observability import request_id_var
from workflows.models import JobStatus

router = APIRouter(tags=["downloads"])


@router.post(
    "/v1/download/initiate",
    response_model=InitiateResponse,
    responses=error_responses(400, 401, 403, 409, 413),
    summary="Start a download job",
)
async def initiate(
    body: InitiateRequest,
    owner: OwnerDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> InitiateResponse:
    """Returns at once; the job runs as a workflow. Repeats with one `Idempotency-Key` get one job."""
    limit = services.settings.max_archive_bytes_limit
    if body.max_archive_bytes is not None and body.max_archive_bytes > limit:
        raise ApiError(400, "bad_request", f"max_archive_bytes is at most {limit}")
    record = await services.commands.start(
        owner=owner,
        file_ids=list(body.file_ids),
        callback_url=str(body.callback_url) if body.callback_url else None,
        request_id=request_id_var.get(),
        idempotency_key=idempotency_key,
        priority=body.priority,
        max_archive_bytes=body.max_archive_bytes,
    )
    return _started(record, services.reads.pace, total_file_ids=len(body.file_ids))


def _started(record: JobRecord, pace: Pace, total_file_ids: int) -> InitiateResponse:
    view = record.view
    return InitiateResponse(
        job_id=view.job_id,
        status=view.status,
        total_files=view.total_files,
        total_file_ids=total_file_ids,
        created_at=view.created_at,
        estimated_time_ms=pace.estimate_ms(view.total_files),
        **job_links(view.job_id),
    )


@router.get(
    "/v1/download/status/{jobId:job_id}",
    response_model=JobView,
    responses=error_responses(401, 404),
    summary="A job's status and progress",
)
async def status(job_id: JobIdDep, owner: OwnerDep, services: ServicesDep) -> Response:
    # Polled by many clients: the snapshot's answer is rendered once, not once per request.
    record = await services.reads.describe(job_id, owner)
    return Response(services.reads.status_json(record), media_type="application/json")


@router.get(
    "/v1/download/{jobId:job_id}",
    response_model=JobView,
    responses=error_responses(401, 404, 410),
    summary="A job's details, with a fresh download URL when completed",
)
async def details(job_id: JobIdDep, owner: OwnerDep, services: ServicesDep) -> JobView:
    return await services.reads.details(job_id, owner)


@router.get(
    "/v1/download/{jobId:job_id}/file",
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "to a fresh presigned URL"},
        **error_responses(401, 404, 409, 410),
    },
    summary="Redirect to the archive (part 1, or `?part=N` of an archive in parts)",
)
async def file(
    job_id: JobIdDep,
    owner: OwnerDep,
    services: ServicesDep,
    part: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> RedirectResponse:
    view = await services.reads.details(job_id, owner)
    if view.download_url is None:
        raise ApiError.conflict(f"the job is {view.status.value}; there is no archive")
    urls = view.download_urls or [view.download_url]
    if part > len(urls):
        raise ApiError(404, "not_found", f"the archive has {len(urls)} part(s)")
    return RedirectResponse(urls[part - 1], status_code=302)


@router.delete(
    "/v1/download/{jobId:job_id}",
    response_model=CancelResponse,
    responses=error_responses(401, 404, 409),
    summary="Cancel a job",
)
async def cancel(job_id: JobIdDep, owner: OwnerDep, services: ServicesDep) -> CancelResponse:
    await services.reads.describe(job_id, owner)  # the caller's job (404 otherwise)
    # With the progress bus, a running attempt heartbeats seldom: it is asked to hurry.
    services.watchers.hurry(job_id)
    record = await services.commands.cancel(job_id, owner)
    # Once more, now that it is done: the job's watchers on every replica show the outcome.
    services.watchers.hurry(job_id)
    return CancelResponse(job_id=job_id, cancelled=True, status=record.view.status)


@router.post(
    "/v1/download/{jobId:job_id}/retry",
    response_model=InitiateResponse,
    responses=error_responses(401, 404, 409),
    summary="Run a failed or cancelled job again under the same id",
)
async def retry(job_id: JobIdDep, owner: OwnerDep, services: ServicesDep) -> InitiateResponse:
    record = await services.commands.retry(job_id, owner)
    return _started(record, services.reads.pace, total_file_ids=record.view.total_files)


@router.post(
    "/v1/download/{jobId:job_id}/ticket",
    response_model=StreamTicket,
    responses=error_responses(401, 404),
    summary="A short-lived ticket for this job's event streams (browsers)",
)
async def ticket(
    job_id: JobIdDep, owner: OwnerDep, services: ServicesDep, response: Response
) -> StreamTicket:
    """Pass it as `?ticket=` to the job's SSE or WebSocket route, where `EventSource` cannot
    send headers; it is valid for STREAM_TICKET_TTL_SECONDS and for this job only."""
    await services.reads.describe(job_id, owner)
    response.headers["Cache-Control"] = "no-store"
    return services.tickets.issue(owner, job_id)


@router.get(
    "/v1/downloads",
    response_model=JobList,
    responses=error_responses(400, 401),
    summary="The caller's jobs, newest first",
)
async def downloads(
    owner: OwnerDep,
    services: ServicesDep,
    status: JobStatus | None = None,
    page_size: Annotated[int, Query(alias="pageSize", ge=1, le=100)] = 20,
    page_token: Annotated[str | None, Query(alias="pageToken", max_length=4096)] = None,
) -> JobList:
    return await services.listing.list_jobs(owner, status, page_size, page_token)
