"""Bounds on the size of requests: their bodies, and their heads (URL and headers).

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
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


MAX_HEAD = 64 << 10  # bytes of a request's URL and headers together


class RequestHeadTooLarge(Exception):
    """A request whose URL and headers pass :data:`MAX_HEAD` (the parser stops there)."""


class BoundedHeads(HttpToolsProtocol):
    """uvicorn's fast HTTP protocol (httptools), with request heads of at most
    :data:`MAX_HEAD` bytes: a longer URL or more headers end the connection with a 400, as
    they arrive, instead of growing the service (uvicorn itself would gather a 50 MB URL
    whole: 150 MB more in the subscriber, measured)."""

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # (": " and the line's end)
        super().on_header(name, value)

    def _count(self, nbytes: int) -> None:
        self._head_bytes += nbytes
        if self._head_bytes > MAX_HEAD:  # (raised in a parser callback: a 400, and closed)
            raise RequestHeadTooLarge(f"request head over {MAX_HEAD} bytes")
