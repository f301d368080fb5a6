"""A front worker of a subscriber started with ``cat2sub --workers N`` (N > 1).

The subscriber's first process, the **owner**, is the whole subscriber as with one worker
(broker link, index sync, fetching, writing the cache, eviction, metrics); it starts N-1
fronts (``python -m caterva2.services.subscriber.front``, told what they need on their
standard input) that accept connections on the same listening socket.  A front answers by
itself, from the cache on disk (see :mod:`.disk_reads`), the requests that are hot and
read-only:

- ``GET /api/fetch/{root}/{path}`` whole answers (``slice_``, ``buffer``), when every chunk
  the selection touches is held, checked against its digest, and not being written;
- ``GET /api/info/{root}/{path}`` and ``GET /api/list/{root}``, from the index on disk;

provided the owner's broker link is up (so no read needs checking with its publisher), the
root is subscribed and the user may read it (the same logins and ``[access]`` rules as the
owner's).  Anything else, and anything uncertain (a chunk missing or being written, a bad
slice, an unknown root, the owner not heard from lately), is passed on to the owner over
a private loopback address (:mod:`.pass_on`).  A front never writes the cache and never
asks a publisher for anything: every chunk is still fetched once, by the owner, and every
replica is written by the owner alone.  What a front answered is added to the owner's
figures (:mod:`.worker_link`).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import os
import pathlib
import socket
import sys
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import HTTPException
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from caterva2 import paths, wire
from caterva2.models import ArrayMeta, DatasetEntry, user_info
from caterva2.services.limits import BoundedHeads
from caterva2.services.service import keep_freed_memory, setup_logging
from caterva2.services.subscriber import compat
from caterva2.services.subscriber.access import Access, AccessRules, RequireLogin
from caterva2.services.subscriber.data_api import encoder, plan_selection
from caterva2.services.subscriber.disk_reads import DiskIndexes, ReplicaHandles
from caterva2.services.subscriber.pass_on import PassOn
from caterva2.services.subscriber.worker_link import REPORT_INTERVAL_S, FrontTally
from caterva2.users import Users

log = logging.getLogger("caterva2.front")
FETCH_ROUTE = "/api/fetch/{root}/{path:path}"
INFO_ROUTE = "/api/info/{root}/{path:path}"
LIST_ROUTE = "/api/list/{root}"
INLINE_READ_BYTES = 64 << 10  # selections whose region is at most this are read inline
FIGURES = ("/metrics", "/api/cache")  # the owner's figures, which fronts' reports add to
TRUE, FALSE = {"true", "1", "yes", "on", "t", "y"}, {"false", "0", "no", "off", "f", "n"}
OWNER_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64)
OWNER_TIMEOUT = httpx.Timeout(None, connect=5)  # (answers may take as long as the owner's)


@dataclass(frozen=True)
class FrontSettings:
    """What the owner tells a front when starting it (as JSON on its standard input)."""

    name: str  # "front 1"...: for logs
    fd: int  # the listening socket, shared with the owner
    owner_url: str  # http(s)://127.0.0.1:PORT, the owner's private address
    secret: str  # authenticates the front's reports to the owner
    owner_pid: int  # the front stops when its parent is no longer this process
    statedir: str
    loglevel: str = "warning"
    require_login: bool = False
    access: dict[str, Any] = field(default_factory=dict)  # the [access] table
    certfile: str | None = None
    keyfile: str | None = None


@dataclass
class Answer:
    """An answer a front makes by itself, and what it adds to the figures."""

    status: int
    headers: dict[str, str]
    body: bytes
    route: str
    root: str | None = None
    chunks: int = 0
    replica: tuple[str, str, str] | None = None
    counts_bytes: bool = False


class FrontApp:
    """The ASGI application of a front: answer by itself, or pass on to the owner."""

    def __init__(self, settings: FrontSettings, access: Access,
                 stop: Callable[[], None] = lambda: None):
        self.settings, self.access, self.stop = settings, access, stop
        cache_dir = pathlib.Path(settings.statedir) / "cache"
        self.indexes = DiskIndexes(cache_dir)
        self.replicas = ReplicaHandles(cache_dir)
        self.tally = FrontTally()
        self.pass_on: PassOn | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # (no WebSocket endpoint for clients)
            await send({"type": "websocket.close"})
            return
        answer = None
        if scope["method"] == "GET":
            try:
                answer = await self._own_answer(scope)
            except Exception as e:  # noqa: BLE001 - anything odd: the owner answers it
                log.debug("passing on %s: %s", scope["path"], e)
        if answer is None:
            assert self.pass_on is not None
            if scope["path"] in FIGURES:  # (so that they include this front's, to the last)
                await self.tally.report(self.pass_on.client, self.settings.owner_url,
                                        self.settings.secret, self.settings.name)
            await self.pass_on(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-length", str(len(answer.body)).encode())] +
                               [(k.lower().encode(), v.encode())
                                for k, v in answer.headers.items()]})
        await send({"type": "http.response.body", "body": answer.body})
        self.tally.answered("GET", answer.route, answer.status, answer.root, answer.chunks,
                            len(answer.body) if answer.counts_bytes else 0, answer.replica)

    # -- answers of its own ---------------------------------------------------------------
    async def _own_answer(self, scope: Scope) -> Answer | None:
        parts = scope["path"].split("/", 4)  # "", "api", KIND, ROOT[, PATH]
        if len(parts) < 4 or parts[1] != "api":
            return None
        kind, root = parts[2], parts[3]
        query = urllib.parse.parse_qs(scope["query_string"].decode("latin-1"),
                                      keep_blank_values=True)
        if not self._may_answer(root):
            return None
        if kind == "fetch" and len(parts) == 5 and not _ranged(scope):
            return await self._fetch(root, parts[4], query)
        if kind == "info" and len(parts) == 5 and not query:
            return await asyncio.to_thread(self._info, root, parts[4])
        if kind == "list" and len(parts) == 4 and not query:
            return await asyncio.to_thread(self._list, root)
        return None

    def _may_answer(self, root: str) -> bool:
        """Whether a read of ``root`` needs nothing but the cache on disk."""
        state = self.tally.current_state()
        if state is None or not state.broker_connected or root not in state.subscribed:
            return False
        try:
            paths.check_root_name(root)
        except ValueError:
            return False
        return self.access.may("read", root)

    def _entry(self, root: str, path: str) -> DatasetEntry | None:
        try:
            paths.check_relpath(path)
        except ValueError:
            return None
        return self.indexes.entry(root, path)

    async def _fetch(self, root: str, path: str, query: dict[str, list[str]]
                     ) -> Answer | None:
        """A whole answer of ``/api/fetch`` from held, checked chunks (else None)."""
        if set(query) - {"slice_", "buffer", "prefer_schunk"} or \
                any(len(v) != 1 for v in query.values()):
            return None  # (chunk streams, fields, repeated or unknown parameters: the owner)
        buffer = _flag(query.get("buffer", ["false"])[0])
        prefer_schunk = _flag(query["prefer_schunk"][0]) if "prefer_schunk" in query else None
        if buffer is None or ("prefer_schunk" in query and prefer_schunk is None):
            return None
        entry = self._entry(root, path)
        if entry is None or entry.meta is None:
            return None
        meta = entry.meta
        try:
            selection = plan_selection(meta, query.get("slice_", [None])[0])
        except HTTPException:
            return None
        headers = {"content-type": "application/octet-stream"}
        if isinstance(meta, ArrayMeta):
            headers[wire.LAYOUT_HEADER] = wire.layout(meta.shape, meta.dtype, meta.chunks,
                                                      meta.blocks)
        if buffer and (math.prod(selection.plan.result_shape) * meta.schunk.typesize
                       > wire.MAX_BUFFER_BYTES):
            return None
        read = functools.partial(self.replicas.answer, root, path, entry, selection.nchunks,
                                 encoder(meta, selection.plan, buffer,
                                         compat.bytes_encoder(buffer, prefer_schunk)))
        region_bytes = math.prod(r.stop - r.start for r in selection.plan.region) \
            * meta.schunk.typesize
        # Small reads inside one chunk are answered here, as a hop to a thread would cost
        # about as much as the read (a 10x10 read: 0.2 ms); others go to a thread.
        small = region_bytes <= INLINE_READ_BYTES and len(selection.nchunks) <= 1
        body = read() if small else await asyncio.to_thread(read)
        if body is None:
            return None
        return Answer(200, headers, body, FETCH_ROUTE, root, len(selection.nchunks),
                      (root, path, entry.version), counts_bytes=True)

    def _info(self, root: str, path: str) -> Answer | None:
        entry = self._entry(root, path)
        if entry is None or entry.meta is None:
            return None
        return _json_answer(user_info(entry.meta), INFO_ROUTE)

    def _list(self, root: str) -> Answer | None:
        index = self.indexes.index(root)
        return None if index is None else _json_answer(sorted(index), LIST_ROUTE)

    # -- life -----------------------------------------------------------------------------
    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await receive()  # (startup)
        s = self.settings
        async with httpx.AsyncClient(limits=OWNER_LIMITS, timeout=OWNER_TIMEOUT,
                                     verify=False) as client:
            # (verify=False: the owner is this subscriber's own process on loopback; its
            # certificate names the public host, and the secret authenticates the link)
            self.pass_on = PassOn(s.owner_url, client, s.name)
            await self.tally.report(client, s.owner_url, s.secret, s.name)
            task = asyncio.create_task(self._keep_in_touch(client))
            await send({"type": "lifespan.startup.complete"})
            await receive()  # (shutdown)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.tally.report(client, s.owner_url, s.secret, s.name)  # (the last figures)
            self.replicas.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def _keep_in_touch(self, client: httpx.AsyncClient) -> None:
        """Report to the owner, and close handles of replicas that changed, twice a second;
        stop when the owner is gone."""
        s = self.settings
        while True:
            await asyncio.sleep(REPORT_INTERVAL_S)
            if os.getppid() != s.owner_pid:
                log.warning("%s: the subscriber's main worker is gone; stopping", s.name)
                self.stop()
                return
            try:
                await self.tally.report(client, s.owner_url, s.secret, s.name)
                await asyncio.to_thread(self.replicas.prune)
            except Exception:  # (a bug: said, and the front goes on)
                log.exception("%s: keeping in touch with the main worker failed", s.name)


def _ranged(scope: Scope) -> bool:
    """Whether a request asks for part of the answer (the owner says how it takes that)."""
    return any(name == b"range" for name, _ in scope["headers"])


def _flag(text: str) -> bool | None:
    """A boolean query parameter as FastAPI reads it; None if it is not one."""
    lowered = text.lower()
    return True if lowered in TRUE else False if lowered in FALSE else None


def _json_answer(content: Any, route: str) -> Answer:
    body = JSONResponse(content).body  # (as FastAPI encodes the owner's answer)
    return Answer(200, {"content-type": "application/json"}, bytes(body), route)


def build_front(settings: FrontSettings, stop: Callable[[], None]) -> Any:
    """A front's ASGI application: the same logins as the owner's, then :class:`FrontApp`."""
    access = Access(Users(pathlib.Path(settings.statedir)), settings.require_login,
                    AccessRules.from_config(settings.access))
    return RequireLogin(FrontApp(settings, access, stop), access=access,
                        statedir=settings.statedir)


def main() -> None:
    settings = FrontSettings(**json.loads(sys.stdin.read()))
    setup_logging(settings.loglevel)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # (not a line per request passed on)
    sock = socket.socket(fileno=settings.fd)
    server: uvicorn.Server | None = None

    def stop() -> None:
        if server is not None:
            server.should_exit = True

    server = uvicorn.Server(uvicorn.Config(
        build_front(settings, stop), http=BoundedHeads, log_level=settings.loglevel,
        access_log=False, timeout_graceful_shutdown=3, lifespan="on",
        ssl_certfile=settings.certfile, ssl_keyfile=settings.keyfile))
    keep_freed_memory()
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
