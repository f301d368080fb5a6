"""``/docs`` (Swagger UI) and ``/redoc`` that work with no Internet access.

FastAPI's own pages load their JavaScript, CSS and icon from a CDN, so they show nothing on
a network without Internet access, where services like ours often run.  Here the pages are
FastAPI's (``get_swagger_ui_html``, ``get_redoc_html``), and their assets are served by the
service itself at ``/docs/assets/``, from the files that the ``fastapi-offline`` package
ships and keeps current (Swagger UI, ReDoc and FastAPI's icon; we use its files only).
"""
from __future__ import annotations

import importlib.resources
import pathlib

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS, REDOC = "/docs", "/redoc"
ASSETS = "/docs/assets"
# Swagger UI would otherwise send the schema's URL to an online validator for a badge.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def assets_directory() -> pathlib.Path:
    """Where the installed ``fastapi-offline`` keeps the files of both pages."""
    return pathlib.Path(str(importlib.resources.files("fastapi_offline") / "static"))


def serve_offline(app: FastAPI) -> None:
    """Replace ``app``'s ``/docs`` and ``/redoc`` by pages whose assets it serves itself."""
    # FastAPI made its CDN pages when ``app`` was made; remove them rather than ask every
    # service to make its app with docs_url=None (one place to change, not three).
    default_pages = {app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.router.routes[:] = [route for route in app.router.routes
                            if getattr(route, "path", None) not in default_pages]
    app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url = DOCS, REDOC, None
    app.mount(ASSETS, StaticFiles(directory=assets_directory()), name="docs-assets")

    @app.get(DOCS, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title}: API",
            swagger_js_url=f"{base}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{ASSETS}/favicon.png",
            oauth2_redirect_url=None, swagger_ui_parameters=SWAGGER_PARAMETERS)

    @app.get(REDOC, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{base}{app.openapi_url}", title=f"{app.title}: API",
            redoc_js_url=f"{base}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{base}{ASSETS}/favicon.png", with_google_fonts=False)
