"""The API's services: one typed object, built once per process by `build_services` when the app
starts, kept on `app.state.services` and read by the routes through `api.deps.ServicesDep`."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from temporalio.client import Client

from api.auth import Authenticator
from api.caches import Snapshots
from api.jobs.commands import JobCommands
from api.jobs.listing import JobListing
from api.jobs.reads import JobReads
from api.schemas import Check, HealthResponse
from api.tickets import StreamTickets
from api.watchers import JobWatchers, StreamSlots
from core.config import Settings
from core.observability import get_logger
from core.storage import ObjectStore, StorageError
from workflows.client import connect
from workflows.models import ANONYMOUS_OWNER

log = get_logger("api")

# How long a readiness answer is reused.
READINESS_SECONDS = 1.5
# How long the queue size (a visibility count, costly for Temporal) is reused: Prometheus's usual
# scrape interval, so scraping more often, or from several Prometheus, does not count more often.
QUEUE_SIZE_SECONDS = 15.0


@dataclass(frozen=True)
class Services:
    """What the routes work with, for the lifetime of the app."""

    settings: Settings
    store: ObjectStore
    temporal: Client
    auth: Authenticator
    tickets: StreamTickets
    reads: JobReads
    commands: JobCommands
    listing: JobListing
    readiness: Snapshots[HealthResponse]
    queue_size: Snapshots[int]
    watchers: JobWatchers
    stream_slots: StreamSlots

    async def aclose(self) -> None:
        await self.watchers.close()


async def build_services(settings: Settings) -> Services:
    store = ObjectStore(settings)
    # Lazy: the API starts (and answers 503) while Temporal is still coming up or down.
    client = await connect(settings, lazy=True)
    auth = Authenticator(settings)
    tickets = StreamTickets(settings)
    if settings.auth_enabled and tickets.per_process:
        log.warning("STREAM_TICKET_SECRET is unset: tickets hold for this API process only")
    reads = JobReads(client, settings, store)
    listing = JobListing(client, reads)
    services = Services(
        settings=settings,
        store=store,
        temporal=client,
        auth=auth,
        tickets=tickets,
        reads=reads,
        commands=JobCommands(client, settings, reads),
        listing=listing,
        readiness=readiness(store, client),
        queue_size=queue_size(listing),
        watchers=JobWatchers(reads, budget=settings.stream_polls_per_second),
        stream_slots=StreamSlots(settings.streams_per_owner, settings.streams_per_client),
    )
    if not settings.auth_enabled:
        log.warning(f"authentication is off: every caller acts as '{ANONYMOUS_OWNER}'")
    return services


def readiness(store: ObjectStore, client: Client) -> Snapshots[HealthResponse]:
    """Storage and Temporal checks, run at most once per READINESS_SECONDS whatever the number
    of probes: health endpoints cannot be used to flood the dependencies."""

    async def check(_: str) -> HealthResponse:
        storage, temporal = await asyncio.gather(_check_storage(store), _check_temporal(client))
        checks: dict[str, Check] = {"storage": storage, "temporal": temporal}
        healthy = all(v == "ok" for v in checks.values())
        return HealthResponse(status="healthy" if healthy else "unhealthy", checks=checks)

    return Snapshots(check, max_age=READINESS_SECONDS)


async def _check_storage(store: ObjectStore) -> Check:
    try:
        await asyncio.wait_for(asyncio.to_thread(store.ping), timeout=5)
    except (StorageError, TimeoutError):
        return "error"
    return "ok"


async def _check_temporal(client: Client) -> Check:
    try:
        ok = await client.service_client.check_health(timeout=timedelta(seconds=3))
    except Exception:  # any failure to answer means unhealthy
        return "error"
    return "ok" if ok else "error"


def queue_size(listing: JobListing) -> Snapshots[int]:
    """The jobs waiting or running, counted at most once per QUEUE_SIZE_SECONDS."""

    async def count(_: str) -> int:
        return await listing.count_running(rpc_timeout=timedelta(seconds=2))

    return Snapshots(count, max_age=QUEUE_SIZE_SECONDS)
