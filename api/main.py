"""FastAPI application factory and the `download-api` entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from api.codec import codec_server
from api.errors import install_error_handlers
from api.middleware import install_middleware
from api.routes import downloads, events, legacy, service
from api.routes.docs import mount_docs
from api.routes.service import STATIC
from api.services import build_services
from core import heap
from core.config import Process, Settings, load_settings
from core.errortracking import close_error_tracking, setup_error_tracking
from core.observability import redact_span_query, setup_logging, setup_tracing


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings(Process.api)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = services = await build_services(settings)
        try:
            async with codec_server(settings):  # the Web UI's codec endpoint, when configured
                yield
        finally:
            await services.aclose()

    app = FastAPI(
        title="Download service",
        version="1.0.0",
        description="Start bundle downloads as durable Temporal workflows, follow their progress, "
        "and fetch the archive.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # One span per request, from the instrumentation below (which redacts query strings);
        # FastAPI's own telemetry would trace every request a second time. Metrics: /metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app, settings)
    install_middleware(app, settings)
    # Routes are matched in order: the job routes, which take nearly all requests, come first.
    app.include_router(downloads.router)
    app.include_router(events.router)
    app.include_router(legacy.router)
    app.include_router(service.router)
    mount_docs(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    setup_tracing(settings, "api")
    setup_error_tracking(settings, "api")
    FastAPIInstrumentor.instrument_app(
        app,
        excluded_urls="health,readyz,livez,metrics",
        # One span per request, not one more per ASGI message sent or received.
        exclude_spans=["receive", "send"],
        # Query strings carry stream tickets: their values never reach a span.
        server_request_hook=redact_span_query,
    )
    return app


def main() -> None:
    settings = load_settings(Process.api)
    setup_logging(settings, "api")
    # Modules, schemas and settings live as long as the process (`core.heap`).
    heap.settle()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        date_header=True,
    )
    close_error_tracking()


if __name__ == "__main__":
    main()
