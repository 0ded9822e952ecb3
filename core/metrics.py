"""Every metric the service exports, declared once: a new one goes here (or, when a workflow
records it, in `core.jobmetrics`).

Prometheus objects of the API and the worker's activities, in the order /metrics lists them;
names kept from the existing service, plus packaging. The job metrics are recorded by the
workflow on Temporal's meter and exported by the SDK on a worker; the API declares the same
series here, under the names `core.jobmetrics` gives them, and a worker's endpoint serves the
SDK's instead (`core.observability`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from core import jobmetrics

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
HTTP_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request duration", ["method", "route"]
)
DOWNLOAD_JOBS = Counter(
    jobmetrics.DOWNLOAD_JOBS.name, jobmetrics.DOWNLOAD_JOBS.description, [jobmetrics.STATUS_LABEL]
)
DOWNLOAD_JOB_DURATION = Histogram(
    jobmetrics.DOWNLOAD_JOB_DURATION.name,
    jobmetrics.DOWNLOAD_JOB_DURATION.description,
    buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
DOWNLOAD_QUEUE_SIZE = Gauge("download_queue_size", "Jobs queued or processing (visibility count)")
S3_OPERATIONS = Counter("s3_operations_total", "S3 operations", ["operation", "status"])
S3_DURATION = Histogram("s3_operation_duration_seconds", "S3 operation duration", ["operation"])
ACTIVE_SSE = Gauge("active_sse_connections", "Open Server-Sent Events streams")
STATUS_DESCRIBES = Counter(
    "download_status_describes_total", "describe() calls made to answer status and event streams"
)
STATUS_CLOSE_WAITS = Counter(
    "download_status_close_waits_total",
    "Long polls of a run's history for its close, made to end event streams",
)
ACTIVE_WEBSOCKETS = Gauge("active_websocket_connections", "Open WebSocket event streams")
BYTES_PACKAGED = Counter("download_bytes_packaged_total", "Source bytes written into archives")
FILES_PACKAGED = Counter("download_files_packaged_total", "Files written into archives")
BUS_PUBLISHED = Counter(
    "download_bus_published_total",
    "Progress messages offered to the bus: sent, replaced by a newer one before it was sent, or "
    "dropped (bus down or its buffer full)",
    ["outcome"],
)
BUS_RECEIVED = Counter(
    "download_bus_received_total", "Progress messages the API received from the bus"
)
