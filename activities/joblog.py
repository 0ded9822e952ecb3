"""One JSON log line per packaging attempt of a job: started (or retried), resumed, finished,
failed (saying whether Temporal will retry it) or stopped, with jobId, attempt, bytes and
duration; traceId and spanId come from the activity's span."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.observability import get_logger, job_id_var
from workflows.errors import ErrorType, will_retry

log = get_logger("worker.jobs")


@dataclass
class AttemptLog:
    attempt: int
    # The attempt's byte counters once it knows its sources (bytesRead, bytesDone).
    counters: Callable[[], dict[str, int]] | None = None
    started: float = field(default_factory=time.monotonic)

    def fields(self) -> dict[str, object]:
        return {
            "attempt": self.attempt,
            **(self.counters() if self.counters else {}),
            "durationMs": round((time.monotonic() - self.started) * 1000),
        }

    def resumed(self, offset: int) -> None:
        log.info("job attempt resumed", attempt=self.attempt, archiveOffset=offset)


@contextlib.contextmanager
def attempt_log(job_id: str) -> Iterator[AttemptLog]:
    info = activity.info()
    job_id_var.set(job_id)
    entry = AttemptLog(attempt=info.attempt)
    if info.attempt == 1:
        log.info("job attempt started", attempt=info.attempt)
    else:
        log.info("job attempt retried", attempt=info.attempt)
    try:
        yield entry
    except asyncio.CancelledError:
        details = activity.cancellation_details()
        reason = "cancelled" if details is not None and details.cancel_requested else "interrupted"
        log.info("job attempt stopped", reason=reason, **entry.fields())
        raise
    except Exception as exc:
        kind = exc.type if isinstance(exc, ApplicationError) else None
        log.warning(
            "job attempt failed",
            errorType=kind or ErrorType.unknown.value,
            error=str(exc),
            willRetry=will_retry(exc, info.attempt, info.retry_policy),
            **entry.fields(),
        )
        raise
    log.info("job attempt finished", **entry.fields())
