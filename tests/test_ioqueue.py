"""The worker's ranked S3 threads: lowest rank first, submission order within a rank."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from activities.ioqueue import RankedExecutor
from tests.helpers import held_executor


@pytest.fixture
def one_thread() -> Iterator[tuple[RankedExecutor, threading.Event]]:
    """An executor with one thread, held busy until the event is set."""
    with held_executor() as held:
        yield held


def test_calls_run_by_rank_then_in_submission_order(
    one_thread: tuple[RankedExecutor, threading.Event],
) -> None:
    executor, release = one_thread
    ran: list[str] = []
    futures = [
        executor.submit_ranked(3, ran.append, "far ahead"),
        executor.submit_ranked(1, ran.append, "next, first"),
        executor.submit(ran.append, "now"),
        executor.submit_ranked(1, ran.append, "next, second"),
    ]
    release.set()
    for future in futures:
        future.result(5)
    assert ran == ["now", "next, first", "next, second", "far ahead"]


def test_a_cancelled_call_never_runs(one_thread: tuple[RankedExecutor, threading.Event]) -> None:
    executor, release = one_thread
    ran: list[int] = []
    cancelled, kept = executor.submit(ran.append, 1), executor.submit(ran.append, 2)
    assert cancelled.cancel()
    release.set()
    kept.result(5)
    assert ran == [2] and cancelled.cancelled()


def test_shutdown_cancels_what_is_queued_and_refuses_more(
    one_thread: tuple[RankedExecutor, threading.Event],
) -> None:
    executor, release = one_thread
    queued = executor.submit(print, "never")
    executor.shutdown(wait=False, cancel_futures=True)
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        executor.submit(print, "too late")
    release.set()
    executor.shutdown(wait=True)  # the held call finishes; the thread ends


def test_errors_reach_the_caller() -> None:
    executor = RankedExecutor(2)
    try:
        with pytest.raises(ZeroDivisionError):
            executor.submit_ranked(5, lambda: 1 / 0).result(5)
    finally:
        executor.shutdown()


def test_all_threads_run_at_once() -> None:
    executor = RankedExecutor(4)
    barrier = threading.Barrier(4, timeout=5)
    try:
        futures = [executor.submit(barrier.wait) for _ in range(4)]
        assert sorted(f.result(10) for f in futures) == [0, 1, 2, 3]
    finally:
        executor.shutdown()


async def test_serves_the_event_loop_in_named_threads() -> None:
    executor = RankedExecutor(2, thread_name_prefix="s3")
    loop = asyncio.get_running_loop()
    try:
        name = await loop.run_in_executor(executor, lambda: threading.current_thread().name)
    finally:
        executor.shutdown()
    assert name.startswith("s3_")
