"""The codec endpoint for the Temporal Web UI: Temporal's remote codec protocol (`POST /encode`,
`POST /decode`, `{"payloads": [...]}` both ways), so operators see decrypted payloads.

A small app of its own on its own port (`CODEC_HOST`:`CODEC_PORT`), served by the API process
when payload encryption is on and the port is set, never on the API's public port. Operators
only: it listens where the Web UI is reachable (loopback, or the operators' network), answers
browsers only from the Web UI's origin (`CODEC_CORS_ORIGINS`, default `TEMPORAL_UI_URL`: other
origins get 403 before anything is decoded), and only for the service's namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator

import uvicorn
from google.protobuf import json_format
from google.protobuf.json_format import ParseError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from temporalio.api.common.v1 import Payloads

from core.config import Settings
from core.observability import get_logger
from core.payloadcodec import EncryptionCodec, UnknownKeyError

log = get_logger("api.codec")

MAX_BODY_BYTES = 16 * 1024 * 1024


def create_codec_app(settings: Settings) -> Starlette:
    codec = EncryptionCodec(settings.encryption_keys)
    origins = settings.codec_origins
    namespace = settings.temporal_client_config()["namespace"]

    async def handle(request: Request) -> Response:
        origin = request.headers.get("origin")
        if origin is not None and origin.rstrip("/") not in origins:
            return JSONResponse({"error": "origin not allowed"}, status_code=403)
        if request.headers.get("x-namespace", namespace) != namespace:
            return JSONResponse({"error": "unknown namespace"}, status_code=403)
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            payloads = json_format.Parse(body, Payloads())
            step = codec.encrypt if request.url.path.endswith("/encode") else codec.decrypt
            result = Payloads(payloads=[step(p) for p in payloads.payloads])
        except (ParseError, UnknownKeyError) as exc:
            return JSONResponse({"error": str(exc).splitlines()[0]}, status_code=400)
        return Response(json_format.MessageToJson(result), media_type="application/json")

    return Starlette(
        routes=[
            Route("/encode", handle, methods=["POST"]),
            Route("/decode", handle, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["POST"],
                allow_headers=["Content-Type", "X-Namespace", "Authorization"],
                allow_credentials=True,
            )
        ],
    )


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server inside a running process: the process's own server handles signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def codec_server(settings: Settings) -> AsyncIterator[int | None]:
    """Serve the codec endpoint while the block runs; yields its port (None when off)."""
    if not (settings.payload_encryption_keys and settings.codec_port):
        yield None
        return
    family = socket.AF_INET6 if ":" in settings.codec_host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.codec_host, settings.codec_port))  # a taken port fails the start here
    config = uvicorn.Config(
        create_codec_app(settings), log_config=None, lifespan="off", server_header=False
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    log.info("codec endpoint listening", host=settings.codec_host, port=settings.codec_port)
    try:
        yield settings.codec_port
    finally:
        server.should_exit = True
        await task
        sock.close()
