"""The attempt log of a packaging attempt in `ActivityEnvironment`: one JSON line as it starts
(or is retried), resumes, and as it finishes, fails or is stopped, as the worker writes them."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.joblog import attempt_log
from core.config import Settings
from core.observability import setup_logging
from tests.helpers import json_log_lines
from workflows.errors import ErrorType

JOB = "job-joblog"


class WorkerLog:
    """The worker's JSON log lines (`setup_logging` as the worker calls it), kept in memory."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def take(self) -> str:
        """The lines written since the last call."""
        text = self.stream.getvalue()
        self.stream.seek(0)
        self.stream.truncate()
        return text

    def lines(self, message: str) -> list[dict[str, Any]]:
        return json_log_lines(self.take(), message)


@pytest.fixture
def worker_log() -> Iterator[WorkerLog]:
    """The worker's logging, its output kept; the root logger is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    setup_logging(Settings(_env_file=None), "worker")  # type: ignore[call-arg]
    log = WorkerLog()
    (handler,) = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(log.stream)
    try:
        yield log
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def attempt(number: int, policy: RetryPolicy | None = None) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=number, retry_policy=policy)
    return env


async def test_a_first_attempt_logs_started_resumed_and_finished(
    worker_log: WorkerLog,
) -> None:
    async def package() -> None:
        with attempt_log(JOB) as entry:
            entry.resumed(4096)
            entry.counters = lambda: {"bytesRead": 10, "bytesDone": 8}

    await attempt(1).run(package)
    text = worker_log.take()
    (started,) = json_log_lines(text, "job attempt started")
    (resumed,) = json_log_lines(text, "job attempt resumed")
    (finished,) = json_log_lines(text, "job attempt finished")
    assert not json_log_lines(text, "job attempt retried")
    assert started["jobId"] == JOB and started["attempt"] == 1
    assert resumed["archiveOffset"] == 4096 and resumed["jobId"] == JOB
    assert finished["attempt"] == 1 and finished["level"] == "info"
    assert (finished["bytesRead"], finished["bytesDone"]) == (10, 8)
    assert finished["durationMs"] >= 0


async def test_a_later_attempt_logs_retried(worker_log: WorkerLog) -> None:
    async def package() -> None:
        with attempt_log(JOB):
            pass

    await attempt(3).run(package)
    text = worker_log.take()
    (retried,) = json_log_lines(text, "job attempt retried")
    assert retried["attempt"] == 3 and retried["jobId"] == JOB
    assert not json_log_lines(text, "job attempt started")


async def test_a_failed_attempt_says_its_type_and_whether_it_is_retried(
    worker_log: WorkerLog,
) -> None:
    async def failing(error: Exception) -> None:
        with attempt_log(JOB):
            raise error

    async def failed_line(number: int, error: Exception) -> dict[str, Any]:
        with pytest.raises(type(error)):
            await attempt(number, RetryPolicy(maximum_attempts=3)).run(failing, error)
        text = worker_log.take()
        assert not json_log_lines(text, "job attempt finished")
        (line,) = json_log_lines(text, "job attempt failed")
        return line

    missing = ApplicationError(
        "no such file", type=ErrorType.file_not_found.value, non_retryable=True
    )
    failed = await failed_line(1, missing)
    assert failed["level"] == "warning" and failed["jobId"] == JOB
    assert (failed["errorType"], failed["willRetry"]) == ("FileNotFound", False)

    failed = await failed_line(1, RuntimeError("boom"))
    assert (failed["errorType"], failed["willRetry"], failed["error"]) == ("Error", True, "boom")

    failed = await failed_line(3, RuntimeError("boom"))
    assert failed["willRetry"] is False and failed["attempt"] == 3


@pytest.mark.parametrize(
    ("cancel_requested", "reason"), [(True, "cancelled"), (False, "interrupted")]
)
async def test_a_stopped_attempt_says_why(
    worker_log: WorkerLog, cancel_requested: bool, reason: str
) -> None:
    running = asyncio.Event()

    async def package() -> None:
        with attempt_log(JOB):
            running.set()
            await asyncio.sleep(60)

    env = attempt(1)
    task = asyncio.create_task(env.run(package))
    await asyncio.wait_for(running.wait(), 10)
    # A cancel the user asked for, or Temporal giving up on the attempt (a heartbeat timeout).
    details = ActivityCancellationDetails(
        cancel_requested=cancel_requested, timed_out=not cancel_requested
    )
    env.cancel(details)
    with pytest.raises(asyncio.CancelledError):
        await task
    (stopped,) = worker_log.lines("job attempt stopped")
    assert stopped["reason"] == reason and stopped["jobId"] == JOB
    assert stopped["attempt"] == 1 and "durationMs" in stopped
