"""Passing a request on from a front worker to the owner worker, streamed both ways.

The request goes as it came (method, path, query, headers, Authorization included, body as
it arrives) to the owner's private loopback address, and its answer comes back as the
owner sent it (status, headers, body as it is produced: chunk streams and large files are
never gathered in memory).  Only the headers that describe one connection, not the
message, are left out (RFC 9110, section 7.6.1).  The owner applies its access rules to
the request as to any other.
"""
from __future__ import annotations

import json
import logging

import httpx
from starlette.types import Receive, Scope, Send

log = logging.getLogger("caterva2.front")
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
              b"te", b"trailer", b"transfer-encoding", b"upgrade", b"proxy-connection"}
FRONT_HEADER = "Caterva2-Passed-By"  # names the front a request came through (logs)


class PassOn:
    """Sends requests on to the owner at ``owner_url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, owner_url: str, client: httpx.AsyncClient, front: str):
        self.owner_url, self.client, self.front = owner_url, client, front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        headers.append((FRONT_HEADER.lower().encode(), self.front.encode()))
        url = self.owner_url + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        has_body = any(k.lower() in (b"content-length", b"transfer-encoding")
                       for k, _ in scope["headers"])
        request = self.client.build_request(
            scope["method"], url, headers=headers,
            content=_body(receive) if has_body else None)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as e:
            await _unavailable(send, f"this subscriber's main worker does not answer now "
                                     f"({type(e).__name__}); try again")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in HOP_BY_HOP]})
            async for piece in response.aiter_raw():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except httpx.HTTPError as e:  # (cut short by the owner: the client sees it cut too)
            log.warning("answer from the main worker cut short: %s", e)
            raise
        finally:
            await response.aclose()


async def _body(receive: Receive):
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _unavailable(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": 503,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
