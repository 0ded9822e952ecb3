"""Every failure type a job can end with, and the `ApplicationError`s that carry them.

`ErrorType` values travel as `ApplicationError.type` through Temporal into the job state, the API
and callbacks, so clients and tests match on the type, never on the message. Part of the
Temporal contract: it imports temporalio and pydantic only (storage errors are mapped to these
types on the activity side, `activities.storageerrors`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from enum import StrEnum

from pydantic import BaseModel
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError
from temporalio.exceptions import TimeoutError as TemporalTimeout


class ErrorType(StrEnum):
    """`ApplicationError.type` values; the non-retryable ones never get another attempt."""

    invalid_file_id = "InvalidFileId"
    file_not_found = "FileNotFound"
    access_denied = "AccessDenied"
    nothing_to_package = "NothingToPackage"
    source_changed = "SourceChanged"
    storage_unavailable = "StorageUnavailable"
    callback_refused = "CallbackRefused"
    # A delivery attempt that failed (non-2xx, deadline, unreachable): retried.
    callback_failed = "CallbackFailed"
    # Too many deliveries of one owner under way on this worker: retried later.
    callback_owner_busy = "CallbackOwnerBusy"
    # A packaging attempt handing its job over on worker shutdown; retried from its checkpoint.
    worker_shutdown = "WorkerShutdown"
    # Run outcomes decided outside the workflow code (operator or Temporal itself).
    terminated = "Terminated"
    timed_out = "TimedOut"
    # A workflow input that is not a valid job (only possible when started directly).
    invalid_request = "InvalidRequest"
    # Anything else: the job failed for a reason with no type of its own.
    unknown = "Error"


# What clients (and callbacks) are told, per type: plain words, never S3 keys, endpoints or
# exception text; those stay in the logs and the workflow history.
PUBLIC_MESSAGES: dict[str, str] = {
    ErrorType.invalid_file_id: "invalid file id",
    ErrorType.file_not_found: "not found",
    ErrorType.access_denied: "access to the files was denied",
    ErrorType.nothing_to_package: "none of the requested files is available",
    ErrorType.source_changed: "a file changed while it was being packaged",
    ErrorType.storage_unavailable: "storage is unavailable; retries exhausted",
    ErrorType.callback_refused: "the callback URL was refused",
    ErrorType.callback_failed: "the callback could not be delivered",
    ErrorType.callback_owner_busy: "the callback could not be delivered",
    ErrorType.worker_shutdown: "the job was interrupted",
    ErrorType.terminated: "the job was terminated by an operator",
    ErrorType.timed_out: "the job timed out before it could finish",
    ErrorType.invalid_request: "the job's input is invalid",
    ErrorType.unknown: "the job failed",
}


def public_message(kind: str | None) -> str:
    return PUBLIC_MESSAGES.get(kind or ErrorType.unknown, PUBLIC_MESSAGES[ErrorType.unknown])


NON_RETRYABLE_ERRORS = [
    ErrorType.invalid_request.value,
    ErrorType.invalid_file_id.value,
    ErrorType.file_not_found.value,
    ErrorType.access_denied.value,
    ErrorType.nothing_to_package.value,
    ErrorType.callback_refused.value,
]


def final(kind: ErrorType, message: str, *details: object) -> ApplicationError:
    """An error no retry can help with."""
    return ApplicationError(message, *details, type=kind.value, non_retryable=True)


def nothing_to_package(files: Sequence[BaseModel] | None = None) -> ApplicationError:
    """The job's final error when no file is available; `files` (`FileState`s: typed loosely,
    as the models import this module) gives the per-file reasons."""
    reasons = [[f.model_dump(mode="json") for f in files]] if files else []
    return final(
        ErrorType.nothing_to_package, public_message(ErrorType.nothing_to_package), *reasons
    )


def invalid_request(details: str) -> ApplicationError:
    """A workflow input that is not a valid job: the run fails at once, never retried."""
    message = public_message(ErrorType.invalid_request)
    return final(ErrorType.invalid_request, f"{message}: {details}")


def source_changed(exc: Exception) -> ApplicationError:
    return final(ErrorType.source_changed, f"source changed while packaging: {exc}")


# A deploy hand-over is retried at once; the next attempt, on any worker, resumes.
HANDOVER_DELAY = timedelta(seconds=1)


def worker_shutdown() -> ApplicationError:
    # Retryable: the next attempt, on any worker, resumes from the checkpoint.
    return ApplicationError(
        "worker shutting down",
        type=ErrorType.worker_shutdown.value,
        next_retry_delay=HANDOVER_DELAY,
    )


def callback_refused(message: str) -> ApplicationError:
    return final(ErrorType.callback_refused, message)


def is_cancellation(err: BaseException) -> bool:
    return isinstance(err, CancelledError) or isinstance(err.__cause__, CancelledError)


def root_message(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return str(getattr(err, "message", None) or err)


def describe_failure(err: BaseException) -> tuple[str, str]:
    """The job's public `error` (fixed words per type) and its type, for clients and tests."""
    cause: BaseException = err
    while cause.__cause__ is not None and not isinstance(cause, ApplicationError | TemporalTimeout):
        cause = cause.__cause__
    if isinstance(cause, TemporalTimeout):
        # The job's deadline passed (a single attempt's timeout is retried).
        return public_message(ErrorType.timed_out), ErrorType.timed_out.value
    kind = ErrorType.unknown.value
    if isinstance(cause, ApplicationError) and cause.type in PUBLIC_MESSAGES:
        kind = cause.type
    return public_message(kind), kind


def failure_details(err: BaseException) -> object | None:
    """The first detail an `ApplicationError` (directly or behind an `ActivityError`) carries."""
    cause = err.__cause__ if isinstance(err, ActivityError) else err
    if isinstance(cause, ApplicationError) and cause.details:
        first: object = cause.details[0]
        return first
    return None


def will_retry(err: BaseException, attempt: int, policy: RetryPolicy | None) -> bool:
    """Whether Temporal gives an activity that failed with `err` on `attempt` another attempt."""
    final_types = (policy.non_retryable_error_types or ()) if policy else ()
    if isinstance(err, ApplicationError) and (err.non_retryable or err.type in final_types):
        return False
    if policy is None or not policy.maximum_attempts:
        return True  # unlimited attempts
    return attempt < policy.maximum_attempts
