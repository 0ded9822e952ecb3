"""No answer carrying a presigned link or a ticket may be kept by a browser or a shared cache:
every answer of the job API (`/v1/...`) says `Cache-Control: no-store`; the page's assets do not.
"""

from __future__ import annotations

from typing import Any

import httpx

from core.config import Settings
from core.storage import ObjectStore
from tests.helpers import api_client, initiate, put_sources, read_events, wait_for


def no_store(resp: httpx.Response) -> bool:
    return bool(resp.headers.get("cache-control") == "no-store")


async def test_every_answer_with_a_link_or_a_ticket_is_not_stored(
    settings: Settings, store: ObjectStore, worker: Any
) -> None:
    put_sources(store, settings, {10_001: 300})
    async with api_client(settings) as api:
        started = await api.post("/v1/download/initiate", json={"file_ids": [10_001]})
        assert started.status_code == 200 and no_store(started)
        job = started.json()

        async def completed() -> httpx.Response | None:
            resp = await api.get(job["statusUrl"])
            return resp if resp.json()["status"] == "completed" else None

        status = await wait_for(completed)
        assert status.json()["downloadUrl"] and no_store(status)
        details = await api.get(job["detailsUrl"])
        assert details.json()["downloadUrl"] and no_store(details)
        redirect = await api.get(job["fileUrl"])
        assert redirect.status_code == 302 and no_store(redirect)
        ticket = await api.post(f"/v1/download/{job['jobId']}/ticket")
        assert ticket.json()["ticket"] and no_store(ticket)
        async with api.stream("GET", job["subscribeUrl"]) as stream:
            events = await read_events(stream)
            assert events[-1]["data"]["downloadUrl"] and no_store(stream)
        listed = await api.get("/v1/downloads")
        assert listed.json()["jobs"] and no_store(listed)
        legacy = await api.post("/v1/download/start", json={"file_id": 10_001})
        assert legacy.json()["downloadUrl"] and no_store(legacy)
        # Errors and commands of the job API too; the page's own files are cacheable.
        assert no_store(await api.get("/v1/download/status/unknown-job"))
        assert no_store(await api.post(f"/v1/download/{job['jobId']}/retry"))
        assert not no_store(await api.get("/static/app.js"))
        assert not no_store(await api.get("/health"))


async def test_the_accepted_legacy_start_is_not_stored(
    settings: Settings, store: ObjectStore
) -> None:
    """`start` answering 202 before the job is done (no worker here) points at the job."""
    quick = settings.model_copy(update={"request_timeout_ms": 1000})
    async with api_client(quick) as api:
        resp = await api.post("/v1/download/start", json={"file_id": 10_001})
        assert resp.status_code == 202 and no_store(resp)
        assert no_store(await api.delete(f"/v1/download/{resp.json()['jobId']}"))
        assert no_store(await api.get(f"/v1/download/{(await initiate(api, [10_002]))['jobId']}"))
