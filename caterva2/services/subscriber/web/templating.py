"""Templates, static files and error pages of the web interface.

Pages are Jinja2 templates (``templates/``, autoescaped); every asset is served from
``static/`` (htmx is vendored there, with its licence), so the interface works with no
Internet access.  Errors in a web route become an HTML page (or, for an htmx request, a
fragment) with the fitting 4xx status and the reason, never JSON nor a traceback.
"""
from __future__ import annotations

import logging
import pathlib
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from caterva2 import slicing
from caterva2.services.errors import DISK_ERRORS, disk_error_text
from caterva2.services.subscriber.access import current_user

HERE = pathlib.Path(__file__).parent
STATIC_URL = "/web/static"
log = logging.getLogger("caterva2.subscriber")


def _globals(request: Request) -> dict[str, Any]:
    sub = getattr(request.app.state, "subscriber", None)
    return {"user": current_user(), "static": STATIC_URL,
            "login_required": bool(sub and sub.access.require_login)}


templates = Jinja2Templates(directory=HERE / "templates", context_processors=[_globals])
templates.env.trim_blocks = templates.env.lstrip_blocks = True  # (smaller pages)
templates.env.filters["quote"] = lambda text: urllib.parse.quote(str(text))
templates.env.filters["size"] = lambda n: human_size(int(n))


def human_size(n: int) -> str:
    """Bytes for people: ``1.5 MB``."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


# Scripts and styles from this site only (images of planes come as data: URLs; colour bars
# are drawn with style attributes); no page may be framed by another site.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data:; "
                           "style-src 'self' 'unsafe-inline'; script-src 'self'; "
                           "frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def render(request: Request, template: str, status_code: int = 200,
           headers: dict[str, str] | None = None, **context: Any) -> Response:
    """``template`` with ``context``, as an HTML answer."""
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY,
               "X-Content-Type-Options": "nosniff", **(headers or {})}
    return templates.TemplateResponse(request, template, context, status_code=status_code,
                                      headers=headers)


def is_htmx(request: Request) -> bool:
    """Whether the request comes from htmx (it wants a fragment, not a page)."""
    return request.headers.get("hx-request") == "true"


def error_page(request: Request, status: int, detail: str) -> Response:
    """The error as a page (or a fragment for htmx) with its status."""
    name = "_error.html" if is_htmx(request) else "error.html"
    return render(request, name, status_code=status, status=status, detail=detail)


class WebRoute(APIRoute):
    """A route of the web interface: its errors are HTML pages with a 4xx status."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except StarletteHTTPException as e:
                return error_page(request, e.status_code, str(e.detail))
            except RequestValidationError as e:
                first = e.errors()[0] if e.errors() else {}
                where = ".".join(str(x) for x in first.get("loc", ()))
                return error_page(request, 400,
                                  f"invalid {where}: {first.get('msg', 'bad input')}")
            except slicing.SelectionError as e:
                return error_page(request, 400, str(e))
            except OSError as e:  # a full disk: 507 saying so (other errors are bugs)
                if e.errno not in DISK_ERRORS:
                    raise
                log.error("%s %s: %s", request.method, request.url.path, e)
                return error_page(request, 507, disk_error_text(e, "the subscriber"))

        return handle


def static_files() -> StaticFiles:
    """The web interface's assets (mounted at :data:`STATIC_URL`)."""
    return StaticFiles(directory=HERE / "static")
