"""Job watchers: the live progress that feeds Server-Sent Events and WebSocket streams alike.

One watcher task per job per API process follows the job while it has subscribers and shares
each new snapshot with all of them, so Temporal is asked once per job, not per subscriber or per
transport. Where snapshots come from: the first one, and every one while the progress bus is off,
down or silent about the job, from `describe()` (budgeted polling); while the job's packaging
attempt publishes on the bus (`core.bus`), from its messages, with no Temporal call until the
attempt ends, when Temporal says what follows. Subscribers only ever need the newest snapshot,
so a slow one skips stale progress instead of queueing it. A snapshot is encoded once per transport and sent as is.
`StreamSlots` caps the open streams of both transports per owner and per client address.

A `progress` event names the files whose state changed since the stream's previous event
(`changedFiles`; every file in a stream's first event). A snapshot is encoded with the changes
since the watcher's previous one, which is what a subscriber that keeps up was sent last; one
that skipped snapshots, or has just come, is sent an encoding of its own.

Event ids are ordered keys derived from the job's state (run, terminal, bytes, files, status):
a client resuming with `Last-Event-ID` (SSE) or `lastEventId` (WebSocket) gets only newer events,
from any API replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from aiolimiter import AsyncLimiter
from pydantic import ValidationError
from sse_starlette import ServerSentEvent

from api.errors import ApiError
from api.jobs.reads import JobReads
from api.schemas import FileView, JobView, ProgressEvent
from api.views import JobRecord, PendingActivity, SignedRecords, job_view
from core.bus import BEAT_SUFFIX, CLOSED_SUFFIX, ENDED_SUFFIX, READ_SUFFIX, Subscriptions
from core.metrics import ACTIVE_SSE
from core.observability import get_logger
from workflows.models import JobStatus, ProgressNotice
from workflows.names import PACKAGE_ARCHIVE

log = get_logger("api.watchers")

POLL_SECONDS = 0.25
# A job that does not move (queued, or waiting on a slow origin) is asked less and less often.
IDLE_MAX_SECONDS = 5.0
# While the bus is up a queued job's attempt announces its start there, and a cancel made
# through any replica wakes the job's watchers (`.beat`): a queued job is asked only this
# rarely, in case its worker is off the bus. At the same instants on every replica (placed by
# the job id, so jobs do not all come at once), each replica a random part of the stagger
# (a share of the period) after: the first one to read shares what it read, and the others
# take it (`.read`).
BUS_IDLE_MAX_SECONDS = 30.0
BACKSTOP_STAGGER = 0.1
STREAM_RETRY_AFTER_SECONDS = 10
PING_SECONDS = 15.0
BUDGET_SLICES = 10
RECONNECT_MS = 3000
# A replica that took another's read of a job waits this many times as long as its own next
# read would: the replica that reads goes on reading for all of them (a moving job every
# POLL_SECONDS, a queued one at each backstop instant), another one takes over once it stops
# (it no longer streams the job).
FOLLOW_READS = 4.0
# A replica about to read a job says so on the bus first (a claim): the others, whose turn
# comes before that read reaches them (a loaded Temporal answers in tenths of a second), wait
# for it this long at most instead of reading too. A claim that was not followed by a read
# holds none of the replica's reads back until it takes another replica's read again.
CLAIM_SECONDS = 2.0
# A job's bus messages are turned into a snapshot at most this often (the newest one wins).
BUS_GAP_SECONDS = 0.1
# A moving job's attempt publishes at least every second: silent three times as long (a
# worker too busy to keep up, or away from the bus), the job is polled again.
BUS_SILENCE_SECONDS = 3.0
# After an attempt's end, how long one long poll waits for the run to close before the job is
# described once again (a retry's next attempt, or the bus going down, ends the wait at once).
END_WAIT_SECONDS = 15.0
# A job with a callback is decided before its run closes (the run then notifies the callback):
# its memo is read this often meanwhile.
CALLBACK_END_WAIT_SECONDS = 1.0
# The queue group of API replicas streaming a job: an attempt's end reaches one of them.
ENDS_QUEUE = "api-job-ends"
# The subjects below a streamed job's own that its watcher subscribes to.
_JOB_SUFFIXES = (ENDED_SUFFIX, CLOSED_SUFFIX, BEAT_SUFFIX, READ_SUFFIX)
EventKey = tuple[int, ...]
_RANK = {JobStatus.queued: 0, JobStatus.processing: 1}


def event_key(record: JobRecord) -> EventKey:
    view = record.view
    run = int(record.run_started.timestamp() * 1000)
    terminal = int(view.status.terminal)
    files = view.completed_files + view.failed_files
    return (run, terminal, view.bytes_processed, files, _RANK.get(view.status, 2))


def format_event_id(key: EventKey) -> str:
    return ".".join(str(k) for k in key)


def parse_event_id(value: str | None) -> EventKey | None:
    parts = (value or "").strip().split(".")
    if len(parts) != 5 or not all(p.isdigit() and len(p) < 20 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _as_is(f: FileView) -> FileView:
    return f


@dataclass(frozen=True)
class Snapshot:
    key: EventKey
    terminal: bool
    event: bytes  # the SSE event
    message: str  # the WebSocket message: {"id", "event", "data"}
    record: JobRecord
    view: JobView
    # The snapshot whose files `changedFiles` is relative to (None: it carries every file).
    since: EventKey | None = None
    # What a file an event carries is sent as (a completed one with its own link).
    link: Callable[[FileView], FileView] = _as_is


def _file_state(f: FileView) -> dict[str, object]:
    return f.model_dump(exclude={"download_url"})


def changed_files(before: list[FileView] | None, after: list[FileView]) -> list[FileView]:
    """The files of `after` whose state differs from `before` (all of them without `before`);
    a fresh presigned link is no change. Files in the same place as the same object are the
    same (the views of a job keep the files that did not change), so a job of many files is
    compared at the cost of those that changed."""
    if before is None:
        return list(after)
    if len(before) == len(after) and all(
        b is a or b.file_id == a.file_id for b, a in zip(before, after, strict=True)
    ):
        return [
            a
            for b, a in zip(before, after, strict=True)
            if b is not a and _file_state(b) != _file_state(a)
        ]
    seen = {f.file_id: _file_state(f) for f in before}
    return [f for f in after if seen.get(f.file_id) != _file_state(f)]


def snapshot(
    record: JobRecord,
    view: JobView,
    previous: Snapshot | None = None,
    link: Callable[[FileView], FileView] = _as_is,
) -> Snapshot:
    """Encoded once and sent as is to every subscriber whose last event was `previous`;
    terminal events carry the whole job. A `progress` event's files are sent through `link`."""
    key = event_key(record)
    if view.status.terminal:
        name, data = view.status.value, view.model_dump_json(by_alias=True)
    else:
        before = previous.view.files if previous else None
        changed = [link(f) for f in changed_files(before, view.files)]
        fields = view.model_dump(exclude={"files"})
        progress = ProgressEvent.model_validate({**fields, "changed_files": changed})
        name, data = "progress", progress.model_dump_json(by_alias=True)
    event_id = format_event_id(key)
    event = ServerSentEvent(data=data, event=name, id=event_id, retry=RECONNECT_MS)
    # `data` is already JSON: embedded as is, the same object the SSE event carries.
    message = f'{{"id":{json.dumps(event_id)},"event":{json.dumps(name)},"data":{data}}}'
    return Snapshot(
        key=key,
        terminal=view.status.terminal,
        event=event.encode(),
        message=message,
        record=record,
        view=view,
        since=previous.key if previous else None,
        link=link,
    )


def for_stream(snap: Snapshot, sent: Snapshot | None) -> Snapshot:
    """`snap` as one stream is sent it: re-encoded unless its changes are relative to the
    stream's previous event."""
    if snap.terminal or snap.since == (sent.key if sent is not None else None):
        return snap
    return snapshot(snap.record, snap.view, sent, snap.link)


def _notice(job_id: str, payload: bytes) -> ProgressNotice | None:
    """The bus message `payload` carries, if it is one and of job `job_id`."""
    try:
        notice = ProgressNotice.model_validate_json(payload)
    except ValidationError:
        return None
    return notice if notice.job_id == job_id else None


@dataclass
class _Watch:
    record: JobRecord
    latest: Snapshot
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    subscribers: int = 0
    task: asyncio.Task[None] | None = None
    closed: bool = False
    # The newest bus message not yet applied, and when the bus last spoke of the job.
    notice: ProgressNotice | None = None
    heard: float | None = None
    noticed: asyncio.Event = field(default_factory=asyncio.Event)
    # The job's packaging attempt said it ended: what follows is awaited from Temporal, by
    # the one replica the bus picked (`elected`), which shares what it reads (`shared`).
    ending: bool = False
    # Seen processing once: not moving now is a pause (between attempts, or the run closing),
    # not a queue to wait in.
    started: bool = False
    elected: bool = False
    elected_for: tuple[str | None, int] | None = None
    shared: JobRecord | None = None
    end_news: asyncio.Event = field(default_factory=asyncio.Event)
    # Another replica's read of the job, taken for this replica's next one; and the signature
    # of the last read this replica shared (heard back from the bus, it is no news).
    read: JobRecord | None = None
    sent_read: bytes = b""
    # Woken since the last read of its own: the next read is made here, not taken from others.
    woken: bool = False
    # Until when another replica's claim holds this one's read back (monotonic), and whether
    # claims are heeded (not once one was left without its read).
    claimed: float | None = None
    heed_claims: bool = True

    def wake(self) -> None:
        """Ask Temporal now (the job is being cancelled, or the bus went down)."""
        self.woken, self.read = True, None
        self.noticed.set()

    def offer_read(self, record: JobRecord) -> None:
        """Another replica read the job: unless this one must read it afresh, or waits for the
        run's close, that read stands for its next one."""
        if not self.woken and not self.ending:
            self.read = record
            self.noticed.set()

    def take_read(self) -> JobRecord | None:
        read, self.read = self.read, None
        if read is not None:
            self.claimed, self.heed_claims = None, True
        return read

    def hear_claim(self) -> None:
        """Another replica is reading the job: its read is on its way."""
        if self.heed_claims and not self.woken:
            self.claimed = time.monotonic() + CLAIM_SECONDS

    def held(self) -> float:
        """How much longer a claim holds this replica's read back (0: read)."""
        if self.claimed is None or self.woken:
            return 0.0
        left = self.claimed - time.monotonic()
        if left <= 0:
            self.claimed, self.heed_claims = None, False
            return 0.0
        return left

    def elect(self, job_id: str, payload: bytes) -> None:
        """The bus picked this replica to read the run's close after the attempt's end."""
        if (notice := _notice(job_id, payload)) is not None:
            self.elected, self.elected_for = True, (notice.run_id, notice.attempt)
            self.end_news.set()

    def follow_attempt(self, notice: ProgressNotice) -> None:
        """A new attempt publishes: the last one's end is no news any more. (The pick comes on
        a subject of its own, and may come before the last messages of the attempt it ends:
        those keep it.)"""
        if self.elected and (notice.run_id, notice.attempt) == self.elected_for:
            return
        self.ending = self.elected = False
        self.shared = None
        self.end_news.clear()

    def hear(self, job_id: str, payload: bytes) -> None:
        if (notice := _notice(job_id, payload)) is not None:
            self.notice, self.heard = notice, time.monotonic()
            self.noticed.set()

    async def wait_notice(self, seconds: float) -> ProgressNotice | None:
        """The next bus message, or None after `seconds` (at once if another replica's read
        waits to be taken)."""
        if self.notice is None and self.read is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self.noticed.wait()
        self.noticed.clear()
        notice, self.notice = self.notice, None
        return notice

    def publish(self, record: JobRecord, snap: Snapshot) -> None:
        self.record = record
        self.started = self.started or record.view.status is JobStatus.processing
        if snap.key > self.latest.key:
            self.latest = snap
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def next_after(self, key: EventKey | None) -> Snapshot | None:
        while True:
            if key is None or self.latest.key > key:
                return self.latest
            if self.closed:
                return None
            await self.changed.wait()


class StreamSlots:
    """Open event streams (SSE and WebSocket) per owner and per client address, each capped."""

    def __init__(self, per_owner: int, per_client: int) -> None:
        self.per_owner, self.per_client = per_owner, per_client
        self.owners: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()

    def take(self, owner: str, client: str) -> StreamSlot:
        """A slot for one more stream, or 429 with `Retry-After` past either cap."""
        if self.owners[owner] >= self.per_owner or self.clients[client] >= self.per_client:
            raise ApiError(
                429,
                "too_many_streams",
                "too many open event streams; close one or try again later",
                headers={"Retry-After": str(STREAM_RETRY_AFTER_SECONDS)},
            )
        self.owners[owner] += 1
        self.clients[client] += 1
        return StreamSlot(self, owner, client)


class StreamSlot:
    def __init__(self, slots: StreamSlots, owner: str, client: str) -> None:
        self.slots, self.owner, self.client = slots, owner, client
        self.held = True

    def release(self) -> None:
        """Give the slot back (once, whoever calls first)."""
        if not self.held:
            return
        self.held = False
        for counter, key in ((self.slots.owners, self.owner), (self.slots.clients, self.client)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class JobWatchers:
    """The watcher tasks of one API process, keyed by job id.

    Together they ask Temporal at most `budget` times a second: jobs that move (processing) wait
    their turn for the budget; idle ones (queued) back off and yield it to them.
    """

    def __init__(
        self,
        reads: JobReads,
        budget: float,
        poll_seconds: float = POLL_SECONDS,
        bus: Subscriptions | None = None,
    ) -> None:
        self.reads, self.poll_seconds, self.bus = reads, poll_seconds, bus
        # Metered in slices of a tenth of a second (or of one call, for small budgets): a full
        # bucket lets at most one slice through at once, not a whole second's worth.
        capacity = max(1.0, budget / BUDGET_SLICES)
        self.budget = AsyncLimiter(capacity, capacity / budget)
        self.idle_share = max(1.0, capacity / 2)
        self.ping_seconds = PING_SECONDS
        # Closed runs' records shared with the other replicas (over the bus only).
        self.records = SignedRecords(reads.settings.request_seal_key) if bus else None
        # This replica, in its claims (its own come back from the bus).
        self.replica = secrets.token_hex(8)
        self._watches: dict[str, _Watch] = {}
        if bus is not None:
            # Bus gone: every watcher polls Temporal at once, not when the silence runs out.
            bus.bus.on_disconnect.append(self._wake_all)

    def snapshot(self, record: JobRecord, previous: Snapshot | None = None) -> Snapshot:
        """A terminal snapshot carries the whole job with its links; a `progress` one the files
        that changed, each linked as it is sent."""
        if record.view.status.terminal:
            return snapshot(record, self.reads.with_download(record), previous)
        return snapshot(record, record.view, previous, self.reads.file_link)

    @property
    def watched_jobs(self) -> int:
        return len(self._watches)

    async def first_record(self, job_id: str, owner: str) -> JobRecord:
        """A new subscriber's view of the job: the watcher's last one, or one `describe()` within
        the budget (a thousand clients connecting at once do not burst past it)."""
        if (record := self.watched(job_id, owner)) is not None:
            return record
        await self.budget.acquire()
        return await self.reads.describe(job_id, owner)

    def watched(self, job_id: str, owner: str) -> JobRecord | None:
        """The job's last polled record when a watcher runs, saving a `describe()` per subscriber."""
        watch = self._watches.get(job_id)
        if watch is None or watch.closed or watch.record.state.owner != owner:
            return None
        return watch.record

    @contextlib.asynccontextmanager
    async def subscribe(self, record: JobRecord) -> AsyncIterator[_Watch]:
        job_id = record.view.job_id
        watch = self._watches.get(job_id)
        if watch is None:
            watch = _Watch(record=record, latest=self.snapshot(record))
            watch.started = record.view.status is JobStatus.processing
            if self.bus is not None:
                # Interest in this job's subjects: only the jobs this process streams reach it.
                subject = self.bus.bus.subject(job_id)
                self.bus.add(subject, functools.partial(watch.hear, job_id))
                elect = functools.partial(watch.elect, job_id)
                self.bus.add(f"{subject}.{ENDED_SUFFIX}", elect, queue=ENDS_QUEUE)
                self.bus.add(
                    f"{subject}.{CLOSED_SUFFIX}", functools.partial(self._hear_closed, watch)
                )
                self.bus.add(f"{subject}.{BEAT_SUFFIX}", functools.partial(self._woken, watch))
                self.bus.add(f"{subject}.{READ_SUFFIX}", functools.partial(self._hear_read, watch))
            watch.task = asyncio.create_task(self._run(job_id, record.state.owner, watch))
            self._watches[job_id] = watch
        watch.subscribers += 1
        try:
            yield watch
        finally:
            watch.subscribers -= 1
            if watch.subscribers == 0:
                if self._watches.get(job_id) is watch:
                    del self._watches[job_id]
                    if self.bus is not None:
                        subject = self.bus.bus.subject(job_id)
                        for suffix in ("", *(f".{s}" for s in _JOB_SUFFIXES)):
                            self.bus.remove(f"{subject}{suffix}")
                if watch.task is not None:
                    watch.task.cancel()

    def hurry(self, job_id: str) -> None:
        """Ask the job's running attempt, if it is on the bus, to heartbeat Temporal at the old
        pace for a few seconds: a cancellation then reaches it at once. The job's watchers on
        every replica hear it too, and ask Temporal now (a queued job is asked rarely)."""
        if self.bus is not None:
            self._publish(job_id, BEAT_SUFFIX)

    def _woken(self, watch: _Watch, _: bytes) -> None:
        """The job is being cancelled (on any replica): read it afresh, not from the answer
        shared a moment ago."""
        self.reads.snapshots.forget(watch.record.view.job_id)
        watch.wake()

    def _wake_all(self) -> None:
        for watch in self._watches.values():
            watch.wake()

    def _covered(self, watch: _Watch) -> float:
        """How much longer the bus speaks for the job (0: poll Temporal)."""
        if self.bus is None or watch.heard is None or not self.bus.connected:
            return 0.0
        return max(0.0, watch.heard + BUS_SILENCE_SECONDS - time.monotonic())

    def _apply(self, watch: _Watch, notice: ProgressNotice) -> None:
        """A bus message as the job's next snapshot: the state last read from Temporal with the
        attempt's progress, as `describe()` would show it with that heartbeat (same event ids)."""
        record = watch.record
        if record.view.status.terminal or record.state.status.terminal:
            return
        running = [PendingActivity(name=PACKAGE_ARCHIVE, started=True, progress=notice)]
        view = job_view(record.state, None, running, files_before=record.view.files)
        live = dataclasses.replace(record, view=view, encoded={})
        if event_key(live) > watch.latest.key:  # else nothing new to encode (a keepalive)
            watch.publish(live, self.snapshot(live, watch.latest))
        else:
            watch.record = live
        watch.started = True
        self.reads.offer(live)

    def _opened(self, watch: _Watch, payload: bytes) -> JobRecord | None:
        """Another replica's record of the job, if signed and of this owner's job."""
        assert self.records is not None
        record = self.records.open(payload, watch.record.view.job_id)
        if record is None or record.state.owner != watch.record.state.owner:
            return None
        return record

    def _publish_record(self, record: JobRecord, suffix: str) -> bytes:
        """`record`, signed, on the job's `suffix` subject for the other replicas; the payload."""
        assert self.bus is not None and self.records is not None
        payload = self.records.sign(record)
        self._publish(record.view.job_id, suffix, payload)
        return payload

    def _publish(self, job_id: str, suffix: str, payload: bytes = b"") -> None:
        """`payload` on the job's `suffix` subject (nothing while the bus is down)."""
        assert self.bus is not None
        self.bus.publish(f"{self.bus.bus.subject(job_id)}.{suffix}", payload)

    def _hear_closed(self, watch: _Watch, payload: bytes) -> None:
        """Another replica's record of the job's closed run."""
        if (record := self._opened(watch, payload)) is not None:
            watch.shared = record
            watch.end_news.set()

    def _hear_read(self, watch: _Watch, payload: bytes) -> None:
        """Another replica's read of the job, or its claim that it is reading it."""
        if SignedRecords.signature(payload) == watch.sent_read:
            return  # this replica's own, back from the bus
        assert self.records is not None
        if (claimant := self.records.claimant(payload, watch.record.view.job_id)) is not None:
            if claimant != self.replica:
                watch.hear_claim()
        elif (record := self._opened(watch, payload)) is not None:
            watch.offer_read(record)

    def _claim(self, watch: _Watch) -> None:
        """Tell the other replicas streaming the job that this one is reading it."""
        if self.bus is not None and self.records is not None:
            job_id = watch.record.view.job_id
            self._publish(job_id, READ_SUFFIX, self.records.claim(job_id, self.replica))

    def _share_read(self, watch: _Watch, record: JobRecord) -> None:
        """A read of the job made here, for the other replicas streaming it: each takes it for
        its own next read, so N replicas ask Temporal about a job what one would."""
        if self.bus is not None and self.records is not None and self.bus.connected:
            payload = self._publish_record(record, READ_SUFFIX)
            watch.sent_read = SignedRecords.signature(payload)

    def _took(self, watch: _Watch, record: JobRecord, delay: float) -> float:
        """A fresh read of the job, made here or shared by another replica, to its subscribers;
        how long until the next read."""
        snap = self.snapshot(record, watch.latest)
        moved = snap.key > watch.latest.key
        watch.publish(record, snap)
        if snap.terminal:
            watch.close()
        if moved or record.view.status is JobStatus.processing:
            return self.poll_seconds
        up = self.bus is not None and self.bus.connected
        return self._idle_delay(record.view.job_id, delay, up and not watch.started)

    async def _closing(self, owner: str, watch: _Watch) -> JobRecord:
        """The closed run's record: read from Temporal by the one replica streaming the job that
        the bus picked, and shared with the others over the bus (two replicas ask Temporal
        what one would). Without the bus, or once a wait found no news, read here."""
        while self.bus is not None and not watch.elected and watch.shared is None:
            watch.end_news.clear()
            await watch.end_news.wait()
        if watch.shared is not None:
            return watch.shared
        record = await self.reads.closed(watch.record, owner)
        if self.bus is not None and self.records is not None:
            self._publish_record(record, CLOSED_SUFFIX)
        return record

    async def _settled(self, owner: str, watch: _Watch) -> bool:
        """After an attempt's end: the run's close, awaited with one long poll parked in
        Temporal (a thousand jobs ending together make a thousand parked polls, not a
        `describe()` each every POLL_SECONDS), until the bus speaks of the job again (the
        attempt is retried, or handed over to another worker) or goes down, or
        END_WAIT_SECONDS pass (CALLBACK_END_WAIT_SECONDS for a job with a callback, decided
        while its run is still open). True once the terminal snapshot is out."""
        request = watch.record.request
        wait = CALLBACK_END_WAIT_SECONDS if request and request.callback_url else END_WAIT_SECONDS
        closing = asyncio.ensure_future(self._closing(owner, watch))
        spoken = asyncio.ensure_future(watch.noticed.wait())
        try:
            done, _ = await asyncio.wait(
                (closing, spoken), timeout=wait, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            closing.cancel()
            spoken.cancel()
        if closing not in done:
            return False
        try:
            record = closing.result()
        except ApiError:
            watch.close()
            return True
        except Exception as exc:  # Temporal unreachable: polling tries again, slower
            log.info("job end wait failed", jobId=watch.record.view.job_id, error=str(exc))
            return False
        snap = self.snapshot(record, watch.latest)
        watch.publish(record, snap)
        if snap.terminal:
            watch.close()
        return snap.terminal

    async def _run(self, job_id: str, owner: str, watch: _Watch) -> None:
        delay = self.poll_seconds
        if self.bus is not None and self.bus.connected:
            # The first snapshot was just read: the bus says what comes next.
            moving = watch.record.view.status is JobStatus.processing
            delay = BUS_SILENCE_SECONDS if moving else _backstop_wait(job_id)
        while not watch.closed:
            up = self.bus is not None and self.bus.connected
            if watch.ending and up and not watch.noticed.is_set():
                # The attempt is over: Temporal says what follows (done, retried, cancelled).
                if await self._settled(owner, watch):
                    return
                if watch.noticed.is_set():
                    continue  # the bus spoke again, went down or woke the job: that first
                # Nothing for END_WAIT_SECONDS: one `describe()` below, then wait again, on
                # Temporal itself (the replica the bus picked may be gone).
                watch.elected = True
            else:
                if self.bus is None:
                    await asyncio.sleep(delay)
                elif (notice := await watch.wait_notice(delay)) is not None:
                    self._apply(watch, notice)
                    if not notice.ended:
                        watch.follow_attempt(notice)
                        # What arrives meanwhile waits, the newest message replacing older ones.
                        await asyncio.sleep(BUS_GAP_SECONDS)
                        delay = BUS_SILENCE_SECONDS
                    else:
                        watch.ending, watch.heard, delay = True, None, self.poll_seconds
                    continue
                elif (read := watch.take_read()) is not None:
                    self.reads.offer(read)
                    delay = self._took(watch, read, delay) * FOLLOW_READS
                    continue
                elif covered := self._covered(watch):
                    delay = covered
                    continue
                elif held := watch.held():
                    delay = held  # another replica is reading the job: its read comes
                    continue
                # A moving job waits its turn; an idle one asks only while half the budget is
                # free, so it never takes a turn a moving job is waiting for.
                moving = watch.record.view.status is JobStatus.processing
                if not moving and not self.budget.has_capacity(self.idle_share):
                    delay = self._idle_delay(job_id, delay, up and not watch.started)
                    continue
            await self.budget.acquire()
            if watch.read is not None:
                continue  # another replica's read came while this one waited its turn: take it
            if held := watch.held():
                delay = held  # or its claim: its read comes
                continue
            watch.woken = False  # woken again while this read is on its way: read once more
            self._claim(watch)
            try:
                record = await self.reads.describe(job_id, owner)
            except ApiError:
                log.info("watched job disappeared", jobId=job_id)
                watch.close()
                return
            except Exception as exc:
                # Temporal unreachable: keep the streams open and try again, slower.
                log.warning("job watch failed", jobId=job_id, error=str(exc))
                delay = min(delay * 2, 5.0) * random.uniform(0.5, 1.5)
                if watch.ending:
                    await asyncio.sleep(delay)
                continue
            self._share_read(watch, record)
            delay = self._took(watch, record, delay)

    @staticmethod
    def _idle_delay(job_id: str, delay: float, queued_on_bus: bool) -> float:
        """How long until an idle job is asked again: twice as long as last time, up to
        IDLE_MAX_SECONDS, with jitter (watchers that started together, a burst of jobs and
        subscribers, do not all wake together in waves that stall Temporal); for a job that has
        not started yet while the bus is up (its attempt will announce itself), its next
        backstop instant."""
        if queued_on_bus:
            return _backstop_wait(job_id)
        return min(delay * 2, IDLE_MAX_SECONDS) * random.uniform(0.5, 1.5)

    async def close(self) -> None:
        tasks = [w.task for w in self._watches.values() if w.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._watches.clear()
        if self.bus is not None:
            await self.bus.close()


def _backstop_wait(job_id: str) -> float:
    """Until the queued job's next backstop read: instants every BUS_IDLE_MAX_SECONDS of the
    wall clock, the same on every replica, placed by a digest of the job id; then a random part
    of the stagger, this replica's own. An instant less than a quarter period away is skipped
    (the job was just read)."""
    period = BUS_IDLE_MAX_SECONDS
    digest = hashlib.sha256(job_id.encode()).digest()
    phase = int.from_bytes(digest[:8], "big") / 2**64 * period
    wait = (phase - time.time()) % period
    if wait < period / 4:
        wait += period
    return wait + random.uniform(0.0, BACKSTOP_STAGGER * period)


async def snapshots(
    watchers: JobWatchers, record: JobRecord, last: EventKey | None
) -> AsyncIterator[Snapshot]:
    """What one subscriber is sent: snapshots newer than `last`, ending with the terminal one."""
    if record.view.status.terminal:
        final = watchers.snapshot(record)
        if last is None or final.key > last:
            yield final
        return
    sent: Snapshot | None = None
    async with watchers.subscribe(record) as watch:
        while (snap := await watch.next_after(last)) is not None:
            sent = for_stream(snap, sent)
            yield sent
            last = snap.key
            if snap.terminal:
                return


async def job_events(
    watchers: JobWatchers, record: JobRecord, last: EventKey | None, slot: StreamSlot
) -> AsyncIterator[bytes]:
    """One SSE subscriber's stream of encoded events; its slot is given back at the end."""
    ACTIVE_SSE.inc()
    try:
        async for snap in snapshots(watchers, record, last):
            yield snap.event
    finally:
        ACTIVE_SSE.dec()
        slot.release()
