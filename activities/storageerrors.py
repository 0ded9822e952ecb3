"""Storage errors as the activity errors Temporal retries or ends the job with.

The one place a `core.storage.StorageError` becomes an `ApplicationError` of the contract's
`ErrorType`: on the activity side, so the contract (`workflows.errors`) never imports storage
code into the workflow sandbox.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.exceptions import ApplicationError

from core.storage import AccessDenied, ObjectNotFound, StorageError
from workflows.errors import HANDOVER_DELAY, ErrorType, final


def storage_failure(exc: StorageError) -> ApplicationError:
    """Typed activity error: not found and access denied are final, outages are retried."""
    if isinstance(exc, ObjectNotFound):
        kind = ErrorType.file_not_found
    elif isinstance(exc, AccessDenied):
        kind = ErrorType.access_denied
    else:
        kind = ErrorType.storage_unavailable
    return ApplicationError(str(exc), type=kind.value, non_retryable=not exc.retryable)


def storage_retry(exc: StorageError, delay: timedelta | None) -> ApplicationError:
    """A storage failure counted against the job's storage attempts: retried after `delay`, or
    final when they are used up (`delay` None)."""
    if delay is None:
        return final(ErrorType.storage_unavailable, str(exc))
    return ApplicationError(
        str(exc), type=ErrorType.storage_unavailable.value, next_retry_delay=delay
    )


def unexpected_failure(
    exc: Exception, delay: timedelta | None = None, *, last: bool = False
) -> ApplicationError:
    """An error no one foresaw (a defect, an answer of an unknown shape): it counts against the
    job's storage attempts too, so it ends the job (`last`) instead of being retried until the
    job's deadline."""
    message = f"{type(exc).__name__}: {exc}"
    if last:
        return final(ErrorType.unknown, message)
    return ApplicationError(message, type=ErrorType.unknown.value, next_retry_delay=delay)


def upload_gone(exc: StorageError) -> ApplicationError:
    """The upload was completed or aborted under the attempt: retried at once, and the next
    attempt returns the completed archive or starts over."""
    return ApplicationError(
        str(exc), type=ErrorType.storage_unavailable.value, next_retry_delay=HANDOVER_DELAY
    )
