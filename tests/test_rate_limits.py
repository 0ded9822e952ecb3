"""Rate limits that hold for the service: counters shared by API processes in Redis or
Memcached (real servers, started here), and requests still served when that store is down."""

from __future__ import annotations

import pytest

from core.config import Settings
from core.storage import ObjectStore
from devstack.servers import free_port
from tests.helpers import COUNTER_STORES, counter_store, serve


def limited(settings: Settings, storage: str) -> Settings:
    return settings.model_copy(
        update={
            "rate_limit_enabled": True,
            "rate_limit_max_requests": 3,
            "rate_limit_window_ms": 60_000,
            "rate_limit_storage_uri": storage,
        }
    )


@pytest.mark.parametrize("kind", sorted(COUNTER_STORES))
async def test_two_api_processes_share_one_limit(
    kind: str, settings: Settings, store: ObjectStore
) -> None:
    with counter_store(kind) as uri:
        shared = limited(settings, uri)
        async with serve(shared) as (first, _), serve(shared) as (second, _):
            answers = [await first.get("/"), await second.get("/"), await first.get("/")]
            assert [r.status_code for r in answers] == [200, 200, 200]
            assert [r.headers["ratelimit-remaining"] for r in answers] == ["2", "1", "0"]
            refused = await second.get("/")
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
            assert refused.headers["ratelimit-limit"] == "3"


async def test_per_process_counters_are_the_default(settings: Settings, store: ObjectStore) -> None:
    own = limited(settings, "memory://")
    async with serve(own) as (first, _), serve(own) as (second, _):
        for client in (first, second):
            statuses = [(await client.get("/")).status_code for _ in range(4)]
            assert statuses == [200, 200, 200, 429]


async def test_requests_are_served_while_the_counter_store_is_down(
    settings: Settings, store: ObjectStore
) -> None:
    down = limited(settings, f"redis://127.0.0.1:{free_port()}")
    async with serve(down) as (client, _):
        answers = [await client.get("/") for _ in range(5)]
    assert {a.status_code for a in answers} == {200}
    assert "ratelimit-remaining" not in answers[0].headers
