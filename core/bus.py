"""The progress bus (NATS): workers publish each job's live progress on a subject of its own, and
each API replica subscribes to the subjects of the jobs it streams.

Only what is stale a moment later travels here; durable state (checkpoints, terminal states)
stays in Temporal. Nothing depends on the bus being there: the connection is made in the
background and kept up for ever, a publisher sends without waiting and drops what it cannot send
(it keeps the newest message per job, a bounded number of jobs), and whoever reads asks
`connected` to know when to fall back to polling Temporal. Subjects name a digest of the job id,
never the id, an owner or anything else a client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable

import nats.errors
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from core.config import Settings
from core.metrics import BUS_PUBLISHED, BUS_RECEIVED
from core.observability import get_logger

log = get_logger("core.bus")

# Bytes a connection may hold unsent (reconnecting, or a slow server) before messages are dropped.
PENDING_BYTES = 1 << 20
# Jobs whose newest message waits to be sent, at most (one message each).
PENDING_JOBS = 10_000
RECONNECT_SECONDS = 1
CONNECT_TIMEOUT_SECONDS = 2


# A job's subjects below its own: the attempt's end, for one API replica (a queue group), and
# the closed run's record that replica read from Temporal, for the others; a cancel's call to
# hurry (the attempt heartbeats at once, the job's watchers read it afresh); a record one API
# replica read from Temporal, for the others streaming the job (one read serves them all).
ENDED_SUFFIX = "end"
CLOSED_SUFFIX = "closed"
BEAT_SUFFIX = "beat"
READ_SUFFIX = "read"


def job_subject(prefix: str, job_id: str) -> str:
    """The job's subject: the prefix and a digest of the job id (one token, no secret)."""
    return f"{prefix}.{hashlib.sha256(job_id.encode()).hexdigest()[:32]}"


class Bus:
    """One NATS connection, made in the background and kept up: `connected` says whether it is
    up now. `on_connect` callbacks run each time it (re)connects."""

    def __init__(self, settings: Settings, name: str, *, no_echo: bool = False) -> None:
        self.settings, self.name, self.no_echo = settings, name, no_echo
        self.prefix = settings.nats_subject_prefix
        self.nc = Nats()
        self.on_connect: list[Callable[[], None]] = []
        self.on_disconnect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._ever_connected = False
        self._warned = False

    def subject(self, job_id: str) -> str:
        return job_subject(self.prefix, job_id)

    @property
    def connected(self) -> bool:
        return self._ever_connected and self.nc.is_connected

    def start(self) -> None:
        self._task = asyncio.create_task(self._connect())

    async def _connect(self) -> None:
        servers = [s.strip() for s in self.settings.nats_url.split(",") if s.strip()]
        await self.nc.connect(
            servers=servers,
            name=self.name,
            user=self.settings.nats_user or None,
            password=self.settings.nats_password or None,
            no_echo=self.no_echo,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_SECONDS,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            pending_size=PENDING_BYTES,
            error_cb=self._error,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
        )
        self._ever_connected = True
        log.info("bus connected", bus=self.name)
        self._connected()

    def _connected(self) -> None:
        self._warned = False
        for callback in list(self.on_connect):
            callback()

    async def _error(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("bus unreachable, retrying", bus=self.name, error=repr(exc))

    async def _disconnected(self) -> None:
        if self._ever_connected:
            log.warning("bus disconnected", bus=self.name)
            for callback in list(self.on_disconnect):
                callback()

    async def _reconnected(self) -> None:
        log.info("bus reconnected", bus=self.name)
        self._connected()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._ever_connected and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 5)


class Publisher:
    """Sends messages without ever making the sender wait: `offer` is synchronous, keeps the newest
    message per subject, and a task sends them; whatever finds the bus down or its buffer full
    is dropped (`download_bus_published_total{outcome="dropped"}`)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._latest: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.bus.connected

    def start(self) -> None:
        self.bus.start()
        self._task = asyncio.create_task(self._send())

    def offer(self, subject: str, payload: bytes) -> None:
        if not self.bus.connected or (
            subject not in self._latest and len(self._latest) >= PENDING_JOBS
        ):
            BUS_PUBLISHED.labels("dropped").inc()
            return
        if subject in self._latest:
            BUS_PUBLISHED.labels("replaced").inc()  # by a newer one before it was sent
        self._latest[subject] = payload
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self._send_batch()

    async def _send_batch(self) -> None:
        nc = self.bus.nc
        batch, self._latest = self._latest, {}
        for subject, payload in batch.items():
            if not self.bus.connected or nc.pending_data_size + len(payload) > PENDING_BYTES:
                BUS_PUBLISHED.labels("dropped").inc()
                continue
            try:
                await nc.publish(subject, payload)
            except nats.errors.Error:
                BUS_PUBLISHED.labels("dropped").inc()
                continue
            BUS_PUBLISHED.labels("sent").inc()

    async def close(self) -> None:
        """Send what is waiting (the attempts' last messages), briefly, then disconnect."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.bus.connected:
            with contextlib.suppress(Exception):
                await self._send_batch()
                await self.bus.nc.flush(timeout=2)
        await self.bus.close()


@contextlib.asynccontextmanager
async def publisher(settings: Settings, name: str) -> AsyncIterator[Publisher | None]:
    """A started publisher while the block runs, or None when the bus is off (NATS_URL empty)."""
    if not settings.bus_enabled:
        yield None
        return
    sender = Publisher(Bus(settings, name, no_echo=True))
    sender.start()
    try:
        yield sender
    finally:
        await sender.close()


class Subscriptions:
    """Interest in subjects, one subscription each, kept across reconnects: `add` may be called
    before the bus is up (it subscribes once connected), and a handler receives each message's
    payload in order."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._wanted: dict[str, Callable[[bytes], None]] = {}
        self._queues: dict[str, str] = {}
        self._subs: dict[str, Subscription] = {}
        bus.on_connect.append(self._resume)

    @property
    def connected(self) -> bool:
        return self.bus.connected

    def start(self) -> None:
        self.bus.start()

    def add(self, subject: str, handler: Callable[[bytes], None], queue: str = "") -> None:
        """Interest in `subject`; with a `queue` group, each message reaches one member of the
        group (one API replica among those that share the interest), not every one."""
        self._wanted[subject] = handler
        self._queues[subject] = queue
        if self.bus.connected:
            asyncio.create_task(self._subscribe(subject))  # noqa: RUF006 - ends by itself

    def publish(self, subject: str, payload: bytes = b"") -> None:
        """Send without waiting; nothing while the bus is down."""
        if self.bus.connected and self.bus.nc.pending_data_size < PENDING_BYTES:
            asyncio.create_task(self._publish(subject, payload))  # noqa: RUF006 - ends by itself

    async def _publish(self, subject: str, payload: bytes) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.bus.nc.publish(subject, payload)

    def remove(self, subject: str) -> None:
        self._wanted.pop(subject, None)
        self._queues.pop(subject, None)
        sub = self._subs.pop(subject, None)
        if sub is not None:
            asyncio.create_task(self._unsubscribe(sub))  # noqa: RUF006 - ends by itself

    def _resume(self) -> None:
        # The client itself renews the subscriptions it holds after a reconnect; these are the
        # ones asked for while it had never connected.
        for subject in self._wanted:
            if subject not in self._subs:
                asyncio.create_task(self._subscribe(subject))  # noqa: RUF006

    async def _subscribe(self, subject: str) -> None:
        if subject in self._subs or subject not in self._wanted:
            return

        async def deliver(msg: Msg) -> None:
            handler = self._wanted.get(subject)
            if handler is not None:
                BUS_RECEIVED.inc()
                handler(msg.data)

        try:
            queue = self._queues.get(subject, "")
            sub = await self.bus.nc.subscribe(subject, queue=queue, cb=deliver)
        except nats.errors.Error as exc:
            log.info("bus subscribe failed", error=repr(exc))
            return
        if subject in self._subs or subject not in self._wanted:
            await self._unsubscribe(sub)  # removed (or subscribed) meanwhile
            return
        self._subs[subject] = sub

    async def _unsubscribe(self, sub: Subscription) -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def close(self) -> None:
        self._wanted.clear()
        self._queues.clear()
        self._subs.clear()
        await self.bus.close()
