"""Small reads inside big chunks, answered from the blocks they touch.

A selection of an array (``/api/fetch``) that touches chunks not cached asks, of each, how
much it needs: if the read touches at most half of a chunk's blocks (and the chunk is big
enough for the saving to pay for a round trip), only those blocks are fetched (see
:mod:`.block_fetcher`) and the answer is decoded from them; chunks it needs most of are
fetched whole, as any other read does.  Later reads of the same blocks move nothing; a
read that needs the whole chunk moves only the blocks still missing.
"""
from __future__ import annotations

import asyncio

import numpy as np
from fastapi import HTTPException

from caterva2 import metadata, wire
from caterva2.blocks import blocks_per_chunk, blocks_touched, local_region
from caterva2.chunks import chunk_slices
from caterva2.models import ArrayMeta
from caterva2.partial_chunks import NotHeldInPart, PiecesDamaged, read_region
from caterva2.replica import ChunkDamaged, SparseReplica
from caterva2.services.subscriber.errors import Gone, Stale, Unavailable
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import Found, with_chunks

MIN_SPLIT_BYTES = 256 << 10  # chunks smaller than this (uncompressed) always move whole
MAX_BLOCK_SHARE = 0.5  # a read touching more of a chunk's blocks fetches the whole chunk
MAX_LIST_CHARS = 2000  # blocks scattered so that naming them takes more: the whole chunk
PARALLEL_CHUNKS = 4  # block requests in flight per read

Region = tuple[slice, ...]


def blocks_wanted(meta: ArrayMeta, region: Region, nchunks: list[int]) -> dict[int, list[int]]:
    """For each of ``nchunks`` of which ``region`` needs a small part: the blocks it touches
    (chunks not listed are needed whole)."""
    chunks, blocks = tuple(meta.chunks), tuple(meta.blocks)
    total = blocks_per_chunk(chunks, blocks)
    if meta.chunksize < MIN_SPLIT_BYTES or total < 2:
        return {}
    wanted = {}
    for n in nchunks:
        local = local_region(n, meta.shape, chunks, region)
        if local is not None:
            touched = blocks_touched(chunks, blocks, local)
            if (len(touched) <= total * MAX_BLOCK_SHARE
                    and len(wire.format_chunk_list(touched)) <= MAX_LIST_CHARS):
                wanted[n] = touched
    return wanted


async def read_in_blocks(sub: Subscriber, found: Found, region: Region,
                         nchunks: list[int]) -> np.ndarray | None:
    """The items of ``region`` (which touches ``nchunks``), moving only the blocks it needs
    of the chunks it needs a small part of; None if there is no such chunk missing, or if
    the data changed meanwhile (read it the usual way then)."""
    meta = found.meta
    if not isinstance(meta, ArrayMeta):
        return None
    wanted = blocks_wanted(meta, region, nchunks)
    if not wanted:
        return None
    replica = await asyncio.to_thread(sub.cache.replica, found.root, found.path, found.entry)
    missing = await asyncio.to_thread(replica.missing, nchunks)
    wanted = {n: blocks for n, blocks in wanted.items() if n in missing}
    if not wanted:
        return None
    sub.metrics.hit(found.root, len(nchunks) - len(missing))
    sub.metrics.miss(found.root, len(missing))
    try:
        whole = [n for n in missing if n not in wanted]
        if whole:
            now, _, _ = await with_chunks(sub, found, whole)
            if now.entry.version != found.entry.version:
                return None
        await _fetch_blocks(sub, found, replica, wanted)
        return await asyncio.to_thread(_compose, replica, meta, region, nchunks, wanted)
    except PiecesDamaged:  # (forgotten: the usual read fetches them again)
        sub.metrics.digest_mismatch(found.root)
        return None
    # (changed, evicted, or completed and its blocks dropped by another reader meanwhile)
    except (Stale, Gone, ChunkDamaged, FileNotFoundError, NotHeldInPart):
        return None
    except Unavailable as e:
        raise HTTPException(504 if e.timeout else 503, str(e)) from None


async def _fetch_blocks(sub: Subscriber, found: Found, replica: SparseReplica,
                        wanted: dict[int, list[int]]) -> None:
    """Fetch the ``wanted`` blocks of each chunk, a few chunks at a time."""
    room = asyncio.Semaphore(PARALLEL_CHUNKS)

    async def fetch(n: int) -> None:
        async with room:
            await sub.fetcher.blocks.fetch(found.root, found.path, found.entry, replica, n,
                                           wanted[n])

    await asyncio.gather(*(fetch(n) for n in wanted))


def _compose(replica: SparseReplica, meta: ArrayMeta, region: Region, nchunks: list[int],
             in_part: dict[int, list[int]]) -> np.ndarray:
    """The items of ``region`` read chunk by chunk: from the replica where the chunk is held
    whole, else from the blocks held of it (each checked against its digest first)."""
    shape, chunks = meta.shape, tuple(meta.chunks)
    out = np.empty([r.stop - r.start for r in region], metadata.dtype_from_descr(meta.dtype_descr))
    held = set(nchunks) - set(replica.missing(nchunks))
    if replica.damaged_chunks(sorted(held)):
        raise ChunkDamaged(-1, replica.file)  # (now missing: the usual read fetches them)
    for n in nchunks:
        local = local_region(n, shape, chunks, region)
        if local is None:
            continue
        start = [s.start for s in chunk_slices(n, shape, chunks)]
        where = tuple(slice(c + lo.start - r.start, c + lo.stop - r.start)
                      for c, lo, r in zip(start, local, region))
        if n in held:
            out[where] = replica.read_array(tuple(slice(c + lo.start, c + lo.stop)
                                                  for c, lo in zip(start, local)))
        else:
            chunk = replica.partial.assembled(n, in_part[n])
            out[where] = read_region(chunk, chunks, tuple(meta.blocks), out.dtype, local)
    return out
