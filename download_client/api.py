"""The API's endpoints as typed calls, with transport failures and error bodies turned into
`ClientError`s.

Credentials travel in the `Authorization` header on every call, the event stream included, so a
token never appears in a URL (or a proxy's access log).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent, connect_sse

from download_client.errors import ApiError, ApiUnreachable
from download_client.models import Job, JobStatus, JobSummary

TIMEOUT = httpx.Timeout(30.0, connect=5.0)
# The server sends a keep-alive comment every 15 s; silence for longer means the stream is dead.
STREAM_TIMEOUT = httpx.Timeout(5.0, read=45.0)


# Refusals said in plain words before the API's own message (which names the limit).
PLAIN_REFUSALS = {
    "quota_exceeded": "quota reached",
    "priority_not_allowed": "priority not allowed",
}


def error_from(resp: httpx.Response) -> ApiError:
    """The API's error body, or the bare status line when something else answered."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        error, message = str(body.get("error")), body["message"]
        if error in PLAIN_REFUSALS:
            message = f"{PLAIN_REFUSALS[error]}: {message}"
        retry_after = resp.headers.get("retry-after", "")
        if resp.status_code == 429 and retry_after.isdigit():
            message += f" (try again in {retry_after} s)"
        return ApiError(resp.status_code, error, message, body.get("requestId"))
    message = f"HTTP {resp.status_code} {resp.reason_phrase} from {resp.request.url}"
    return ApiError(resp.status_code, "http_error", message, None)


class ApiClient:
    def __init__(self, base_url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=TIMEOUT)

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            resp = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self.unreachable(exc) from None
        if resp.is_error:
            raise error_from(resp)
        return resp.json()

    def unreachable(self, exc: Exception) -> ApiUnreachable:
        return ApiUnreachable(
            f"cannot reach the API at {self.base_url}: {exc or type(exc).__name__}"
        )

    def initiate(
        self, file_ids: list[int], priority: int | None = None, max_archive_bytes: int | None = None
    ) -> Job:
        """Start a job; `priority` and `max_archive_bytes` are sent only when given (the service
        then uses its default priority, and one archive)."""
        body: dict[str, Any] = {"file_ids": file_ids}
        if priority is not None:
            body["priority"] = priority
        if max_archive_bytes is not None:
            body["max_archive_bytes"] = max_archive_bytes
        return Job.from_json(self._call("POST", "/v1/download/initiate", json=body))

    def status(self, job_id: str) -> Job:
        return Job.from_json(self._call("GET", f"/v1/download/status/{_seg(job_id)}"))

    def details(self, job_id: str) -> Job:
        """The job with a fresh presigned `downloadUrl` and its `archiveSize` when completed."""
        return Job.from_json(self._call("GET", f"/v1/download/{_seg(job_id)}"))

    def cancel(self, job_id: str) -> JobStatus:
        return JobStatus(self._call("DELETE", f"/v1/download/{_seg(job_id)}")["status"])

    def retry(self, job_id: str) -> Job:
        return Job.from_json(self._call("POST", f"/v1/download/{_seg(job_id)}/retry"))

    def jobs(self, status: JobStatus | None) -> Iterator[JobSummary]:
        """The caller's jobs, newest first, following `nextPageToken` to the last page."""
        params: dict[str, str] = {"status": status.value} if status else {}
        while True:
            page = self._call("GET", "/v1/downloads", params=params)
            yield from (JobSummary.from_json(j) for j in page["jobs"])
            if not page.get("nextPageToken"):
                return
            params["pageToken"] = page["nextPageToken"]

    @contextmanager
    def events(self, job_id: str, last_event_id: str | None) -> Iterator[Iterator[ServerSentEvent]]:
        """The job's SSE stream, resumed after `last_event_id`. Transport errors are raised as
        httpx's own, so the caller can tell a dropped stream from an unreachable API."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        path = f"/v1/download/subscribe/{_seg(job_id)}"
        with connect_sse(
            self._http, "GET", path, headers=headers, timeout=STREAM_TIMEOUT
        ) as source:
            resp = source.response
            if resp.is_error:
                resp.read()
                raise error_from(resp)
            # 204: the server says the last event we saw was the final one.
            yield iter(()) if resp.status_code == 204 else source.iter_sse()


def _seg(job_id: str) -> str:
    return quote(job_id, safe="")
