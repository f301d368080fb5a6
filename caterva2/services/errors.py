"""How services answer errors: JSON ``{"detail": ...}`` with a fitting status, never a 500.

Bad request parameters are a 400 (not FastAPI's 422), unknown URLs say where the API is
described, and a full or read-only disk is a 507 that says so without naming server paths.
"""
from __future__ import annotations

import errno
import logging

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from caterva2 import paths


def install_error_handlers(app: FastAPI) -> None:
    """Errors are JSON ``{"detail": ...}``; bad request parameters are a 400, not a 422."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"invalid {where}: {first.get('msg', 'bad input')}"},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)  # ours, and the router's (no such URL)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        path = request.url.path  # (shortened: a huge URL does not come back whole)
        path = path if len(path) <= 200 else f"{path[:200]}..."
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {path} (the API is described at /docs)"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed for {path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)  # a full disk (...): 507, not a 500 with a traceback
    async def disk_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in DISK_ERRORS:
            raise exc
        logging.getLogger("caterva2").error("%s %s: %s", request.method, request.url.path,
                                            exc)
        return JSONResponse({"detail": disk_error_text(exc, f"the {request.app.title}")},
                            status_code=507)


NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DISK_ERRORS = NO_SPACE | {errno.EROFS}


class CacheTooSmall(OSError):
    """A bounded cache cannot make room for a write, even after evicting all it may: what
    is left is held by answers in flight, or the read alone needs more (→ 507, saying so)."""

    def __init__(self, reason: str):
        super().__init__(errno.ENOSPC, reason)


def disk_error_text(error: OSError, service: str) -> str:
    """What a client is told of a failed write (the error's text, never a server path)."""
    if isinstance(error, CacheTooSmall):
        return f"{service}: {error.strerror}"
    advice = "; free space where its --statedir is, then try again" \
        if error.errno in NO_SPACE else ""
    return f"{service} cannot write to its disk ({error.strerror or 'write error'}){advice}"


def safe_relpath(path: str) -> str:
    """Validate a dataset path from a URL (see :func:`caterva2.paths.check_relpath`).

    Raises HTTPException(400) otherwise, so nothing outside a root is ever named.
    """
    try:
        return paths.check_relpath(path)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
