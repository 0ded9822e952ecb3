"""FastAPI application factory and the `download-api` entry point."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from activities.storage import ObjectStore
from api.routes import health
from config import Settings, load_settings
from observability import get_logger, setup_logging, setup_tracing
from workflows.client import connect

log = get_logger("api")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.store = ObjectStore(settings)
        # Lazy: the API starts (and answers 503) while Temporal is still coming up or down.
        app.state.temporal = await connect(settings, lazy=True)
        if not settings.auth_enabled:
            log.warning("authentication is off: every caller acts as 'anonymous'")
        yield
        await asyncio.sleep(0)

    app = FastAPI(
        title="Download service",
        version="1.0.0",
        description="Start bundle downloads as durable Temporal workflows, follow their progress, "
        "and fetch the archive.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app


def main() -> None:
    settings = load_settings()
    setup_logging(settings, "api")
    setup_tracing(settings, "api")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        date_header=True,
    )


if __name__ == "__main__":
    main()
