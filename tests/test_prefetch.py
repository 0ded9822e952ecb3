"""Read-ahead of sources against the real S3 server: order, bounds, missing sources, cancel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from activities.prefetch import ByteBudget, Prefetcher, Source
from core.config import Settings
from core.storage import ObjectNotFound, ObjectStore, Segment
from tests.helpers import held_executor, put_sources, wait_for

KIB = 1024


class CountingStore(ObjectStore):
    """The real store, counting the reads it has in flight at once; the keys in the order read."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.lock = threading.Lock()
        self.running = self.peak = self.reads = 0
        self.keys: list[str] = []

    def read_segment(self, *args: Any, **kwargs: Any) -> Segment:
        with self.lock:
            self.running += 1
            self.reads += 1
            self.keys.append(args[0])
            self.peak = max(self.peak, self.running)
        try:
            return super().read_segment(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def _run_io() -> Callable[..., Any]:
    def run(fn: Callable[..., Any], *args: Any) -> Any:
        return asyncio.get_running_loop().run_in_executor(None, fn, *args)

    return run


async def test_sources_arrive_whole_and_in_order_within_the_bounds(
    settings: Settings, store: ObjectStore
) -> None:
    store = CountingStore(settings)  # the fixture's bucket, counted
    sizes = {10_000 + i: (i * 7919) % (40 * KIB) for i in range(1, 60)}
    sizes[10_100] = 300 * KIB  # several segments
    data = put_sources(store, settings, sizes)
    sources: list[Source | None] = [Source(i, settings.source_key(i)) for i in sizes]
    peak_buffered = 0
    prefetcher = Prefetcher(
        store, sources, _run_io(), requests=4, buffer_bytes=96 * KIB, segment=32 * KIB
    )
    async with prefetcher:
        for index, file_id in enumerate(sizes):
            opened = await prefetcher.open(index)
            assert opened.size == sizes[file_id]
            received = b""
            async for chunk in opened.chunks():
                received += chunk
                peak_buffered = max(peak_buffered, prefetcher.budget.used)
            assert received == data[file_id]
    # One request per segment; the first one of each source also resolves it.
    assert store.reads == sum(max(1, -(-size // (32 * KIB))) for size in sizes.values())
    assert store.peak <= 4
    # The byte bound, plus the one segment the writer waits for.
    assert peak_buffered <= 96 * KIB + 32 * KIB


async def test_a_large_source_is_read_a_window_ahead_of_the_writer(
    settings: Settings, store: ObjectStore
) -> None:
    """Within one large source only `window` segments are read at once, however large the byte
    bound: the writer waits on the upload anyway, and what is read ahead is lost with a worker."""
    store = CountingStore(settings)
    sizes = {10_001: 20 * 32 * KIB}
    data = put_sources(store, settings, sizes)
    prefetcher = Prefetcher(
        store,
        [Source(10_001, settings.source_key(10_001))],
        _run_io(),
        requests=16,
        buffer_bytes=10_000 * KIB,
        segment=32 * KIB,
        first_read=32 * KIB,
        window=3,
    )
    peak_buffered, received = 0, b""
    async with prefetcher:
        opened = await prefetcher.open(0)
        async for chunk in opened.chunks():
            await asyncio.sleep(0.01)  # a writer slower than the reads
            received += chunk
            peak_buffered = max(peak_buffered, prefetcher.budget.used)
    assert received == data[10_001]
    assert store.peak <= 3
    assert peak_buffered <= 3 * 32 * KIB


async def test_reads_run_ahead_of_the_writer(settings: Settings, store: ObjectStore) -> None:
    """Many small sources: the reads of later ones are under way while the first is written."""
    store = CountingStore(settings)  # the fixture's bucket, counted
    sizes = {10_000 + i: 2 * KIB for i in range(1, 41)}
    put_sources(store, settings, sizes)
    sources: list[Source | None] = [Source(i, settings.source_key(i)) for i in sizes]
    async with Prefetcher(store, sources, _run_io(), requests=8) as prefetcher:
        first = await prefetcher.open(0)
        async for _ in first.chunks():
            pass
        await asyncio.sleep(0.3)
        assert store.reads == len(sizes), "later sources were not read ahead"
        assert store.peak > 1


async def test_a_missing_source_is_reported_and_the_rest_continue(
    settings: Settings, store: ObjectStore
) -> None:
    data = put_sources(store, settings, {10_001: 10, 10_003: 30})
    sources: list[Source | None] = [
        Source(i, settings.source_key(i)) for i in (10_001, 10_002, 10_003)
    ]
    async with Prefetcher(store, [*sources, None], _run_io()) as prefetcher:
        got: list[bytes | None] = []
        for index in range(3):
            try:
                opened = await prefetcher.open(index)
            except ObjectNotFound:
                got.append(None)
                continue
            got.append(b"".join([c async for c in opened.chunks()]))
    assert got == [data[10_001], None, data[10_003]]
    assert prefetcher.sizes == {0: 10, 1: None, 2: 30}


async def test_a_resumed_source_is_read_from_its_offset(
    settings: Settings, store: ObjectStore
) -> None:
    data = put_sources(store, settings, {10_001: 100 * KIB})
    source = Source(10_001, settings.source_key(10_001), size=100 * KIB, offset=70 * KIB)
    async with Prefetcher(store, [source], _run_io(), segment=16 * KIB) as prefetcher:
        opened = await prefetcher.open(0)
        rest = b"".join([c async for c in opened.chunks()])
    assert rest == data[10_001][70 * KIB :]


async def test_closing_stops_every_read(settings: Settings, store: ObjectStore) -> None:
    store = CountingStore(settings)  # the fixture's bucket, counted
    sizes = {10_000 + i: 64 * KIB for i in range(1, 30)}
    put_sources(store, settings, sizes)
    sources: list[Source | None] = [Source(i, settings.source_key(i)) for i in sizes]
    prefetcher = Prefetcher(store, sources, _run_io(), requests=6, segment=16 * KIB)
    async with prefetcher:
        opened = await prefetcher.open(0)
        async for _ in opened.chunks():
            break
    assert prefetcher.in_flight == 0
    reads = store.reads
    await asyncio.sleep(0.3)
    assert store.reads == reads, "reads went on after close"
    assert prefetcher.stop.is_set()


async def test_large_sources_beyond_the_bound_are_sized_by_head_requests(
    settings: Settings, store: ObjectStore
) -> None:
    """Read-ahead stops at the byte bound; the sizes of the sources after it are still learnt."""
    sizes = {10_000 + i: 96 * KIB for i in range(1, 9)}
    put_sources(store, settings, sizes)
    sources: list[Source | None] = [Source(i, settings.source_key(i)) for i in sizes]
    prefetcher = Prefetcher(
        store, sources, _run_io(), buffer_bytes=64 * KIB, segment=32 * KIB, requests=4
    )
    async with prefetcher:
        await prefetcher.open(0)

        async def all_known() -> None:
            while len(prefetcher.sizes) < len(sizes):
                await asyncio.sleep(0.02)

        await asyncio.wait_for(all_known(), 10)
        assert prefetcher.expected_bytes() == sum(sizes.values())
        # From an entry on: only what is still to come (the progress total adds what is done).
        assert prefetcher.expected_bytes(2) == sum(list(sizes.values())[2:])


async def test_byte_budget_serves_waiters_in_order() -> None:
    budget = ByteBudget(100)
    assert budget.try_take(60)
    order: list[int] = []

    async def take(size: int) -> None:
        await budget.take(size)
        order.append(size)

    first, second = asyncio.create_task(take(50)), asyncio.create_task(take(10))
    await asyncio.sleep(0)
    assert not budget.try_take(10), "a waiter is ahead"
    assert budget.try_take(10, ahead_of_waiters=True)
    budget.give(70)
    await asyncio.gather(first, second)
    assert order == [50, 10] and budget.used == 60
    # Alone, a reservation larger than the bound is granted.
    budget.give(60)
    assert budget.try_take(500)


@pytest.mark.parametrize("size", [0, 1])
async def test_empty_and_tiny_sources(settings: Settings, store: ObjectStore, size: int) -> None:
    data = put_sources(store, settings, {10_001: size})
    async with Prefetcher(store, [Source(10_001, settings.source_key(10_001))], _run_io()) as p:
        opened = await p.open(0)
        assert opened.size == size
        assert b"".join([c async for c in opened.chunks()]) == data[10_001]


async def _queued(*prefetchers: Prefetcher, reads: int) -> None:
    async def all_queued() -> bool:
        return sum(p.in_flight for p in prefetchers) == reads

    await wait_for(all_queued, timeout=10, interval=0.01)


async def test_on_shared_threads_a_writers_next_source_goes_before_others_read_ahead(
    settings: Settings, store: ObjectStore
) -> None:
    """Jobs share the worker's S3 threads. A job that starts while another has many reads ahead
    queued gets the source its writer waits for before them (a FIFO queue would serve it last):
    read-ahead is ranked by how far ahead of its writer it is."""
    store = CountingStore(settings)
    sizes = {10_000 + i: KIB for i in range(1, 12)}
    put_sources(store, settings, sizes)
    keys = [settings.source_key(i) for i in sizes]
    with held_executor() as (executor, release):
        busy = Prefetcher(
            store,
            [Source(i, settings.source_key(i)) for i in list(sizes)[:10]],
            _run_io(),
            executor=executor,
        )
        starting = Prefetcher(store, [Source(10_011, keys[10])], _run_io(), executor=executor)
        async with busy, starting:
            await _queued(busy, starting, reads=11)
            release.set()
            opened = await starting.open(0)
            assert opened.size == KIB
            for index in range(10):
                await busy.open(index)
    # Each writer's next source (rank 0) first, in the order asked; then the read-ahead.
    assert store.keys == [keys[0], keys[10], *keys[1:10]]


async def test_a_source_the_writer_waits_for_is_read_before_reads_further_ahead(
    settings: Settings, store: ObjectStore
) -> None:
    """A read queued while its source was far ahead of the writer is ranked so; once the writer
    waits for it, it moves ahead of every read for a source further ahead (its own job's and
    other jobs'), and is still made once."""
    store = CountingStore(settings)
    sizes = {10_000 + i: KIB for i in range(1, 13)}
    put_sources(store, settings, sizes)
    keys = [settings.source_key(i) for i in sizes]
    ids = list(sizes)
    with held_executor() as (executor, release):
        first = Prefetcher(
            store,
            [Source(i, settings.source_key(i)) for i in ids[:6]],
            _run_io(),
            executor=executor,
        )
        second = Prefetcher(
            store,
            [Source(i, settings.source_key(i)) for i in ids[6:]],
            _run_io(),
            executor=executor,
        )
        async with first, second:
            await _queued(first, second, reads=12)
            # The first job's writer comes to its source 4 while that read is still queued.
            waiting = asyncio.create_task(first.open(4))
            await asyncio.sleep(0)
            release.set()
            assert (await waiting).size == KIB

            async def all_read() -> bool:
                return store.reads == 12

            await wait_for(all_read, timeout=10, interval=0.01)
    # Both writers' next sources (rank 0), then source 4 asked for now, then by distance.
    assert store.keys[:4] == [keys[0], keys[6], keys[4], keys[1]]
    assert sorted(store.keys) == sorted(keys), "each source is read once"
