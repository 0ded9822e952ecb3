"""Sources read ahead of the archive writer: many GETs in flight, bounded bytes held, in order.

Over a real network every GET waits a round trip (15-30 ms) before its first byte, so reading one
source after another leaves the link idle most of the time when sources are small. Here the
first segment of each coming source is requested while the writer is still on earlier ones, and
a large source's later segments are requested in parallel ranged GETs once the writer reaches it
(`WINDOW` of them at once). The first answer also resolves the source: it says how large the
object is (or that it is gone), so no separate HEAD pass precedes the copy.

On a fast network the cost is CPU, not waiting: each GET is a few hundred microseconds of Python
in its thread, and every time a thread hands a result to the event loop the two take turns on
the interpreter. So first reads are submitted to the threads directly and their answers reach
the loop in batches: one wake-up collects every read finished since the last, and the writer is
only woken for the source it waits for.

On a worker shared by many jobs, the first reads of every job queue for the same S3 threads.
When those are a `RankedExecutor`, each read is ranked by how many sources ahead of its writer
it is, and a read the writer comes to wait for while it is still queued is moved to the front:
one job's next file is not held up behind other jobs' reads for far later ones.

Bounds, per job: at most `requests` GETs in flight and at most `buffer_bytes` read but not yet
written. The segment the writer waits for is always allowed, so the writer never waits behind
reads it only needs later, and read-ahead can never dead-lock the writer. When read-ahead stops
at the byte bound (large sources), a few HEAD requests learn the sizes of the sources further on,
so progress can tell the total early.

Nothing here is a checkpoint: bytes read ahead and lost with a crash are read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from activities.ioqueue import RankedExecutor
from core.storage import ObjectChanged, ObjectNotFound, ObjectStore, Segment, StorageError

SEGMENT = 4 << 20
# The first read of a source whose size is not known yet: whole if it is small, which it mostly
# is when there are many; a large one goes on in `SEGMENT`s.
FIRST_READ = 1 << 20
# HEAD requests in flight to learn the sizes of sources beyond the read-ahead.
STAT_REQUESTS = 4
# Segments of one large source read at once: the one the writer waits for and two more. The
# writer cannot go faster than the upload, so reading further ahead would not speed it up; it
# would only hold more bytes, all read again if the worker is lost before they are stored.
WINDOW = 3


@dataclass
class Source:
    """One entry of the archive, in order: its id, key, size when known, and where to start."""

    file_id: int
    key: str
    size: int | None = None
    offset: int = 0


class _FirstRead(NamedTuple):
    """A first read submitted and not yet collected: the bytes reserved for it, its rank."""

    future: Future[Segment]
    want: int
    rank: int


class ByteBudget:
    """Bytes held by segments read and not yet written; waiters are served in order.

    One reservation is always granted when nothing is held, whatever its size.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit

    def try_take(self, size: int, *, ahead_of_waiters: bool = False) -> bool:
        if (self._waiters and not ahead_of_waiters) or not self._fits(size):
            return False
        self.used += size
        return True

    async def take(self, size: int) -> None:
        if self.try_take(size):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append((size, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give(size)  # granted just as it was cancelled
            raise

    def force(self, size: int) -> None:
        self.used += size

    def give(self, size: int) -> None:
        self.used -= size
        while self._waiters:
            size, waiter = self._waiters[0]
            if waiter.done():
                self._waiters.popleft()
                continue
            if not self._fits(size):
                break
            self._waiters.popleft()
            self.used += size
            waiter.set_result(None)


class Prefetcher:
    """Reads `sources` ahead, in order; `open(i)` gives source `i`'s size and bytes."""

    def __init__(
        self,
        store: ObjectStore,
        sources: list[Source | None],
        run_io: Callable[..., Any],
        *,
        requests: int = 16,
        buffer_bytes: int = 64 << 20,
        segment: int = SEGMENT,
        first_read: int = FIRST_READ,
        window: int = WINDOW,
        executor: Executor | None = None,
    ) -> None:
        # `None` entries are not read at all (an invalid id, known to have nothing to read).
        # First reads run on `executor` (threads of their own when none is given), ranked by
        # how far ahead of the writer they are if it is a `RankedExecutor`; the rest through
        # `run_io`.
        self.store, self.sources, self.run_io = store, sources, run_io
        self.segment, self.first_read = segment, min(first_read, segment)
        self.window = window
        self.requests = requests
        self.budget = ByteBudget(buffer_bytes)
        self.slots = asyncio.Semaphore(requests)
        self.stop = threading.Event()
        self._executor, self._own_executor = executor, executor is None
        # The caller's context (its trace), for the reads made in threads.
        self._context = contextvars.copy_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        # First reads: submitted and not yet collected, and their answers (a segment, or the
        # error), collected on the loop.
        self._reads: dict[int, _FirstRead] = {}
        self._answers: dict[int, Segment | BaseException] = {}
        # The source the writer is at (opened last, or waits for); first reads are ranked from it.
        self._writer_at = next((i for i, s in enumerate(sources) if s is not None), 0)
        # First reads finished in threads, handed to the loop in batches (see `_arrive`).
        self._arrived: deque[tuple[int, Future[Segment]]] = deque()
        self._arrival_lock = threading.Lock()
        self._collect_pending = False
        self._waiter: tuple[int, asyncio.Future[None]] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._stats: asyncio.Task[None] | None = None
        # Sizes learnt so far (first answers and HEADs); None: the source is gone.
        self.sizes: dict[int, int | None] = {
            i: s.size for i, s in enumerate(sources) if s is not None and s.size is not None
        }

    def read_end(self, offset: int) -> int:
        """Where a read from `offset` stops: reads follow one grid in every source (the first
        read, then segments), wherever an attempt starts, so an attempt resumed from a
        checkpoint cuts the archive into the very same parts as the attempt it continues."""
        if offset < self.first_read:
            return self.first_read
        return offset + self.segment - (offset - self.first_read) % self.segment

    async def __aenter__(self) -> Prefetcher:
        self._loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.requests, thread_name_prefix="read-ahead")
        self._scheduler = asyncio.create_task(self._schedule())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop every read: queued ones never start, running ones drop their connection."""
        self.stop.set()
        for read in self._reads.values():
            read.future.cancel()  # not started yet: it never will; running: it sees `stop`
        self._reads.clear()
        tasks: list[asyncio.Task[Any]] = [*self._tasks]
        tasks += [t for t in (self._scheduler, self._stats) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._own_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def in_flight(self) -> int:
        """Reads started and not finished (for tests and the attempt log)."""
        first = sum(1 for read in self._reads.values() if not read.future.done())
        return first + sum(1 for task in self._tasks if not task.done())

    def expected_bytes(self, start: int = 0) -> int:
        """The bytes of the sources from index `start` on: known sizes, the rest estimated by
        the mean of all known ones (0 until one is known)."""
        every = [size for size in self.sizes.values() if size is not None]
        mean = sum(every) / len(every) if every else 0
        ahead = [i for i, s in enumerate(self.sources) if s is not None and i >= start]
        known = [self.sizes[i] for i in ahead if i in self.sizes]
        unknown = len(ahead) - len(known)
        return sum(size for size in known if size is not None) + round(unknown * mean)

    # ------------------------------------------------------------------ read-ahead
    async def _schedule(self) -> None:
        """Request the first segment of every source in order, as the bounds allow."""
        for index, source in enumerate(self.sources):
            if source is None:
                continue
            want = self.read_end(source.offset) - source.offset
            if source.size is not None:
                want = max(0, min(want, source.size - source.offset))
            if not self.budget.try_take(want):
                self._learn_sizes_from(index)
                await self.budget.take(want)
            await self.slots.acquire()
            self._first_read(index, source, want)

    def _first_read(self, index: int, source: Source, want: int) -> None:
        """Start source `index`'s first read in a thread. Its answer reaches the loop with
        others that finished meanwhile (`_arrive`, `_collect`): with many small sources, the
        loop is woken once for many reads rather than several times for each."""
        if source.size is not None and source.offset >= source.size:
            self.slots.release()  # a resumed entry with all bytes written: nothing to read
            self._answer(index, Segment(b"", source.size, None))
            return
        self._submit(index, source, want, rank=max(0, index - self._writer_at))

    def _submit(self, index: int, source: Source, want: int, rank: int) -> None:
        executor, run, read = self._executor, self._context.copy().run, self.store.read_segment
        assert executor is not None
        key, offset, length = source.key, source.offset, max(want, 1)
        future: Future[Segment]
        if isinstance(executor, RankedExecutor):
            future = executor.submit_ranked(rank, run, read, key, offset, length, None, self.stop)
        else:
            future = executor.submit(run, read, key, offset, length, None, self.stop)
        self._reads[index] = _FirstRead(future, want, rank)
        future.add_done_callback(functools.partial(self._arrive, index))

    def _hurry(self, index: int) -> None:
        """The writer waits for source `index`: if its first read is still queued behind reads
        ranked nearer their writers (other jobs' reads, submitted later), queue it again at
        rank 0. Its rank was how far ahead it was when submitted; now it is needed."""
        read = self._reads.get(index)
        if read is None or read.rank == 0 or not isinstance(self._executor, RankedExecutor):
            return
        if read.future.cancel():  # still queued (a read under way cannot be hurried)
            source = self.sources[index]
            assert source is not None
            self._submit(index, source, read.want, rank=0)

    def _arrive(self, index: int, future: Future[Segment]) -> None:
        """A first read finished (in its thread): wake the loop, unless a wake is pending."""
        with self._arrival_lock:
            self._arrived.append((index, future))
            if self._collect_pending:
                return
            self._collect_pending = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._collect)

    def _collect(self) -> None:
        """On the loop: take in every first read that finished, give back what it did not use
        of its reservation and its request slot."""
        with self._arrival_lock:
            arrived = list(self._arrived)
            self._arrived.clear()
            self._collect_pending = False
        for index, future in arrived:
            read = self._reads.get(index)
            if read is None or read.future is not future:
                continue  # closed, or queued again by `_hurry`
            del self._reads[index]
            want = read.want
            self.slots.release()
            error = future.exception()
            if error is None:
                segment = future.result()
                self.sizes[index] = segment.size
                self.budget.give(want - len(segment.data))
                self._answer(index, segment)
            else:
                if isinstance(error, ObjectNotFound):
                    self.sizes[index] = None
                self.budget.give(want)
                self._answer(index, error)

    def _answer(self, index: int, answer: Segment | BaseException) -> None:
        self._answers[index] = answer
        if self._waiter is not None and self._waiter[0] == index:
            with contextlib.suppress(asyncio.InvalidStateError):
                self._waiter[1].set_result(None)

    async def _read(self, key: str, offset: int, length: int, etag: str | None = None) -> Segment:
        result: Segment = await self.run_io(
            self.store.read_segment, key, offset, length, etag, self.stop
        )
        return result

    def _learn_sizes_from(self, index: int) -> None:
        if self._stats is None:
            self._stats = asyncio.create_task(self._stat_from(index))

    async def _stat_from(self, first: int) -> None:
        limit = asyncio.Semaphore(STAT_REQUESTS)

        async def stat(index: int, source: Source) -> None:
            async with limit:
                if index in self.sizes or self.stop.is_set():
                    return
                try:
                    info = await self.run_io(self.store.stat, source.key)
                except ObjectNotFound:
                    self.sizes.setdefault(index, None)
                except StorageError:
                    return  # only an estimate: the read itself will tell
                else:
                    self.sizes.setdefault(index, info.size)

        pending = [stat(i, s) for i, s in enumerate(self.sources) if i >= first and s is not None]
        await asyncio.gather(*pending)

    # ------------------------------------------------------------------ the writer's side
    async def open(self, index: int) -> Opened:
        """Source `index`'s first answer: raises `ObjectNotFound` if it is gone."""
        self._writer_at = index
        if index not in self._answers:
            self._hurry(index)
        while index not in self._answers:
            waiting = asyncio.get_running_loop().create_future()
            self._waiter = (index, waiting)
            try:
                await waiting
            finally:
                self._waiter = None
        answer = self._answers.pop(index)
        if isinstance(answer, BaseException):
            raise answer
        return Opened(self, index, answer)

    def _spawn(self, key: str, offset: int, length: int, etag: str | None) -> asyncio.Task[Segment]:
        async def read() -> Segment:
            async with self.slots:
                return await self._read(key, offset, length, etag)

        task = asyncio.create_task(read())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class Opened:
    """A source the writer has reached: its size, then its bytes in order."""

    def __init__(self, prefetcher: Prefetcher, index: int, head: Segment) -> None:
        self.prefetcher, self.head = prefetcher, head
        source = prefetcher.sources[index]
        assert source is not None
        self.source = source
        self.size = head.size

    async def chunks(self) -> AsyncIterator[bytes]:
        """The source's bytes from its start offset; each chunk's share of the byte bound is
        given back once the writer asks for the next one."""
        p, head = self.prefetcher, self.head
        offset = self.source.offset + len(head.data)
        try:
            if head.data:
                yield head.data
        finally:
            p.budget.give(len(head.data))
        window: deque[tuple[int, asyncio.Task[Segment]]] = deque()
        planned = offset
        try:
            while offset < self.size:
                planned = self._read_ahead(window, planned)
                length, task = window.popleft()
                try:
                    segment = await task
                    if len(segment.data) != length:
                        raise ObjectChanged(f"{self.source.key}: shorter than its size")
                    offset += length
                    yield segment.data
                finally:
                    p.budget.give(length)
        finally:
            for length, task in window:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                p.budget.give(length)

    def _read_ahead(self, window: deque[tuple[int, asyncio.Task[Segment]]], planned: int) -> int:
        """Start the next segments: the one the writer needs regardless of the bound, more
        while the window, the bound and free request slots allow."""
        p = self.prefetcher
        while planned < self.size:
            length = min(p.read_end(planned), self.size) - planned
            if not window:
                p.budget.force(length)
            else:
                full = len(window) >= p.window or p.slots.locked()
                if full or not p.budget.try_take(length, ahead_of_waiters=True):
                    break
            window.append((length, p._spawn(self.source.key, planned, length, self.head.etag)))
            planned += length
        return planned
