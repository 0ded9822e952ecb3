"""Error tracking (Sentry) for the API and the worker: system failures only, tagged with jobId,
traceId and requestId. Without SENTRY_DSN nothing is set up: no SDK, no network, no log line.

Reported: an API request that ended in a 500, and an activity that failed for good for a system
reason (storage unavailable after its last attempt, an unexpected exception; which ones is
decided beside the activities, `activities.errorreports`). Not reported: a user's error (file not
found, nothing to package, ...), an attempt Temporal will retry, a worker handing its job over on
shutdown, a cancellation. Events are queued for the SDK's background transport, so a slow or
unreachable Sentry never delays a request or a job.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import trace
from temporalio.exceptions import ApplicationError

from core.config import Settings
from core.observability import job_id_var, request_id_var

if TYPE_CHECKING:
    from sentry_sdk.client import BaseClient
    from sentry_sdk.types import Event, Hint

DISTRIBUTION = "temporal-downloads"
FLUSH_SECONDS = 2.0
# Request parts that may carry tokens or user data; only the method and the bare URL stay.
_REQUEST_FIELDS_DROPPED = ("data", "cookies", "headers", "query_string", "env")


def release() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def setup_error_tracking(settings: Settings, component: str) -> bool:
    """Start the Sentry SDK when SENTRY_DSN is set; returns whether it is on."""
    if not settings.sentry_dsn:
        return False
    # Imported here: processes without a DSN never load the SDK (time and memory).
    import sentry_sdk

    def before_send(event: Event, _: Hint) -> Event:
        return scrub_event(event, component)

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.environment.value,
        release=release(),
        # Nothing about users, requests or local variables (`data_collection` supersedes
        # `send_default_pii` in this SDK version); events carry only what we attach.
        data_collection={
            "user_info": False,
            "cookies": {"mode": "off"},
            "http_headers": {"request": {"mode": "off"}},
            "http_bodies": [],
            "url_query_params": {"mode": "off"},
            "stack_frame_variables": False,
        },
        max_request_body_size="never",
        # Only the failures reported here: no logging, framework or HTTP-client hooks.
        default_integrations=False,
        auto_enabling_integrations=False,
        before_send=before_send,
        shutdown_timeout=FLUSH_SECONDS,
    )
    return True


def active_client() -> BaseClient | None:
    """The SDK's client while error tracking is on, else None (without importing the SDK)."""
    if "sentry_sdk" not in sys.modules:
        return None
    import sentry_sdk

    client = sentry_sdk.get_client()
    return client if client.is_active() else None


def close_error_tracking(timeout: float = FLUSH_SECONDS) -> None:
    """Send what is queued (waiting at most `timeout` seconds) and turn the SDK off."""
    if (client := active_client()) is not None:
        import sentry_sdk

        client.close(timeout=timeout)
        sentry_sdk.get_global_scope().set_client(None)


def scrub_event(event: Event, component: str) -> Event:
    """Stamp the component; keep no request body, header, cookie or query string."""
    event.setdefault("tags", {})["component"] = component
    request = event.get("request")
    if request is not None:
        for name in _REQUEST_FIELDS_DROPPED:
            request.pop(name, None)
        url = request.get("url")
        if isinstance(url, str):
            request["url"] = urlunsplit(urlsplit(url)._replace(query="", fragment=""))
    return event


def report_failure(
    exc: BaseException,
    *,
    job_id: str | None = None,
    request_id: str | None = None,
    context: dict[str, object] | None = None,
) -> None:
    """Queue one event for `exc`; job and request ids default to the current request's."""
    client = active_client()
    if client is None:
        return
    import sentry_sdk
    from sentry_sdk.utils import event_from_exception

    event, hint = event_from_exception(
        exc, client_options=client.options, mechanism={"type": "download-service", "handled": False}
    )
    tags = {
        "jobId": job_id or job_id_var.get(),
        "requestId": request_id or request_id_var.get(),
        "errorType": exc.type if isinstance(exc, ApplicationError) else None,
    }
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if span_context.is_valid:
        trace_id = format(span_context.trace_id, "032x")
        tags["traceId"] = trace_id
        # Sentry's trace view then shows the same trace as the logs and the OTLP backend.
        event["contexts"] = {
            "trace": {"trace_id": trace_id, "span_id": format(span_context.span_id, "016x")}
        }
        # The span's name is the route template or the activity, never a raw URL.
        if name := getattr(span, "name", None):
            event["transaction"] = str(name)
    if context:
        event.setdefault("contexts", {})["temporal"] = context
    sentry_sdk.capture_event(
        event, hint=hint, tags={k: v for k, v in tags.items() if v is not None}
    )
