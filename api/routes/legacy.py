"""The existing service's single-file endpoints: `check` and the synchronous `start`.

Both need credentials when auth is on, like every route that touches files or jobs.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse

from api.deps import OwnerDep, ServicesDep, get_owner
from api.errors import error_responses
from api.schemas import (
    CheckResponse,
    FileRequest,
    LegacyStartResponse,
    StartAccepted,
    job_links,
)
from core.observability import request_id_var
from workflows.models import JobStatus

router = APIRouter(tags=["legacy"])


@router.post(
    "/v1/download/check",
    response_model=CheckResponse,
    responses=error_responses(400, 401, 413),
    dependencies=[Depends(get_owner)],
    summary="Is a source file available?",
)
async def check(body: FileRequest, services: ServicesDep) -> CheckResponse:
    """`s3Key` stays in the body for today's clients but is always null: keys are internal."""
    key = services.settings.source_key(body.file_id)
    info = await asyncio.to_thread(services.store.stat_or_none, key)
    return CheckResponse(
        file_id=body.file_id,
        available=info is not None,
        s3Key=None,
        size=info.size if info is not None else None,
    )


@router.post(
    "/v1/download/start",
    response_model=LegacyStartResponse,
    responses={
        202: {"model": StartAccepted, "description": "still running: follow `Location`"},
        **error_responses(400, 401, 413),
    },
    summary="Download one file, waiting at most the request timeout",
)
async def start(
    body: FileRequest,
    owner: OwnerDep,
    services: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> LegacyStartResponse | JSONResponse:
    """Runs as a job; answers with the old shape when it finishes in time, else 202 and the job."""
    began = time.monotonic()
    timeout = services.settings.request_timeout_ms / 1000
    # Leave room to answer before the request timeout cuts the connection.
    budget = timeout - min(2.0, timeout * 0.2) - 0.2
    record = await services.commands.start(
        owner=owner,
        file_ids=[body.file_id],
        callback_url=None,
        request_id=request_id_var.get(),
        idempotency_key=idempotency_key,
    )
    job_id = record.view.job_id
    if not record.view.status.terminal:
        remaining = max(0.0, budget - (time.monotonic() - began))
        record = await services.reads.wait_for_result(job_id, owner, remaining) or record
    view = record.view
    if not view.status.terminal:
        accepted = StartAccepted(
            file_id=body.file_id,
            job_id=job_id,
            status=view.status,
            message="still preparing; follow statusUrl or subscribeUrl",
            **job_links(job_id),
        )
        return JSONResponse(
            accepted.model_dump(mode="json", by_alias=True),
            status_code=202,
            headers={"Location": accepted.status_url},
        )
    view = services.reads.with_download(record)
    completed = view.status is JobStatus.completed
    file_error = next((f.error for f in view.files if f.error), None)
    return LegacyStartResponse(
        file_id=body.file_id,
        status="completed" if completed else "failed",
        downloadUrl=view.download_url,
        size=view.archive_size,
        processingTimeMs=round((time.monotonic() - began) * 1000),
        message="download ready" if completed else (file_error or view.error or "failed"),
    )
