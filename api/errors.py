"""One error body for every failure: `{error, message, requestId, details}`; never a traceback.

Validation errors are 400 (not FastAPI's 422); an unreachable Temporal or S3 is 503 with
`Retry-After`, so clients retry instead of giving up. A 500 is also reported to error tracking.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.service import RPCError, RPCStatusCode

from api.schemas import ErrorResponse
from core.config import Environment, Settings
from core.errortracking import report_failure
from core.observability import get_logger, request_id_var
from core.storage import StorageUnavailable

log = get_logger("api.errors")

RETRY_AFTER_SECONDS = 5
_UNAVAILABLE = {
    RPCStatusCode.UNAVAILABLE,
    RPCStatusCode.DEADLINE_EXCEEDED,
    RPCStatusCode.RESOURCE_EXHAUSTED,
    RPCStatusCode.CANCELLED,
}
_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    500: "internal_error",
    503: "service_unavailable",
    504: "request_timeout",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Any = None,
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.headers = dict(headers or {})
        self.details = details

    @classmethod
    def not_found(cls, job_id: str) -> ApiError:
        return cls(404, "not_found", f"job {job_id} not found")

    @classmethod
    def conflict(cls, message: str) -> ApiError:
        return cls(409, "conflict", message)

    @classmethod
    def unavailable(cls, dependency: str) -> ApiError:
        return cls(
            503,
            f"{dependency}_unavailable",
            f"{dependency} is unreachable; try again shortly",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these status codes, plus the 429 and 503 any route can answer."""
    return {code: {"model": ErrorResponse} for code in (*codes, 429, 503)}


def error_body(status: int, message: str, error: str | None = None, details: Any = None) -> Any:
    return {
        "error": error or _CODES.get(status, HTTPStatus(status).phrase.lower().replace(" ", "_")),
        "message": message,
        "requestId": request_id_var.get(),
        "details": details,
    }


def error_response(
    status: int,
    message: str,
    error: str | None = None,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, error, details), status, headers=headers)


def internal_error_body(settings: Settings, exc: BaseException) -> Any:
    log.error("unhandled error", exc_info=exc)
    report_failure(exc)
    details = None
    if settings.environment != Environment.production:
        details = f"{type(exc).__name__}: {exc}"
    return error_body(500, "internal server error", details=details)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(p) for p in err.get("loc", ())],
            "msg": err.get("msg"),
            "type": err.get("type"),
        }
        for err in exc.errors()
    ]


def is_connect_failure(exc: BaseException) -> bool:
    """The Temporal client reports an unreachable server on a lazy connect as a RuntimeError."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("Failed client connect")


def document_400_not_422(app: FastAPI) -> None:
    """The OpenAPI document lists our 400 error body where FastAPI would list its 422."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = default()
            bad_request = {
                "description": "Invalid request",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}
                },
            }
            for path_item in schema["paths"].values():
                for operation in path_item.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses.setdefault("400", bad_request)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI, settings: Settings) -> None:
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(
            exc.status, exc.message, exc.error, details=exc.details, headers=exc.headers
        )

    async def validation_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        details = _validation_details(exc)
        if any(d["type"] == "json_invalid" for d in details):
            return error_response(400, "request body is not valid JSON", "invalid_json")
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        return error_response(400, message, "validation_error", details=details)

    async def http_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        return error_response(exc.status_code, message, headers=exc.headers)

    async def temporal_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RPCError)
        if exc.status in _UNAVAILABLE:
            log.warning("temporal unreachable", error=str(exc))
            return await api_error(_, ApiError.unavailable("temporal"))
        return JSONResponse(internal_error_body(settings, exc), 500)

    async def runtime_error(_: Request, exc: Exception) -> JSONResponse:
        if is_connect_failure(exc):
            log.warning("temporal unreachable", error=str(exc))
            return await api_error(_, ApiError.unavailable("temporal"))
        return JSONResponse(internal_error_body(settings, exc), 500)

    async def storage_error(_: Request, exc: Exception) -> JSONResponse:
        log.warning("storage unreachable", error=str(exc))
        return await api_error(_, ApiError.unavailable("storage"))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RPCError, temporal_error)
    app.add_exception_handler(RuntimeError, runtime_error)
    app.add_exception_handler(StorageUnavailable, storage_error)
    document_400_not_422(app)
