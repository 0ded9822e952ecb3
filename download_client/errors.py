"""What went wrong, as exit codes a script can branch on.

Every failure the user is told about is a `ClientError` carrying its exit code, so the command
layer maps errors to codes in one place.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """`download-client`'s exit status (2 is typer's usage error)."""

    completed = 0
    failed = 1
    usage = 2
    cancelled = 3
    api = 4
    transfer = 5
    partial = 6  # completed, but without some of the requested files


class ClientError(Exception):
    exit_code = ExitCode.api


class ApiUnreachable(ClientError):
    """No HTTP answer from the API: refused, timed out, DNS."""


class ApiError(ClientError):
    """The API answered with an error body `{error, message, requestId}`."""

    def __init__(self, status: int, error: str, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status, self.error, self.message, self.request_id = status, error, message, request_id


class TransferError(ClientError):
    """The archive could not be downloaded completely; what arrived stays in `FILE.part`."""

    exit_code = ExitCode.transfer
