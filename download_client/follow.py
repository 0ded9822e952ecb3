"""Following a job to its end.

The SSE stream is the live source; a dropped stream is resumed with `Last-Event-ID`, so no event
is repeated. When streaming keeps failing (a proxy that buffers or cuts long responses), the job
is polled instead, and still only its changes are reported.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
from httpx_sse import SSEError

from download_client.api import ApiClient
from download_client.errors import ApiError
from download_client.models import Job

JOB_EVENTS = frozenset({"progress", "completed", "failed", "cancelled"})
STREAM_ATTEMPTS = 3
POLL_SECONDS = 1.0


def follow(api: ApiClient, job_id: str) -> Iterator[Job]:
    """The job at each change; the last one yielded is terminal."""
    last_id: str | None = None
    failures = 0
    while failures < STREAM_ATTEMPTS:
        try:
            with api.events(job_id, last_id) as events:
                for event in events:
                    if event.event not in JOB_EVENTS:
                        continue
                    failures, last_id = 0, event.id or last_id
                    job = Job.from_json(event.json())
                    yield job
                    if job.status.terminal:
                        return
        except ApiError as exc:
            if exc.status < 500:
                raise
        except (httpx.TransportError, SSEError):
            pass
        # The stream ended early, failed or was refused: back off, then resume after `last_id`.
        failures += 1
        time.sleep(0.5 * 2 ** (failures - 1))
    yield from poll(api, job_id)


def poll(api: ApiClient, job_id: str) -> Iterator[Job]:
    """The status endpoint, asked every `POLL_SECONDS`; yields only what changed."""
    seen: tuple[object, ...] | None = None
    while True:
        job = api.status(job_id)
        if job.change != seen:
            seen = job.change
            yield job
        if job.status.terminal:
            return
        time.sleep(POLL_SECONDS)
