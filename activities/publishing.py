"""A packaging attempt's live progress on the progress bus (`core.bus`), beside its heartbeats.

While the attempt runs, its progress is published as soon as it moves, at most once every
PROGRESS_PUBLISH_SECONDS, and at least every KEEPALIVE_SECONDS when it does not (readers then know
the bus still carries the job); once more when the attempt ends, marked `ended`. With the bus up, Temporal heartbeats drop to
what durability needs: one per stored part and one every DURABLE_HEARTBEAT_SECONDS (at most a
quarter of the heartbeat timeout) for lost-worker detection and cancellation. With the bus off or
down, heartbeats carry progress every HEARTBEAT_INTERVAL_SECONDS as they always did.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from temporalio import activity

from core.bus import Publisher
from core.config import Settings
from workflows.models import PackageProgress, ProgressNotice, ProgressSummary

KEEPALIVE_SECONDS = 1.0
# How often the attempt's position is looked at (a few integers: cheap).
LOOK_SECONDS = 0.05
_SUMMARY = set(ProgressSummary.model_fields)


def heartbeat_seconds(publisher: Publisher | None, settings: Settings) -> float:
    """How long between two periodic heartbeats of an attempt, now."""
    if publisher is None or not publisher.connected:
        return settings.heartbeat_interval_seconds
    timeout = activity.info().heartbeat_timeout
    durable = settings.durable_heartbeat_seconds
    if timeout:
        durable = min(durable, timeout.total_seconds() / 4)
    return max(settings.heartbeat_interval_seconds, durable)


@contextlib.asynccontextmanager
async def publishing(
    publisher: Publisher | None,
    settings: Settings,
    job_id: str,
    run_id: str | None,
    details: Callable[[], PackageProgress],
    position: Callable[[], object],
) -> AsyncIterator[None]:
    """Publish `details()` while the block runs (nothing without a publisher), then `ended`;
    `position()` is cheap and changes whenever the progress does. Publishing never waits and
    never fails the attempt."""
    if publisher is None:
        yield
        return
    subject = publisher.bus.subject(job_id)
    last: object = None
    sent_at = 0.0

    def publish(progress: PackageProgress, ended: bool = False) -> None:
        notice = ProgressNotice(
            **progress.model_dump(include=_SUMMARY), job_id=job_id, run_id=run_id, ended=ended
        )
        publisher.offer(subject, notice.model_dump_json().encode())

    async def run() -> None:
        nonlocal last, sent_at
        while True:
            now, at = time.monotonic(), position()
            since = now - sent_at
            if (at != last and since >= settings.progress_publish_seconds) or (
                since >= KEEPALIVE_SECONDS
            ):
                publish(details())
                last, sent_at = at, now
            await asyncio.sleep(LOOK_SECONDS)

    task = asyncio.create_task(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(Exception):
            publish(details(), ended=True)
