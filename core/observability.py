"""Logs (JSON lines), OpenTelemetry tracing and the worker's metrics endpoint (our metrics,
declared in `core.metrics`, and the Temporal SDK's) shared by the API and the worker."""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
import urllib.request
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from core.config import Settings
from core.metrics import DOWNLOAD_JOB_DURATION, DOWNLOAD_JOBS

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("job_id", default=None)


def _add_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        event.setdefault("traceId", format(span.trace_id, "032x"))
        event.setdefault("spanId", format(span.span_id, "016x"))
    if (rid := request_id_var.get()) is not None:
        event.setdefault("requestId", rid)
    if (jid := job_id_var.get()) is not None:
        event.setdefault("jobId", jid)
    return event


def setup_logging(settings: Settings, component: str) -> None:
    """Every log line, ours and the libraries', becomes one JSON object on stderr."""
    service = f"{settings.service_name}-{component}"

    def add_service(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        event.setdefault("service", service)
        return event

    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        add_service,
        _add_context,
    ]
    structlog.configure(
        processors=[
            # Calls below the level stop here, before any processor runs.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.EventRenamer("message"),
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.addFilter(_redact_logged_query)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Access lines come from our own middleware, with request ids.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def setup_tracing(settings: Settings, component: str) -> TracerProvider:
    """A tracer provider; spans are exported over OTLP only when an endpoint is configured.

    With no endpoint, spans are not recorded (nothing would read them) unless OTEL_TRACES_SAMPLER
    asks for it: every request still gets a trace id, for its `X-Trace-Id`, its log lines and the
    workflow it starts, at a fraction of a recorded span's cost.
    """
    sampler = None  # the SDK's: OTEL_TRACES_SAMPLER, or parent-based always-on
    if not settings.otel_exporter_otlp_endpoint and not os.environ.get("OTEL_TRACES_SAMPLER"):
        sampler = ParentBased(ALWAYS_OFF)
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"{settings.service_name}-{component}"}),
        sampler=sampler,
    )
    if settings.otel_exporter_otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)
    return provider


# --- redaction: query strings carry stream tickets (and, from old clients, tokens) ---
URL_SPAN_ATTRIBUTES = ("http.url", "http.target", "url.full", "url.query")
REDACTED = "REDACTED"
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def redact_query(query: str) -> str:
    """`a=1&b` as `a=REDACTED&REDACTED`: parameter names stay (when plain), values never."""
    pairs = (pair.partition("=") for pair in query.split("&") if pair)
    return "&".join(
        f"{name}={REDACTED}" if eq and _PARAM_NAME.fullmatch(name) else REDACTED
        for name, eq, _ in pairs
    )


def redact_span_query(span: trace.Span, _scope: Any = None) -> None:
    """The ASGI instrumentation's `server_request_hook`: it runs after the request attributes are
    set, and overwrites every query value they hold."""
    attributes = getattr(span, "attributes", None) or {}
    for name in URL_SPAN_ATTRIBUTES:
        value = attributes.get(name)
        if not isinstance(value, str):
            continue
        if name == "url.query":
            span.set_attribute(name, redact_query(value))
        elif "?" in value:
            span.set_attribute(name, _redact_target(value))


def _redact_target(value: str) -> str:
    path, _, query = value.partition("?")
    return f"{path}?{redact_query(query)}"


def _redact_logged_query(record: logging.LogRecord) -> bool:
    """uvicorn logs each WebSocket handshake as `"WebSocket <path>?<query>"`: the values go."""
    if isinstance(record.args, tuple):
        record.args = tuple(
            _redact_target(arg) if isinstance(arg, str) and arg[:1] == "/" and "?" in arg else arg
            for arg in record.args
        )
    return True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]


class SdkMetrics(Collector):
    """Re-exports the Temporal SDK's Prometheus metrics on our own /metrics endpoint."""

    def __init__(self, url: str) -> None:
        self.url = url

    def collect(self) -> Iterator[Metric]:
        try:
            with urllib.request.urlopen(self.url, timeout=2) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
        except OSError:
            return
        yield from text_string_to_metric_families(text)


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def worker_runtime(settings: Settings) -> Runtime:
    """A Temporal runtime whose SDK metrics are served on loopback and merged into the worker's
    own /metrics endpoint (WORKER_METRICS_PORT; 0 serves none)."""
    sdk_address = f"127.0.0.1:{_free_loopback_port()}"
    runtime = Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=sdk_address, durations_as_seconds=True, counters_total_suffix=True
            )
        )
    )
    if settings.worker_metrics_port:
        # Workflows count jobs through the SDK meter; these names come from there on a worker.
        for local in (DOWNLOAD_JOBS, DOWNLOAD_JOB_DURATION):
            REGISTRY.unregister(local)
        REGISTRY.register(SdkMetrics(f"http://{sdk_address}/metrics"))
        start_http_server(settings.worker_metrics_port, addr="0.0.0.0")  # noqa: S104
    return runtime
