"""Fetching missing chunks from publishers into the cache, each chunk once.

A read asks :meth:`ChunkFetcher.request_chunks` for the chunks it touches and gets
:class:`Arrivals`: a future for each chunk not held yet, done once that chunk is stored.
Chunks are fetched in a few parallel chunk streams (see :mod:`caterva2.wire`), read and
stored in worker threads with the standard library's HTTP client (several times faster than
an async client for bulk data); concurrent reads of the same chunk share one fetch.

An answer that streams chunks to its client (``forward``) receives each chunk as fetched,
as a :class:`Forwarded`, instead of reading it back from the cache; the bytes so held
count against FORWARD_LIMIT, which bounds what clients slower than the publisher can make
the subscriber hold.  Each such answer lets go of every chunk explicitly (sent or not).
"""
from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import blosc2
import httpx
import numpy as np

from caterva2 import http_data, tls, wire
from caterva2.models import DatasetEntry
from caterva2.replica import ReplicaGone, SparseReplica
from caterva2.services.errors import CacheTooSmall
from caterva2.services.metrics import SubscriberMetrics
from caterva2.services.subscriber.block_fetcher import BlockFetcher
from caterva2.services.subscriber.cache import Cache
from caterva2.services.subscriber.errors import (
    Stale,
    Unavailable,
    check_publisher_answer,
)
from caterva2.services.subscriber.registry import RootRegistry
from caterva2.services.subscriber.single_flight import SingleFlight

log = logging.getLogger("caterva2.subscriber")
PARALLEL_STREAMS = 4  # chunk requests in flight per fetch
MIN_CHUNKS_PER_STREAM = 2
UPSTREAM_TIMEOUT = (3, 30)  # seconds to connect to a publisher, and to wait for its data
FORWARD_LIMIT = 32 << 20  # bytes of fetched chunks held for answers yet to send them
DIGEST_ATTEMPTS = 2  # streams tried for chunks that arrive not matching their digests

ChunkKey = tuple[str, str, str, int]  # root, path, version, chunk number


class ForwardBudget:
    """Bytes of fetched chunks held for answers that have yet to send them."""

    def __init__(self, limit: int = FORWARD_LIMIT):
        self.limit, self.held = limit, 0

    def has_room(self) -> bool:
        return self.held < self.limit


class Forwarded:
    """A chunk just fetched (and stored), handed to the ``holders`` answers streaming it.

    Each of them calls :meth:`release` once it sent the chunk or gave up; the chunk leaves
    the budget when the last one has.
    """

    def __init__(self, chunk: memoryview, budget: ForwardBudget, holders: int):
        self.chunk, self._budget, self._holders = chunk, budget, holders
        budget.held += len(chunk)

    def release(self) -> None:
        if self._holders > 0:
            self._holders -= 1
            if self._holders == 0:  # nobody will send it: its memory goes now
                self._budget.held -= len(self.chunk)
                self.chunk = memoryview(b"")


class Arrivals:
    """The chunks of one read not held yet: ``futures[n]`` is done once chunk ``n`` is
    stored (its result a Forwarded or None), or failed with Unavailable, Gone or Stale.

    A forwarding read must :meth:`close` this when its answer ends, whatever happened.
    """

    def __init__(self, fetcher: ChunkFetcher, version_key: tuple[str, str, str],
                 futures: dict[int, asyncio.Future], forward: bool):
        self._fetcher, self._version_key, self.forward = fetcher, version_key, forward
        self.futures = futures
        self._unsent: dict[int, Forwarded] = {}  # taken, not yet sent

    def __len__(self) -> int:
        return len(self.futures)

    async def all_stored(self) -> None:
        """Wait until every chunk is stored; raises the first failure."""
        for future in self.futures.values():
            await asyncio.shield(future)

    async def first_stored(self) -> None:
        """Wait until some chunk is stored; raises the failure of any that failed."""
        done, _ = await asyncio.wait(self.futures.values(), return_when=asyncio.FIRST_COMPLETED)
        for future in done:
            future.result()

    async def next_stored(self) -> dict[int, Forwarded | None]:
        """The chunks stored since the last call (at least one): each as fetched, or None
        (read it from the replica).  Raises a chunk's failure."""
        done, _ = await asyncio.wait(self.futures.values(), return_when=asyncio.FIRST_COMPLETED)
        arrived = {}
        for n in [n for n, future in self.futures.items() if future in done]:
            forwarded = self.futures.pop(n).result()
            if self.forward and forwarded is not None:
                self._unsent[n] = forwarded
            arrived[n] = forwarded
        return arrived

    def sent(self, n: int) -> None:
        """Chunk ``n`` was sent: its Forwarded copy is no longer needed here."""
        forwarded = self._unsent.pop(n, None)
        if forwarded is not None:
            forwarded.release()

    def close(self) -> None:
        """Let go of every chunk not sent (a forwarding read only)."""
        if not self.forward:
            return
        for forwarded in self._unsent.values():
            forwarded.release()
        self._unsent.clear()
        for n, future in self.futures.items():
            if not future.done():
                self._fetcher.unclaim((*self._version_key, n))
            elif not future.cancelled() and future.exception() is None:
                result = future.result()
                if result is not None:
                    result.release()
        self.futures = {}


class ChunkFetcher:
    """Moves chunks from publishers into replicas; never the same chunk twice at once."""

    def __init__(self, registry: RootRegistry, cache: Cache,
                 metrics: SubscriberMetrics | None = None):
        self.registry, self.cache = registry, cache
        self.metrics = metrics or SubscriberMetrics()
        self.budget = ForwardBudget()
        self.inflight: dict[ChunkKey, asyncio.Future] = {}
        self.checking: dict[tuple[str, str, str], list[set[int]]] = {}  # see request_chunks
        self.claims: Counter[ChunkKey] = Counter()  # forwarding answers waiting per chunk
        self.tasks: set[asyncio.Task] = set()
        self.reusing: SingleFlight[None] = SingleFlight()  # previous versions being reused
        # Kept-alive connections to publishers, for the worker threads reading chunk streams.
        self.connections = http_data.ConnectionPool(timeout=UPSTREAM_TIMEOUT,
                                                    ssl_context=tls.client_context())
        self.blocks = BlockFetcher(registry, self.connections, self.metrics)

    def close(self) -> None:
        """Close the connections to publishers (streams under way finish first)."""
        self.connections.close()

    async def request_chunks(self, root: str, path: str, entry: DatasetEntry,
                             nchunks: list[int], forward: bool = False
                             ) -> tuple[SparseReplica, Arrivals]:
        """The replica of ``entry``'s version, and the Arrivals of those of ``nchunks`` it
        does not hold yet.  Missing chunks are fetched in the background, none twice."""
        def replica_and_previous() -> tuple[SparseReplica, bool]:
            return (self.cache.replica(root, path, entry),
                    self.cache.has_previous(root, path))

        replica, has_previous = await asyncio.to_thread(replica_and_previous)
        if has_previous:
            await self.reusing.run((root, path, entry.version),
                                   lambda: self._reuse_previous(root, path, entry, replica))
        version_key = (root, path, entry.version)
        missing = await self._missing(replica, version_key, nchunks)
        self.metrics.hit(root, len(nchunks) - len(missing))
        self.metrics.miss(root, len(missing))
        loop = asyncio.get_running_loop()
        own, futures = [], {}
        for n in missing:
            key = (*version_key, n)
            if key not in self.inflight:
                self.inflight[key] = loop.create_future()
                own.append(n)
            if forward:
                self.claims[key] += 1
            futures[n] = self.inflight[key]
        in_part = [n for n in own if n in replica.partial]  # (only their other blocks move)
        own = [n for n in own if n not in replica.partial]
        size = max(MIN_CHUNKS_PER_STREAM, -(-len(own) // PARALLEL_STREAMS))
        for i in range(0, len(own), size):
            self._start(replica, self._download(root, path, entry, replica, own[i:i + size]))
        for n in in_part:
            self._start(replica, self._complete(root, path, entry, replica, n))
        return replica, Arrivals(self, version_key, futures, forward)

    def _start(self, replica: SparseReplica, download: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(download)
        self.tasks.add(task)  # (failures reach the chunks' futures)
        self.cache.hold(replica)  # never evicted while being written into
        task.add_done_callback(lambda _task: self.cache.release(replica))
        task.add_done_callback(self._task_done)

    async def _complete(self, root: str, path: str, entry: DatasetEntry,
                        replica: SparseReplica, n: int) -> None:
        """Store chunk ``n``, held in part, whole: only its missing blocks are fetched."""
        key = (root, path, entry.version, n)
        future = self.inflight[key]
        try:
            await self.blocks.complete(root, path, entry, replica, n)
        except BaseException as e:
            self._fail(root, path, entry.version, {n: future}, e)
            raise
        self._settle(key, future, None)

    async def _missing(self, replica: SparseReplica, version_key: tuple[str, str, str],
                       nchunks: list[int]) -> list[int]:
        """Which of ``nchunks`` the replica lacks and nobody is storing right now.

        A chunk stored while ``missing`` looks in its thread has left ``inflight`` and may
        be reported missing: it is noted meanwhile (by _settle), so it is not fetched again.
        """
        stored_meanwhile: set[int] = set()
        checks = self.checking.setdefault(version_key, [])
        checks.append(stored_meanwhile)
        try:
            missing = await asyncio.to_thread(replica.missing, nchunks)
        finally:
            checks[:] = [c for c in checks if c is not stored_meanwhile]
            if not checks:
                del self.checking[version_key]
        return [n for n in missing if n not in stored_meanwhile]

    async def _reuse_previous(self, root: str, path: str, entry: DatasetEntry,
                              replica: SparseReplica) -> None:
        """Copy the chunks of the previous version that did not change (their digests, asked
        of the publisher, say so) into the new version's replica."""
        assert entry.meta is not None
        nchunks = entry.meta.schunk.nchunks
        url = f"{tls.base_url(self.registry.publisher(root))}/api/digests/{urllib.parse.quote(path)}"

        def fetch_digests() -> np.ndarray | None:  # (in a worker thread)
            with self.connections.get(url, {"version": entry.version}) as r:
                body = r.read(8 * nchunks + 1)  # (never more than the dataset's digests)
                if r.status != 200 or len(body) != 8 * nchunks:
                    return None
                return np.frombuffer(body, dtype="<u8")

        try:
            digests = await asyncio.to_thread(fetch_digests)
        except httpx.HTTPError:
            return  # the publisher is out of reach: maybe on the next read
        if digests is None:  # (a root that offers no digests, or the data changed again)
            await asyncio.to_thread(self.cache.drop_previous, root, path)
            return
        kept = await asyncio.to_thread(self.cache.take_previous, root, path, replica, digests)
        log.info("%s/%s: %d of %d chunks kept from the previous version", root, path, kept,
                 nchunks)

    def unclaim(self, key: ChunkKey) -> None:
        """A forwarding answer no longer waits for this chunk."""
        self.claims[key] -= 1
        if self.claims[key] <= 0:
            del self.claims[key]

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: its chunks' futures carry it

    async def _download(self, root: str, path: str, entry: DatasetEntry,
                        replica: SparseReplica, group: list[int]) -> None:
        """Stream ``group`` of chunks from the publisher into the replica; each stored
        chunk settles its future on the event loop at once, so answers can go out while
        the rest arrive."""
        version = entry.version
        pending = {n: self.inflight[(root, path, version, n)] for n in group}
        pub = self.registry.publisher(root)
        loop = asyncio.get_running_loop()

        def stored(n: int, chunk: memoryview | None) -> None:
            if n in pending:
                self._settle((root, path, version, n), pending.pop(n), chunk)

        try:
            for attempt in range(1, DIGEST_ATTEMPTS + 1):
                try:
                    await asyncio.to_thread(
                        self._fetch_group, pub, root, path, entry, replica,
                        [n for n in group if n in pending],
                        lambda n, chunk: loop.call_soon_threadsafe(stored, n, chunk))
                except wire.DigestMismatch as e:  # (what came before it is stored)
                    self.metrics.digest_mismatch(root)
                    log.warning("%s/%s from %s: %s (attempt %d of %d)", root, path, pub, e,
                                attempt, DIGEST_ATTEMPTS)
                    if attempt < DIGEST_ATTEMPTS:
                        continue
                    raise Unavailable(f"chunks of {root}/{path} from its publisher at {pub} "
                                      f"did not match their digests {attempt} times: the "
                                      "publisher's copy or the link damages them") from None
                except (httpx.ReadError, httpx.RemoteProtocolError, wire.StreamCut,
                        wire.AnswerCut):
                    if len(pending) == len(group):
                        raise  # nothing came: the publisher is unreachable (below)
                    # Cut short after some chunks: what a publisher does when the file
                    # changes (if it died instead, the retry that Stale brings finds out).
                break
            if pending:
                raise Stale(path)  # the publisher cut the stream: the file changed
        except httpx.TimeoutException:
            error: BaseException = Unavailable(f"publisher of {root!r} at {pub} timed out",
                                               timeout=True)
            self._fail(root, path, version, pending, error)
            raise error from None
        except (httpx.HTTPError, wire.StreamCut, wire.AnswerCut) as e:
            error = Unavailable(f"publisher of {root!r} at {pub} is unreachable "
                                f"({type(e).__name__}) and the data is not cached")
            self._fail(root, path, version, pending, error)
            raise error from None
        except BaseException as e:
            self._fail(root, path, version, pending, e)
            raise

    def _fetch_group(self, pub: str, root: str, path: str, entry: DatasetEntry,
                     replica: SparseReplica, group: list[int], stored) -> None:
        """In a worker thread: one chunk stream from the publisher, stored as it comes."""
        assert entry.meta is not None
        version = entry.version
        url = f"{tls.base_url(pub)}/api/chunks/{urllib.parse.quote(path)}"
        params = {"nchunks": wire.format_chunk_list(group), "version": version}
        max_length = entry.meta.schunk.chunksize + blosc2.MAX_OVERHEAD
        kept: set[int] = set()

        def keep(n: int) -> bool:  # (the byte count may lag a little: it is a bound)
            if (root, path, version, n) in self.claims and self.budget.has_room():
                kept.add(n)
                return True
            return False

        asked = set(group)
        with self.connections.get(url, params) as r:
            check_publisher_answer(r, root, path)
            for n, chunk, digest in wire.read_digested_records(r, max_length, keep):
                if n not in asked:
                    raise Unavailable(f"publisher sent chunk {n}, not asked for")
                asked.discard(n)
                self.metrics.bytes_in(root, len(chunk))
                self._store(root, path, entry, replica, n, chunk, digest)
                stored(n, chunk if n in kept else None)

    def _store(self, root: str, path: str, entry: DatasetEntry, replica: SparseReplica,
               n: int, chunk: memoryview, digest: int) -> None:
        """Store one chunk (before the stream reader reuses its buffer).  A replica that a
        write failed to grow is dropped (a failed write damages it): the disk's error goes
        to the client; any other failure starts a new replica (Stale)."""
        try:
            replica.store(n, chunk, digest)
        except ReplicaGone:  # dropped meanwhile: a newer version came
            raise Stale(path) from None
        except CacheTooSmall:  # (refused before writing: the replica is whole)
            raise
        except OSError:
            self.cache.discard(root, path, entry, replica)
            raise
        except RuntimeError:
            self.cache.discard(root, path, entry, replica)
            raise Stale(path) from None

    def _settle(self, key: ChunkKey, future: asyncio.Future, chunk: memoryview | None) -> None:
        self.inflight.pop(key, None)
        holders = self.claims.pop(key, 0)
        for stored_meanwhile in self.checking.get(key[:3], ()):
            stored_meanwhile.add(key[3])
        if not future.done():
            future.set_result(Forwarded(chunk, self.budget, holders)
                              if chunk is not None and holders else None)

    def _fail(self, root: str, path: str, version: str, pending: dict[int, asyncio.Future],
              error: BaseException) -> None:
        for n, future in pending.items():
            key = (root, path, version, n)
            self.inflight.pop(key, None)
            self.claims.pop(key, None)
            if not future.done():
                future.set_exception(error)
                future.add_done_callback(lambda f: f.exception())  # retrieved: no warning
