"""`/docs`: Swagger UI served from the `swagger-ui-bundle` package, so it works offline; and the
security of the routes that read their caller from headers, in the OpenAPI schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]

from api.deps import api_key_header, bearer

ASSETS = "/docs/assets"
# Swagger UI's page starts itself with an inline script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; object-src 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs(request: Request) -> HTMLResponse:
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} — API docs",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def mount_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=Path(str(swagger_ui_path))), name="docs-assets")
    document_caller_security(app)


def document_caller_security(app: FastAPI) -> None:
    """`get_owner` reads the `bearer` and `api_key_header` credentials itself (one dependency per
    request instead of three), so FastAPI does not see them: every operation that answers 401 and
    names no scheme of its own is documented with those two here, as FastAPI writes them."""
    generate = app.openapi
    schemes = (bearer, api_key_header)
    requirement: list[dict[str, list[str]]] = [{scheme.scheme_name: []} for scheme in schemes]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        for scheme in schemes:
            components[scheme.scheme_name] = jsonable_encoder(
                scheme.model, by_alias=True, exclude_none=True
            )
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "401" in operation.get("responses", {}):
                    operation.setdefault("security", requirement)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
