"""Fetching blocks of a chunk, not the whole chunk, for reads that need a small part of it.

A read touching a few blocks of a big chunk that is not cached asks the publisher for just
those (``GET /api/blocks/PATH?nchunk=N&blocks=LIST&version=V``, see :mod:`caterva2.wire`)
and keeps them beside the replica (:mod:`caterva2.partial_chunks`); a later read of the
same blocks moves nothing, and a read that needs the whole chunk moves only the blocks
still missing, then stores the chunk, put back together and checked against its
source's digest, in the replica.

Block fetches of one chunk run one at a time (each asks only for what the one before did
not bring); they run in worker threads, on the chunk fetcher's connections.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Hashable

import blosc2
import httpx

from caterva2 import blocks, http_data, tls, wire
from caterva2.chunks import chunk_cbytes
from caterva2.models import ArrayMeta, DatasetEntry
from caterva2.partial_chunks import PiecesDamaged
from caterva2.replica import ReplicaGone, SparseReplica
from caterva2.services.metrics import SubscriberMetrics
from caterva2.services.subscriber.errors import (
    Stale,
    Unavailable,
    check_publisher_answer,
)
from caterva2.services.subscriber.registry import RootRegistry

log = logging.getLogger("caterva2.subscriber")


class BlockFetcher:
    """Moves blocks of chunks from publishers into replicas' partly held chunks."""

    def __init__(self, registry: RootRegistry, connections: http_data.ConnectionPool,
                 metrics: SubscriberMetrics):
        self.registry, self.connections, self.metrics = registry, connections, metrics
        self._locks = KeyedLocks()  # one per chunk: (replica file, chunk number)

    async def fetch(self, root: str, path: str, entry: DatasetEntry,
                    replica: SparseReplica, nchunk: int, wanted: list[int]) -> None:
        """Make sure the replica holds chunk ``nchunk``'s blocks ``wanted``, in part or in
        the whole chunk (which comes instead when its blocks cannot move alone)."""
        async with self._locks.hold((str(replica.file), nchunk)):
            missing = await asyncio.to_thread(self._missing, replica, nchunk, wanted)
            if missing:
                await self._move(root, path, entry, replica, nchunk, missing)

    async def complete(self, root: str, path: str, entry: DatasetEntry,
                       replica: SparseReplica, nchunk: int) -> None:
        """Store chunk ``nchunk`` whole in the replica, fetching only the blocks that are
        not held in part yet."""
        assert isinstance(entry.meta, ArrayMeta)
        every = list(range(blocks.blocks_per_chunk(entry.meta.chunks, entry.meta.blocks)))
        async with self._locks.hold((str(replica.file), nchunk)):
            for _ in range(2):  # (once more if the pieces held turn out damaged)
                missing = await asyncio.to_thread(self._missing, replica, nchunk, every)
                if missing is None:
                    return
                if missing:
                    await self._move(root, path, entry, replica, nchunk, missing)
                try:
                    whole = await asyncio.to_thread(replica.partial.whole, nchunk)
                except PiecesDamaged as e:
                    self.metrics.digest_mismatch(root)
                    log.warning("%s/%s: %s; fetching them again", root, path, e)
                    continue
                if whole is not None:
                    await asyncio.to_thread(replica.store, nchunk, *whole)
                    return
                if not await asyncio.to_thread(replica.missing, [nchunk]):
                    return  # (it came whole: unsplittable)
            raise Unavailable(f"chunk {nchunk} of {root}/{path} could not be put back "
                              "together from its blocks")

    @staticmethod
    def _missing(replica: SparseReplica, nchunk: int, wanted: list[int]) -> list[int] | None:
        """Blocks of ``wanted`` to fetch: None if the whole chunk is held; every one (and
        the head) if nothing of the chunk is."""
        if not replica.missing([nchunk]):
            return None
        missing = replica.partial.missing_blocks(nchunk, wanted)
        return wanted if missing is None else missing

    async def _move(self, root: str, path: str, entry: DatasetEntry,
                    replica: SparseReplica, nchunk: int, wanted: list[int]) -> None:
        """Fetch blocks ``wanted`` of the chunk into the replica;
        the failures of the publisher as Unavailable, Stale or Gone."""
        pub = self.registry.publisher(root)
        try:
            await asyncio.to_thread(self._fetch, pub, root, path, entry, replica, nchunk,
                                    wanted)
        except ReplicaGone:
            raise Stale(path) from None
        except httpx.TimeoutException:
            raise Unavailable(f"publisher of {root!r} at {pub} timed out",
                              timeout=True) from None
        except wire.DigestMismatch as e:
            self.metrics.digest_mismatch(root)
            raise Unavailable(f"blocks of {root}/{path} from its publisher at {pub} did "
                              f"not match their digests ({e})") from None
        except (httpx.HTTPError, wire.StreamCut, wire.AnswerCut) as e:
            raise Unavailable(f"publisher of {root!r} at {pub} is unreachable "
                              f"({type(e).__name__}) and the data is not cached") from None

    def _fetch(self, pub: str, root: str, path: str, entry: DatasetEntry,
               replica: SparseReplica, nchunk: int, wanted: list[int]) -> None:
        """In a worker thread: one block stream, stored as it comes."""
        assert entry.meta is not None
        url = f"{tls.base_url(pub)}/api/blocks/{urllib.parse.quote(path)}"
        params = {"nchunk": str(nchunk), "version": entry.version,
                  "blocks": wire.format_chunk_list(wanted)}
        max_length = entry.meta.schunk.chunksize + blosc2.MAX_OVERHEAD
        with self.connections.get(url, params) as r:
            check_publisher_answer(r, root, path)
            try:
                chunk_digest = int(r.getheader(wire.CHUNK_DIGEST_HEADER) or "")
            except ValueError:
                raise Unavailable(f"publisher of {root!r} sent blocks without the chunk's "
                                  "digest") from None
            for offset, piece, digest in wire.read_digested_records(r, max_length):
                self.metrics.bytes_in(root, len(piece))
                if offset == 0 and chunk_cbytes(piece) == len(piece):  # the whole chunk
                    if digest != chunk_digest:
                        raise wire.DigestMismatch(f"chunk {nchunk} is not the one announced")
                    replica.store(nchunk, piece, digest)
                else:
                    replica.store_piece(nchunk, offset, piece, digest, chunk_digest)


class KeyedLocks:
    """An asyncio lock per key, kept only while somebody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._users: Counter[Hashable] = Counter()

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] += 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
