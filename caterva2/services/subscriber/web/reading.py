"""Data for the web pages, read through the subscriber's own read path.

A page reads as any client does: the chunks a selection touches are fetched from the
publisher when missing (:func:`~caterva2.services.subscriber.reads.with_chunks`), cached
and checked against their digests, and the answer is cut from the cache.  What differs is
the result: NumPy arrays and bytes for the page to show, not an encoded answer.

Large boxes are never decoded whole: a selection whose box holds more than
:data:`MAX_BOX_BYTES` is read one index of its first long dimension at a time, so an image
of a 1 GB plane read with a step decodes only the rows it shows.
"""
from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
from fastapi import HTTPException

from caterva2 import slicing
from caterva2.chunks import chunks_in_items, chunks_in_region
from caterva2.metadata import dtype_from_descr
from caterva2.models import ArrayMeta
from caterva2.replica import SparseReplica
from caterva2.services.subscriber.cache import Holding
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import Found, with_chunks

MAX_BOX_BYTES = 64 << 20  # a box decoded at once; a larger one is read in slices
T = TypeVar("T")


async def read_array(sub: Subscriber, found: Found, key: slicing.Key) -> np.ndarray:
    """The selection ``key`` of an array dataset (SelectionError if it does not fit)."""
    meta = found.meta
    assert isinstance(meta, ArrayMeta)
    shape = tuple(meta.shape)
    plan = slicing.plan(key, shape)
    if 0 in plan.result_shape:
        return np.empty(plan.result_shape, dtype=dtype_from_descr(meta.dtype_descr))
    nchunks = chunks_in_region(shape, tuple(meta.chunks), plan.region, plan.within)
    itemsize = meta.schunk.typesize
    return await cached_read(sub, found, nchunks,
                             lambda replica: read_box(replica, plan.region, plan.within,
                                                      itemsize))


async def read_bytes(sub: Subscriber, found: Found, start: int, stop: int) -> bytes:
    """Bytes ``start:stop`` of a ``.b2frame`` or ordinary file (clipped to its size)."""
    sc = found.meta.schunk
    nitems = sc.nbytes // sc.typesize
    start, stop = min(start, nitems), min(stop, nitems)
    if stop <= start:
        return b""
    nchunks = chunks_in_items(start, stop, sc.chunkshape)
    return await cached_read(sub, found, nchunks,
                             lambda replica: bytes(replica.read_items(start, stop)))


async def holding(sub: Subscriber, found: Found) -> Holding:
    """What the cache holds of the dataset's current version."""
    return await asyncio.to_thread(sub.cache.holding, found.root, found.path, found.entry)


async def cached_read(sub: Subscriber, found: Found, nchunks: list[int],
                      read: Callable[[SparseReplica], T]) -> T:
    """``read(replica)`` once every chunk of ``nchunks`` is cached and sound (fetched if
    missing, fetched again if it fails its digest), as the REST API's reads do."""
    cache = sub.cache

    def from_cache() -> tuple[bool, T | None]:  # (a cached read costs one thread hop)
        replica = cache.replica(found.root, found.path, found.entry)
        if replica.missing(nchunks):
            return False, None
        damaged = replica.damaged_chunks(nchunks)
        for _ in damaged:
            sub.metrics.digest_mismatch(found.root)
        if damaged:  # (they count as missing now: fetched again below)
            return False, None
        sub.metrics.hit(found.root, len(nchunks))
        return True, read(replica)

    try:
        done, result = await asyncio.to_thread(from_cache)
        if done:
            return result  # type: ignore[return-value]  # (T itself may allow None)
        found, replica, _ = await with_chunks(sub, found, nchunks)
        return await asyncio.to_thread(read, replica)
    except RuntimeError as e:  # a damaged replica: drop it, the next read rebuilds it
        await asyncio.to_thread(cache.discard, found.root, found.path, found.entry)
        raise HTTPException(503, f"the cached copy of {found.root}/{found.path} was damaged "
                                 f"({e}); it has been dropped: load the page again") from None


def read_box(replica: SparseReplica, region: tuple[slice, ...], within: tuple,
             itemsize: int) -> np.ndarray:
    """``replica``'s items in ``region``, selected by ``within`` (see
    :class:`caterva2.slicing.Plan`); a box of more than :data:`MAX_BOX_BYTES` is read one
    index at a time along its first dimension longer than 1, keeping only those selected."""
    nbytes = math.prod(r.stop - r.start for r in region) * itemsize
    long_dims = [d for d, r in enumerate(region) if r.stop - r.start > 1]
    if nbytes <= MAX_BOX_BYTES or not long_dims:
        return np.asarray(np.asarray(replica.read_array(region))[within])
    d = long_dims[0]  # (within[d] is a slice: an index would make the box 1 long there)
    picked = range(region[d].start, region[d].stop)[within[d]]
    parts = [read_box(replica, region[:d] + (slice(i, i + 1),) + region[d + 1:],
                      within[:d] + (0,) + within[d + 1:], itemsize) for i in picked]
    axis = sum(isinstance(w, slice) for w in within[:d])  # (where dimension d lands)
    return np.stack(parts, axis=axis)
