"""The worker's S3 threads, serving the reads jobs need now before the ones they need later.

Every packaging attempt on a worker shares its S3 threads, and each one reads ahead of its
writer: the first segment of up to `prefetch_requests` coming sources at once. With a plain FIFO
pool, a wave of jobs starting together fills the queue with thousands of such read-ahead GETs
(16 for each of 150 jobs), and the file one job's writer waits for right now, or the part it uploads,
queues behind all of them: measured with 300 jobs starting on two workers, a job's first file
took up to 7 s (p99) instead of its origin's 0.2-0.4 s.

Here every call has a rank, and the threads take the lowest rank first, in submission order
within a rank. A plain `submit` (an upload, a HEAD, a later segment of the file being written)
is rank 0, needed now; a read-ahead is ranked by how many sources ahead of its writer it is
(`Prefetcher`). So every job's next file is fetched before any job's far-ahead reads, and reading
ahead only uses the threads nothing more urgent wants.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(order=True)
class _Call:
    rank: int
    order: int
    future: Future[Any] = field(compare=False)
    fn: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    kwargs: dict[str, Any] = field(compare=False)

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return  # cancelled while queued
        try:
            result = self.fn(*self.args, **self.kwargs)
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


class RankedExecutor(Executor):
    """`max_workers` threads taking calls by (rank, submission order); `submit` is rank 0.

    Threads start as calls arrive (up to `max_workers`) and stay for the executor's life. They
    are daemon threads: at interpreter exit, queued S3 calls are dropped rather than waited for.
    """

    def __init__(self, max_workers: int, thread_name_prefix: str = "ranked") -> None:
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self.max_workers = max_workers
        self._prefix = thread_name_prefix
        self._queue: list[_Call] = []
        self._order = itertools.count()
        self._ready = threading.Condition(threading.Lock())
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._shutdown = False

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        return self.submit_ranked(0, fn, *args, **kwargs)

    def submit_ranked(
        self, rank: int, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[T]:
        """Queue `fn(*args, **kwargs)` behind every call of a lower rank, and of the same rank
        submitted earlier."""
        future: Future[T] = Future()
        with self._ready:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            heapq.heappush(self._queue, _Call(rank, next(self._order), future, fn, args, kwargs))
            if self._idle:
                self._idle -= 1  # counted here, so the next call wakes another thread
                self._ready.notify()
            elif len(self._threads) < self.max_workers:
                self._start_thread()
        return future

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._work, name=f"{self._prefix}_{len(self._threads)}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._shutdown:
                    self._idle += 1  # the call that wakes this thread takes it back
                    self._ready.wait()
                if not self._queue:
                    return  # shut down, nothing left to run
                call = heapq.heappop(self._queue)
            call.run()
            del call  # let its arguments go (a part's bytes) before waiting for the next call

    @property
    def queued(self) -> int:
        """Calls waiting for a thread (cancelled ones included until a thread drops them)."""
        with self._ready:
            return len(self._queue)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._shutdown = True
            if cancel_futures:
                for call in self._queue:
                    call.future.cancel()
                self._queue.clear()
            self._ready.notify_all()
            threads = list(self._threads)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
