"""Cross-cutting behaviour as plain ASGI middleware (streams pass through untouched).

Order, outermost first: request context (request id, security headers, metrics, access log, last
resort 500), CORS, rate limit, body size limit, request timeout.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from limits import RateLimitItemPerSecond
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from opentelemetry import trace
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response, internal_error_body
from core.config import Settings
from core.metrics import HTTP_DURATION, HTTP_REQUESTS
from core.observability import get_logger, job_id_var, request_id_var

log = get_logger("api.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Page assets are our own files: no inline script, no third-party origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Probes, scrapes and static assets are not counted against a client's limit.
RATE_LIMIT_EXEMPT = (
    "/health",
    "/readyz",
    "/livez",
    "/metrics",
    "/static/",
    "/docs/assets/",
    "/favicon.ico",
)
MOUNTS = ("/static/", "/docs/assets/")
# Answers of the job API carry presigned links, stream tickets or state that changes: neither a
# browser nor a shared cache keeps them (a route may say otherwise for its own answer).
NO_STORE_PREFIX = "/v1/"
NO_STORE = (b"cache-control", b"no-store")
# Set by this middleware alone: a route's own value is dropped.
_REPLACED = {b"server", b"x-request-id", b"x-trace-id"}
RawHeaders = list[tuple[bytes, bytes]]
KNOWN_PATHS = ("/openapi.json",)


def client_address(scope: Scope, settings: Settings) -> str:
    """The peer, or the nearest untrusted hop of X-Forwarded-For when the peer is a proxy."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not _trusted(peer, settings):
        return str(peer)
    forwarded = Headers(scope=scope).get("x-forwarded-for")
    if not forwarded:
        return str(peer)
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, settings):
            return hop
    return hops[0] if hops else str(peer)


def _trusted(address: str, settings: Settings) -> bool:
    return _in_networks(address, settings.trusted_proxy_networks)


@functools.lru_cache(maxsize=4096)
def _in_networks(
    address: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    """Parsed once per address: every request asks it of its peer."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _route_label(scope: Scope, status: int) -> str:
    """The route template, never the raw path, so metric labels stay few."""
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if path is not None:
        return str(path)
    for prefix in MOUNTS:
        if scope["path"].startswith(prefix):
            return prefix + "{path}"
    return scope["path"] if scope["path"] in KNOWN_PATHS and status < 400 else "unmatched"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app, self.settings = app, settings
        # Added to every response that does not set its own, encoded once.
        defaults = {**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}
        # With CORS_ORIGINS=*, every response says so, as today's service does: CORS middleware
        # answers only requests that send `Origin`, and some clients check without sending it.
        if "*" in settings.cors_origin_list:
            defaults["Access-Control-Allow-Origin"] = "*"
        self.defaults = [(k.lower().encode(), v.encode()) for k, v in defaults.items()]
        # The metrics' children by (method, route, status): looked up once, not per request.
        self._metrics: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get("x-request-id", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else str(uuid.uuid4())
        request_id_var.set(request_id)
        job_id_var.set(None)
        scope.setdefault("state", {})["client_ip"] = client_address(scope, self.settings)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = self._headers(
                    message.get("headers", ()), request_id, scope["path"]
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if response_started:
                log.error("error after the response started", exc_info=exc)
            else:
                body = internal_error_body(self.settings, exc)
                await JSONResponse(body, 500)(scope, receive, send_with_headers)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_label(scope, status)
            requests, duration = self._children(scope["method"], route, status)
            requests.inc()
            duration.observe(elapsed)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                route=route,
                status=status,
                durationMs=round(elapsed * 1000, 1),
                client=scope["state"]["client_ip"],
            )

    def _headers(
        self, headers: Iterable[tuple[bytes, bytes]], request_id: str, path: str
    ) -> RawHeaders:
        """The response's headers less `Server`, with the request id, the trace id and every
        default header the response does not set itself (`no-store` on the job API's)."""
        own = [(k, v) for k, v in headers if k.lower() not in _REPLACED]
        present = {k.lower() for k, _ in own}
        own.append((b"x-request-id", request_id.encode()))
        own.extend(h for h in self.defaults if h[0] not in present)
        if path.startswith(NO_STORE_PREFIX) and NO_STORE[0] not in present:
            own.append(NO_STORE)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            own.append((b"x-trace-id", format(span.trace_id, "032x").encode()))
        return own

    def _children(self, method: str, route: str, status: int) -> tuple[Any, Any]:
        key = (method, route, str(status))
        children = self._metrics.get(key)
        if children is None:
            children = (HTTP_REQUESTS.labels(*key), HTTP_DURATION.labels(method, route))
            self._metrics[key] = children
        return children


class RateLimitMiddleware:
    """Per-client sliding window from `limits`; headers follow the IETF RateLimit draft.

    The counters live in RATE_LIMIT_STORAGE_URI: this process's memory by default, or a Redis or
    Memcached that every API replica shares, so the limit holds for the service. Should that
    store be unreachable, requests are let through (logged): the limiter protects the service,
    it must not take it down.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        window = max(1, round(settings.rate_limit_window_ms / 1000))
        self.item = RateLimitItemPerSecond(settings.rate_limit_max_requests, window)
        storage = storage_from_string(f"async+{settings.rate_limit_storage_uri}")
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self.policy = f"{settings.rate_limit_max_requests};w={window}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        key = scope["state"]["client_ip"]
        exempt = scope["path"].startswith(RATE_LIMIT_EXEMPT)
        try:
            allowed = exempt or await self.limiter.hit(self.item, key)
            stats = await self.limiter.get_window_stats(self.item, key)
        except Exception as exc:
            log.warning("rate limit storage unavailable; request let through", error=str(exc))
            await self.app(scope, receive, send)
            return
        reset = max(0, math.ceil(stats.reset_time - time.time()))
        headers = {
            "RateLimit-Policy": self.policy,
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset),
        }
        if not allowed:
            headers["Retry-After"] = str(max(1, reset))
            response = error_response(429, "too many requests; slow down", headers=headers)
            await response(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(headers)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimitMiddleware:
    """413 for bodies over MAX_BODY_BYTES, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        too_large = error_response(413, f"request body exceeds {self.max_bytes} bytes")
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body: list[Message] = [{"type": "http.request", "body": b"".join(chunks)}]

        async def replay() -> Message:
            return body.pop() if body else await receive()

        await self.app(scope, replay, send)


class TimeoutMiddleware:
    """Answer 504 when no response has started within REQUEST_TIMEOUT_MS; streams are exempt."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        deadline = asyncio.timeout(self.seconds)

        async def send_and_release(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                deadline.reschedule(None)
            await send(message)

        try:
            async with deadline:
                await self.app(scope, receive, send_and_release)
        except TimeoutError:
            if not deadline.expired() or started:
                raise
            log.warning("request timed out", path=scope["path"], timeoutSeconds=self.seconds)
            response = error_response(504, "the request took too long", "request_timeout")
            await response(scope, receive, send)


def install_middleware(app: Any, settings: Settings) -> None:
    """Added innermost first: Starlette wraps each new middleware around the previous ones."""
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout_ms / 1000)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.rate_limit_enabled:
        app.add_middleware(RateLimitMiddleware, settings=settings)
    origins = settings.cors_origin_list
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_credentials="*" not in origins,
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=[
            "Content-Type",
            "Authorization",
            "X-Request-ID",
            "X-API-Key",
            "Idempotency-Key",
            "Last-Event-ID",
        ],
        expose_headers=[
            "X-Request-ID",
            "X-Trace-Id",
            "Location",
            "Retry-After",
            "RateLimit-Policy",
            "RateLimit-Limit",
            "RateLimit-Remaining",
            "RateLimit-Reset",
        ],
        max_age=600,
    )
    app.add_middleware(RequestContextMiddleware, settings=settings)
