"""Packaging attempts' live progress on the progress bus (`core.bus`), beside their heartbeats.

While an attempt runs, its progress is published as soon as it moves, at most once every
PROGRESS_PUBLISH_SECONDS, and at least every KEEPALIVE_SECONDS when it does not (readers then know
the bus still carries the job); once more when the attempt ends, marked `ended`. One task per
worker looks at every running attempt's position (a few integers) every LOOK_SECONDS, so a
thousand attempts cost a thousand comparisons, not a thousand timers; an attempt that has just
begun a file says so (`FeedAttempt.moved`), and is published at once.

With the bus up, Temporal heartbeats drop to what durability needs: one per stored part and one
every DURABLE_HEARTBEAT_SECONDS (at most a quarter of the heartbeat timeout) for lost-worker
detection and cancellation. With the bus off or down, heartbeats carry progress every
HEARTBEAT_INTERVAL_SECONDS as they always did. A message on the job's `.beat` subject (the API
sends one when the job is being cancelled) brings that pace back for HURRY_SECONDS, so a cancel
reaches the attempt at its next heartbeat within HEARTBEAT_INTERVAL_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from temporalio import activity

from core.bus import BEAT_SUFFIX, ENDED_SUFFIX, Publisher
from core.config import Settings
from workflows.models import PackageProgress, ProgressNotice, ProgressSummary

KEEPALIVE_SECONDS = 1.0
# The longest an attempt waits for the bus (its `.beat` subscription), ever.
BUS_CALL_SECONDS = 1.0
HURRY_SECONDS = 5.0
# How often running attempts' positions are looked at.
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


@dataclass
class _Live:
    subject: str
    job_id: str
    run_id: str | None
    details: Callable[[], PackageProgress]
    position: Callable[[], object]
    attempt: int = 0
    last: object = None
    sent_at: float = 0.0
    hurry_until: float = 0.0


class FeedAttempt:
    """What an attempt asks of the feed while it runs: how long between two heartbeats."""

    def __init__(self, feed: ProgressFeed, live: _Live | None) -> None:
        self.feed, self.live = feed, live

    def heartbeat_seconds(self) -> float:
        if self.live is not None and time.monotonic() < self.live.hurry_until:
            return self.feed.settings.heartbeat_interval_seconds
        return heartbeat_seconds(self.feed.publisher, self.feed.settings)

    def moved(self) -> None:
        """The attempt has just moved (a file done, the next one begun): publish it now rather
        than at the next look, as long as PROGRESS_PUBLISH_SECONDS have passed since the last."""
        if self.live is not None:
            with contextlib.suppress(Exception):  # never the attempt's failure
                self.feed.look(self.live, time.monotonic())


class ProgressFeed:
    """The running attempts of one worker, published by one task."""

    def __init__(self, publisher: Publisher | None, settings: Settings) -> None:
        self.publisher, self.settings = publisher, settings
        self._live: dict[int, _Live] = {}
        self._task: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def publishing(
        self,
        job_id: str,
        run_id: str | None,
        details: Callable[[], PackageProgress],
        position: Callable[[], object],
        attempt: int = 0,
    ) -> AsyncIterator[FeedAttempt]:
        """Publish `details()` while the block runs (nothing without a publisher), then `ended`;
        `position()` is cheap and changes whenever the progress does. Publishing never waits
        and never fails the attempt."""
        if self.publisher is None:
            yield FeedAttempt(self, None)
            return
        subject = self.publisher.bus.subject(job_id)
        live = _Live(subject, job_id, run_id, details, position, attempt)
        self._live[id(live)] = live
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        self.look(live, time.monotonic())
        hurry = await self._listen(live)
        try:
            yield FeedAttempt(self, live)
        finally:
            del self._live[id(live)]
            with contextlib.suppress(Exception):
                self._send(live, ended=True)
                # Once more where one API replica among those streaming the job takes it: that
                # one waits for the run's close and shares what it reads (`api.watchers`).
                self._send(live, ended=True, subject=f"{live.subject}.{ENDED_SUFFIX}")
            if hurry is not None:
                # Never awaited here: the client may be stuck behind a connection it has not
                # yet found dead, and an attempt's end must not wait for the bus.
                task = asyncio.create_task(_unsubscribe(hurry))
                self._leaving.add(task)
                task.add_done_callback(self._leaving.discard)

    async def _listen(self, live: _Live) -> Subscription | None:
        """Interest in the job's `.beat` subject, while the bus is up."""
        assert self.publisher is not None
        if not self.publisher.connected:
            return None

        async def hurry(_: Msg) -> None:
            live.hurry_until = time.monotonic() + HURRY_SECONDS

        try:
            return await asyncio.wait_for(
                self.publisher.bus.nc.subscribe(f"{live.subject}.{BEAT_SUFFIX}", cb=hurry),
                BUS_CALL_SECONDS,
            )
        except (nats.errors.Error, TimeoutError):
            return None

    def _send(self, live: _Live, ended: bool = False, subject: str | None = None) -> None:
        assert self.publisher is not None
        notice = ProgressNotice(
            **live.details().model_dump(include=_SUMMARY),
            job_id=live.job_id,
            run_id=live.run_id,
            attempt=live.attempt,
            ended=ended,
        )
        self.publisher.offer(subject or live.subject, notice.model_dump_json().encode())

    def look(self, live: _Live, now: float) -> None:
        at, since = live.position(), now - live.sent_at
        if (at != live.last and since >= self.settings.progress_publish_seconds) or (
            since >= KEEPALIVE_SECONDS
        ):
            self._send(live)
            live.last, live.sent_at = at, now

    async def _run(self) -> None:
        while self._live:
            await asyncio.sleep(LOOK_SECONDS)
            now = time.monotonic()
            for live in list(self._live.values()):
                with contextlib.suppress(Exception):  # never the attempt's failure
                    self.look(live, now)


async def _unsubscribe(sub: Subscription) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(sub.unsubscribe(), BUS_CALL_SECONDS)
