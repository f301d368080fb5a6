"""A bound on the size of request bodies, checked before they are read into memory.

uvicorn hands a request's body to the application in pieces, as it arrives (keeping at most
about 64 kB waiting), and FastAPI gathers all of it before parsing it: without a bound, one
request of 200 MB becomes 200 MB (and more, parsed) in the service.  :class:`BodyLimit`
refuses a body that says it is too large (``Content-Length``) before reading any of it, and
stops one that turns out too large while it arrives (chunked, no length) as soon as it
passes the bound: a 413 with a JSON ``detail`` either way.  The rest of such a body is
discarded by uvicorn as it comes, never kept.
"""
from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caterva2.config import format_size


class BodyTooLarge(HTTPException):
    """A request body larger than the service takes (a 413)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body too large: this service takes at most "
                              f"{format_size(limit)}")


class BodyLimit:
    """ASGI middleware: request bodies of at most ``max_bytes``, else a 413."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # (FastAPI answers it as any error)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:  # (raised where no error handler answers it)
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": BodyTooLarge(self.max_bytes).detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
