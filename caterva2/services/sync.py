"""How a subscriber keeps up with the broker and publishers, and moves chunks.

:class:`Follower` holds the subscriber's view of the world (known roots, subscriptions,
the cache) and does all network work: it listens to the broker's events, re-synchronises
roots after any gap, and fetches missing chunks from publishers, never the same chunk
twice.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import urllib.parse
from typing import Any

import blosc2
import httpx
import websockets
from pydantic import TypeAdapter, ValidationError

from caterva2 import http_data, wire
from caterva2.models import (
    ChangeEvent,
    DatasetEntry,
    Event,
    RootEvent,
    RootIndex,
    RootInfo,
    unreadable_entry,
    valid_roots,
)
from caterva2.services import common
from caterva2.services.cache import Cache, Replica

log = logging.getLogger("caterva2.subscriber")
PARALLEL_STREAMS = 4  # chunk requests in flight per fetch
MIN_CHUNKS_PER_STREAM = 2
UPSTREAM_TIMEOUT = (3, 30)  # seconds to connect to a publisher, and to wait for its data
GONE_GRACE_S = 0.5  # a dataset missing at its publisher for this long is taken as deleted
FORWARD_LIMIT = 32 << 20  # bytes of fetched chunks held for answers yet to send them


class Unavailable(Exception):
    """The data is not cached and its publisher cannot provide it now (→ 503/504)."""

    def __init__(self, message: str, timeout: bool = False):
        super().__init__(message)
        self.timeout = timeout


class Gone(Exception):
    """The dataset no longer exists at its publisher (→ 404)."""


class Stale(Exception):
    """The dataset changed at the publisher while we were fetching it."""


class Forwarded:
    """A chunk just fetched (and stored), handed to the answers streaming it so that they
    need not read it back from the cache.  While it lives it counts against its follower's
    FORWARD_LIMIT, which bounds the memory that clients slower than the publisher can hold.
    """

    def __init__(self, chunk: memoryview, follower: Follower):
        self.chunk, self._follower = chunk, follower
        follower.forwarded_bytes += len(chunk)

    def __del__(self) -> None:
        self._follower.forwarded_bytes -= len(self.chunk)


def chunk_list(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``: compact chunk lists for URLs."""
    parts, start, prev = [], None, None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
            start = prev = n
    if start is not None:
        parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


class Follower:
    """A subscriber's state and its conversations with the broker and publishers."""

    def __init__(self, broker: str, statedir: pathlib.Path, client: httpx.AsyncClient):
        self.broker, self.client = broker, client
        self.cache = Cache(statedir / "cache")
        self.subs_file = statedir / "subscriptions.json"
        self.subscribed: dict[str, RootInfo] = valid_roots(common.read_json(self.subs_file, {}))
        self.roots: dict[str, RootInfo] = dict(self.subscribed)
        self.inflight: dict[tuple, asyncio.Future] = {}
        self.checking: dict[tuple, list[set[int]]] = {}  # see request_chunks
        self.forwarding: set[tuple] = set()  # chunks in flight that an answer streams
        self.forwarded_bytes = 0  # held by Forwarded chunks
        self.tasks: set[asyncio.Task] = set()
        self.connected = asyncio.Event()
        self.publisher_connections = http_data.ConnectionPool()  # chunk streams (in threads)

    # -- broker -----------------------------------------------------------------------
    async def refresh_roots(self) -> None:
        """Ask the broker for every root (raises httpx.HTTPError if it is down)."""
        r = await self.client.get(f"http://{self.broker}/api/roots")
        r.raise_for_status()
        for name, info in valid_roots(r.json()).items():
            self.roots[name] = info
            if name in self.subscribed and self.subscribed[name] != self.roots[name]:
                self.subscribed[name] = self.roots[name]
                await self._save_subscriptions()

    async def follow_broker(self) -> None:
        """Listen to the broker's events forever, reconnecting with backoff.

        After every (re)connection, roots and subscribed roots are re-synchronised, so
        whatever happened while we were not listening is caught up.
        """
        delay = 0.1
        url = f"ws://{self.broker}/api/events"
        events = TypeAdapter(Event)
        while True:
            try:
                async with websockets.connect(url, open_timeout=5, max_size=None) as ws:
                    await self.refresh_roots()
                    for name in list(self.subscribed):
                        await self.resync(name, quiet=True)
                    self.connected.set()
                    delay = 0.1
                    async for message in ws:
                        try:
                            await self.handle(events.validate_json(message))
                        except ValidationError as e:
                            log.warning("ignoring malformed event: %s", e)
            except (OSError, websockets.WebSocketException, httpx.HTTPError,
                    asyncio.TimeoutError) as e:
                log.warning("broker %s: %s; reconnecting in %.1fs", self.broker, e, delay)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)

    async def handle(self, event: RootEvent | ChangeEvent) -> None:
        if isinstance(event, RootEvent):
            info = event.root
            moved = self.roots.get(info.name) != info
            self.roots[info.name] = info
            if info.name in self.subscribed:
                if moved:
                    self.subscribed[info.name] = info
                    await self._save_subscriptions()
                await self.resync(info.name, quiet=True)  # its publisher (re)started
            return
        if event.root not in self.subscribed:
            return
        index = await asyncio.to_thread(self.cache.index, event.root) or {}
        wanted = {p: v for p, v in event.changed.items()
                  if index.get(p, {}).get("version") != v}
        entries = await asyncio.gather(*(self._changed_entry(event.root, p, v)
                                         for p, v in wanted.items()))
        await asyncio.to_thread(self.cache.update, event.root, dict(zip(wanted, entries)),
                                list(event.deleted))

    # -- roots ------------------------------------------------------------------------
    def publisher(self, root: str) -> str:
        info = self.subscribed.get(root) or self.roots.get(root)
        return info.http

    async def subscribe(self, root: str) -> None:
        """Follow ``root``: fetch its index (metadata only, no data)."""
        if root not in self.roots:
            try:
                await self.refresh_roots()
            except httpx.HTTPError as e:
                raise Unavailable(f"root {root!r} is not known here and the broker at "
                                  f"{self.broker} is unreachable ({type(e).__name__})") from None
        if root not in self.roots:
            raise KeyError(root)
        if root not in self.subscribed or await asyncio.to_thread(self.cache.index, root) is None:
            await self.resync(root)
        if root not in self.subscribed:
            self.subscribed[root] = self.roots[root]
            await self._save_subscriptions()

    async def resync(self, root: str, quiet: bool = False) -> None:
        """Bring a root's index up to date with its publisher."""
        url = f"http://{self.roots[root].http}/api/index"
        try:
            r = await self.client.get(url)
            r.raise_for_status()
            index = await asyncio.to_thread(
                lambda: RootIndex.model_validate_json(r.content).model_dump()["datasets"])
        except (httpx.HTTPError, ValidationError) as e:
            if quiet:
                log.warning("cannot resync %s from %s: %s", root, url, e)
                return
            raise Unavailable(f"publisher of root {root!r} at {self.roots[root].http} "
                              f"is unreachable: {type(e).__name__}") from None
        await asyncio.to_thread(self.cache.set_index, root, index)

    async def _save_subscriptions(self) -> None:
        data = {n: i.model_dump() for n, i in self.subscribed.items()}
        await asyncio.to_thread(common.atomic_write, self.subs_file, json.dumps(data))

    async def _changed_entry(self, root: str, path: str, version: str) -> dict[str, Any]:
        """The entry of a dataset announced as changed; without metadata if it cannot be had
        now (reads ask its publisher again).  Missing now is not deleted: a file rewritten
        in place is missing for a moment, and publishers announce real deletions."""
        try:
            return await self.fetch_entry(root, path)
        except Gone:
            return unreadable_entry(version, "missing at its source (being rewritten?)")
        except Unavailable as e:
            return unreadable_entry(version, str(e))

    async def current_entry(self, root: str, path: str) -> dict[str, Any]:
        """:meth:`fetch_entry`, asked again for up to GONE_GRACE_S while the publisher says
        the dataset is gone: a file rewritten in place is missing for a moment (Blosc2's
        ``mode="w"`` removes it first), and publishers announce deletions only after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_GRACE_S
        while True:
            try:
                return await self.fetch_entry(root, path)
            except Gone:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(GONE_GRACE_S / 10)

    async def fetch_entry(self, root: str, path: str) -> dict[str, Any]:
        url = f"http://{self.publisher(root)}/api/info/{urllib.parse.quote(path)}"
        try:
            r = await self.client.get(url)
        except httpx.HTTPError as e:
            raise Unavailable(f"publisher of {root!r} unreachable: {type(e).__name__}") from None
        if r.status_code == 404:
            raise Gone(path)
        if r.status_code != 200:
            raise Unavailable(f"publisher of {root!r} answered {r.status_code} for {path}")
        return DatasetEntry.model_validate_json(r.content).model_dump()

    # -- chunks -----------------------------------------------------------------------
    async def request_chunks(self, root: str, path: str, entry: dict[str, Any],
                             nchunks: list[int], forward: bool = False
                             ) -> tuple[Replica, dict[int, asyncio.Future]]:
        """The replica of ``entry``'s version, and a future for each of ``nchunks`` it does
        not hold yet, done when that chunk is stored (or failed with Unavailable, Gone or
        Stale).  Missing chunks are fetched in the background, none twice.

        With ``forward`` (for answers that stream the chunks), a future's result may be the
        chunk itself, as a :class:`Forwarded`, while FORWARD_LIMIT allows; else it is None.
        """
        replica = await asyncio.to_thread(self.cache.replica, root, path, entry)
        # A chunk stored while ``missing`` looks in its thread has left ``inflight`` and may
        # be reported missing: it is noted here (by _settle), so it is not fetched again.
        version = entry["version"]
        stored_meanwhile: set[int] = set()
        checks = self.checking.setdefault((root, path, version), [])
        checks.append(stored_meanwhile)
        try:
            missing = await asyncio.to_thread(replica.missing, nchunks)
        finally:
            checks[:] = [c for c in checks if c is not stored_meanwhile]
            if not checks:
                del self.checking[(root, path, version)]
        loop = asyncio.get_running_loop()
        own, arrivals = [], {}
        for n in missing:
            if n in stored_meanwhile:
                continue
            key = (root, path, version, n)
            if key not in self.inflight:
                self.inflight[key] = loop.create_future()
                own.append(n)
            if forward:
                self.forwarding.add(key)
            arrivals[n] = self.inflight[key]
        if own:
            size = max(MIN_CHUNKS_PER_STREAM, -(-len(own) // PARALLEL_STREAMS))
            for i in range(0, len(own), size):
                task = asyncio.create_task(
                    self._download(root, path, entry, replica, own[i:i + size]))
                self.tasks.add(task)  # (failures reach the chunks' futures)
                task.add_done_callback(self._task_done)
        return replica, arrivals

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its chunks' futures carry it

    async def _download(self, root: str, path: str, entry: dict[str, Any], replica: Replica,
                        group: list[int]) -> None:
        """Stream ``group`` of chunks from the publisher into the replica.

        The stream is read and stored in a worker thread with :mod:`caterva2.http_data` (several
        times faster than an async HTTP client for bulk data); each stored chunk settles its
        future on the event loop at once, so answers can go out while the rest arrive.
        """
        version = entry["version"]
        pending = {n: self.inflight[(root, path, version, n)] for n in group}
        pub = self.publisher(root)
        url = f"http://{pub}/api/chunks/{urllib.parse.quote(path)}"
        params = {"nchunks": chunk_list(group), "version": version}
        max_length = entry["meta"]["schunk"]["chunksize"] + blosc2.MAX_OVERHEAD
        loop = asyncio.get_running_loop()

        def stored(n: int, chunk: memoryview | None) -> None:
            if n in pending:
                self._settle(root, path, version, n, pending.pop(n), chunk)

        kept: set[int] = set()

        def keep(n: int) -> bool:  # (in the worker thread: the byte count may lag a little)
            if (root, path, version, n) in self.forwarding and \
                    self.forwarded_bytes < FORWARD_LIMIT:
                kept.add(n)
                return True
            return False

        def store(n: int, chunk) -> None:
            try:
                replica.store(n, chunk)
            except (RuntimeError, OSError) as e:
                if replica.write_error is not None:  # another stream's write failed first
                    raise replica.write_error from None
                if not replica.file.exists():  # dropped meanwhile: a newer version came
                    raise Stale(path) from None
                if isinstance(e, OSError):  # full, over quota...: the client is told
                    replica.write_error = e
                self.cache.discard(root, path, entry)  # a failed write damages a replica
                raise replica.write_error or Stale(path)  # (Stale: a new replica is started)

        def fetch() -> None:  # in a worker thread
            asked = set(group)
            with self.publisher_connections.get(url, params, timeout=UPSTREAM_TIMEOUT) as r:
                if r.status in (412, 503):  # changed, or being rewritten: not our version
                    raise Stale(path)
                if r.status == 404:
                    raise Gone(path)
                if r.status != 200:
                    raise Unavailable(f"publisher of {root!r} answered {r.status}: "
                                      f"{r.read()[:200].decode(errors='replace')}")
                for n, chunk in http_data.records(r, max_length, keep):
                    if n not in asked:
                        raise Unavailable(f"publisher sent chunk {n}, not asked for")
                    asked.discard(n)
                    store(n, chunk)  # (stored before records reuses its buffer)
                    loop.call_soon_threadsafe(stored, n, chunk if n in kept else None)

        try:
            try:
                await asyncio.to_thread(fetch)
            except (httpx.ReadError, httpx.RemoteProtocolError, wire.AnswerCut):
                if len(pending) == len(group):
                    raise  # nothing came: the publisher is unreachable (below)
                # Cut short after some chunks: what a publisher does when the file changes
                # (if it died instead, the retry that Stale brings finds that out).
            if pending:
                raise Stale(path)  # the publisher cut the stream: the file changed
        except httpx.TimeoutException:
            error: Exception = Unavailable(f"publisher of {root!r} at {pub} timed out",
                                           timeout=True)
            self._fail(root, path, version, pending, error)
            raise error from None
        except httpx.HTTPError as e:
            error = Unavailable(f"publisher of {root!r} at {pub} is unreachable "
                                f"({type(e).__name__}) and the data is not cached")
            self._fail(root, path, version, pending, error)
            raise error from None
        except BaseException as e:
            self._fail(root, path, version, pending, e)
            raise

    def _settle(self, root, path, version, n, future, chunk: memoryview | None) -> None:
        self.inflight.pop((root, path, version, n), None)
        self.forwarding.discard((root, path, version, n))
        for stored_meanwhile in self.checking.get((root, path, version), ()):
            stored_meanwhile.add(n)
        if not future.done():
            future.set_result(None if chunk is None else Forwarded(chunk, self))

    def _fail(self, root, path, version, pending, error) -> None:
        for n, future in pending.items():
            self.inflight.pop((root, path, version, n), None)
            self.forwarding.discard((root, path, version, n))
            if not future.done():
                future.set_exception(error)
                future.add_done_callback(lambda f: f.exception())  # retrieved: no warning
