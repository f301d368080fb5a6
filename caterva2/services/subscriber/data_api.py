"""The subscriber's data endpoints: selections, chunk streams and complete files.

- ``GET /api/fetch/{root}/{path}?slice_=...``: the selection as an NDArray cframe (arrays)
  or a Blosc2-compressed buffer (bytes).  For arrays, ``&buffer=true`` asks instead for the
  selection's items in C order as one compressed buffer (the client knows shape and dtype:
  far cheaper for small reads), and ``&chunks=true`` for the stored chunks the selection
  touches, as a chunk stream (see :mod:`caterva2.wire`), for the client to decompress.
  Array answers carry the layout header (:data:`caterva2.wire.LAYOUT_HEADER`);
- ``GET /api/download/{root}/{path}``: the URL of the complete file;
- ``GET /files/{root}/{path}``: the complete dataset as a Blosc2 file (``.b2`` added for
  ordinary files).

An answer served from the cache without its dataset being checked with the source (see
:mod:`.freshness`) carries :data:`caterva2.wire.UNVERIFIED_HEADER`, as info answers do.
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import pathlib
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np
from fastapi import APIRouter, HTTPException, Response

from caterva2 import paths, slicing, wire
from caterva2.chunks import Buffer, chunks_in_items, chunks_in_region
from caterva2.models import AnyMeta, ArrayMeta
from caterva2.replica import ChunkDamaged, SparseReplica
from caterva2.services import responses
from caterva2.services.errors import disk_error_text
from caterva2.services.metrics import counted
from caterva2.services.openapi import (
    CHUNK_STREAM,
    DATA_ERRORS,
    LAYOUT,
    OCTET_STREAM,
    RANGE_REQUESTS,
    ROOT_ACCESS,
    UNVERIFIED,
    binary,
    described,
    file_answers,
)
from caterva2.services.subscriber.block_reads import read_in_blocks
from caterva2.services.subscriber.cache import Index
from caterva2.services.subscriber.chunk_fetcher import Arrivals
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.errors import Gone, Stale, Unavailable
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import (
    Found,
    complete_file,
    lookup,
    subscribed_root,
    with_chunks,
)

log = logging.getLogger("caterva2.subscriber")
router = APIRouter()
STREAM_BATCH = 8  # chunks read from a replica per thread hop
SERVICE = "the Caterva2 subscriber"


@dataclass(frozen=True)
class Selection:
    """What a selection reads: the plan (see :mod:`caterva2.slicing`) and the chunks."""

    plan: slicing.Plan
    nchunks: list[int]


def plan_selection(meta: AnyMeta, slice_: str | None) -> Selection:
    """The selection ``slice_`` of a dataset; 400 if it is malformed or does not fit."""
    try:
        key = slicing.parse_slice(slice_)
        if isinstance(meta, ArrayMeta):
            shape = tuple(meta.shape)
            plan = slicing.plan(key, shape)
            return Selection(plan, chunks_in_region(shape, meta.chunks, plan.region, plan.within))
        sc = meta.schunk
        plan = slicing.plan_bytes(key, sc.nbytes // sc.typesize)
        r = plan.region[0]
        return Selection(plan, chunks_in_items(r.start, r.stop, sc.chunkshape))
    except slicing.SelectionError as e:
        raise HTTPException(400, str(e)) from None


def array_encoder(plan: slicing.Plan, buffer: bool) -> Callable[[np.ndarray], bytes]:
    """How to answer a selection of an array from the items of its region."""
    def encode(region: np.ndarray) -> bytes:
        data = np.asarray(region)[plan.within]
        return wire.compress_items(data) if buffer else wire.encode_array(data)
    return encode


def encoder(meta: AnyMeta, plan: slicing.Plan, buffer: bool
            ) -> Callable[[SparseReplica], bytes]:
    """How to answer a selection read whole from a replica (every chunk held)."""
    if isinstance(meta, ArrayMeta):
        encode = array_encoder(plan, buffer)
        return lambda replica: encode(replica.read_array(plan.region))
    typesize = meta.schunk.typesize

    def answer_bytes(replica: SparseReplica) -> bytes:
        r = plan.region[0]
        items = np.frombuffer(replica.read_items(r.start, r.stop), dtype=f"V{typesize}")
        return wire.encode_bytes(np.ascontiguousarray(items[plan.within]).tobytes())
    return answer_bytes


@router.get("/api/fetch/{root}/{path:path}", response_class=Response, responses=binary(
    OCTET_STREAM, CHUNK_STREAM, headers=LAYOUT | UNVERIFIED,
    description="The selection: an NDArray cframe, or a Blosc2-compressed buffer (bytes; "
                "arrays with buffer=true); with chunks=true, a chunk stream")
    | DATA_ERRORS | ROOT_ACCESS)
async def fetch(root: str, path: str, sub: Sub, slice_: str | None = None,
                prefer_schunk: bool = True, chunks: bool = False,
                buffer: bool = False) -> Response:
    """A selection of a dataset (see the module's docstring for the forms of answer)."""
    found = await lookup(sub, root, path)
    meta = found.meta
    selection = plan_selection(meta, slice_)
    headers = found.headers
    if isinstance(meta, ArrayMeta):
        headers[wire.LAYOUT_HEADER] = wire.layout(meta.shape, meta.dtype, meta.chunks,
                                                  meta.blocks)
        if chunks:
            return await chunk_stream_answer(sub, found, selection.nchunks, headers)
    if buffer and (not isinstance(meta, ArrayMeta) or
                   math.prod(selection.plan.result_shape) * meta.schunk.typesize
                   > wire.MAX_BUFFER_BYTES):
        raise HTTPException(400, "buffer=true is for array selections up to "
                                 f"{wire.MAX_BUFFER_BYTES} bytes; use chunks=true")
    in_blocks = None
    if isinstance(meta, ArrayMeta):
        encode = array_encoder(selection.plan, buffer)

        async def in_blocks() -> bytes | None:
            data = await read_in_blocks(sub, found, selection.plan.region, selection.nchunks)
            return None if data is None else await asyncio.to_thread(encode, data)
    body = await whole_answer(sub, found, selection.nchunks,
                              encoder(meta, selection.plan, buffer), in_blocks)
    sub.metrics.bytes_out(root, len(body))
    return Response(body, media_type="application/octet-stream", headers=headers)


async def whole_answer(sub: Subscriber, found: Found, nchunks: list[int],
                       answer: Callable[[SparseReplica], bytes],
                       in_blocks: Callable[[], Awaitable[bytes | None]] | None = None
                       ) -> bytes:
    """``answer(replica)`` once every chunk of ``nchunks`` is cached; or, when chunks are
    missing, ``in_blocks()`` if it can answer from their blocks (see :mod:`.block_reads`)."""
    cache = sub.cache

    def cached_answer() -> bytes | None:  # a cached read costs one thread hop
        replica = cache.replica(found.root, found.path, found.entry)
        if replica.missing(nchunks):
            return None
        damaged = replica.damaged_chunks(nchunks)
        for _ in damaged:
            sub.metrics.digest_mismatch(found.root)
        if damaged:
            return None  # (they count as missing now: they are fetched again)
        sub.metrics.hit(found.root, len(nchunks))
        return answer(replica)

    try:
        body = await asyncio.to_thread(cached_answer)
        if body is None and in_blocks is not None:
            body = await in_blocks()
        if body is None:
            found, replica, _ = await with_chunks(sub, found, nchunks)
            body = await asyncio.to_thread(answer, replica)
    except RuntimeError as e:  # a damaged replica: drop it, the next read rebuilds it
        await asyncio.to_thread(cache.discard, found.root, found.path, found.entry)
        raise HTTPException(503, f"cached copy of {found.root}/{found.path} was damaged "
                                 f"({e}); it has been dropped, read again") from None
    return body


async def chunk_stream_answer(sub: Subscriber, found: Found, nchunks: list[int],
                              headers: dict[str, str]) -> Response:
    """The stored chunks of a selection, held ones first, the rest as they arrive."""
    found, replica, arrivals = await with_chunks(sub, found, nchunks, wait=False)
    sizes = None
    if arrivals is None:  # all cached: a known length spares uvicorn a copy of each chunk
        sizes = await asyncio.to_thread(replica.chunk_sizes, nchunks)
    body = counted(stream_chunks(sub, found, replica, nchunks, arrivals, sizes),
                   functools.partial(sub.metrics.bytes_out, found.root))
    return responses.chunk_stream(body, headers, sizes)


async def stream_chunks(sub: Subscriber, found: Found, replica: SparseReplica,
                        nchunks: list[int], arrivals: Arrivals | None,
                        sizes: list[int] | None) -> AsyncIterator[Buffer]:
    """Held chunks first, then each missing one as soon as it is stored (``sizes``: of
    the held chunks, if a Content-Length was sent).

    If a chunk cannot be had midway, the stream ends without it: the client checks that
    every chunk came, so a partial answer is never taken for a whole one.  The stream
    ends with an error record saying why, unless the data changed at its source (the
    client then reads again).
    """
    name = f"{found.root}/{found.path}"
    coming = arrivals.futures if arrivals is not None else {}
    held = [n for n in nchunks if n not in coming]
    announced = dict(zip(nchunks, sizes)) if sizes is not None else None
    try:
        async for piece in wire.write_records(replica.read_chunks,
                                              wire.batched(held, STREAM_BATCH),
                                              sizes=announced, digest=replica.digest):
            yield piece
        while arrivals is not None and arrivals.futures:
            arrived = await arrivals.next_stored()
            for n, forwarded in arrived.items():
                if forwarded is not None:  # sent as fetched, not read back
                    chunk = forwarded.chunk  # (checked against this digest on arrival)
                    yield wire.record_header(n, len(chunk), replica.digest(n, chunk))
                    yield chunk
                    arrivals.sent(n)
            stored = [n for n, forwarded in arrived.items() if forwarded is None]
            del arrived  # (chunks sent are let go before more are read)
            async for piece in wire.write_records(replica.read_chunks,
                                                  wire.batched(stored, STREAM_BATCH),
                                                  digest=replica.digest):
                yield piece
    except (Gone, Stale) as e:
        log.warning("answer for %s cut short: it changed at its source (%s)", name,
                    type(e).__name__)
    except wire.ChunkChanged as e:  # (the client finds chunks missing: read again)
        log.warning("answer for %s cut short: %s", name, e)
    except (Unavailable, OSError) as e:
        reason = disk_error_text(e, SERVICE) if isinstance(e, OSError) else str(e)
        log.warning("answer for %s cut short: %s", name, reason)
        yield wire.error_record(reason)
    except ChunkDamaged as e:  # (now missing: the client's next try gets it fetched again)
        sub.metrics.digest_mismatch(found.root)
        log.warning("answer for %s cut short: %s", name, e)
    except (ValueError, RuntimeError) as e:  # a damaged replica: the next read rebuilds it
        log.warning("cached copy of %s damaged (%s); dropped", name, e)
        await asyncio.to_thread(sub.cache.discard, found.root, found.path, found.entry,
                                replica)
    finally:
        if arrivals is not None:
            arrivals.close()


def files_path(root: str, path: str) -> str:
    """Where ``/files`` serves a dataset (ordinary files as their ``.b2`` SChunk)."""
    return f"{root}/{path}.b2" if paths.dataset_kind(path) == "file" else f"{root}/{path}"


@router.get("/api/download/{root}/{path:path}",
            responses=DATA_ERRORS | ROOT_ACCESS | {200: {"headers": described(UNVERIFIED)}})
async def download(root: str, path: str, sub: Sub, response: Response) -> str:
    """Fetch whatever is missing of a dataset, and say where the complete file is."""
    found, _ = await complete_file(sub, root, path)
    response.headers.update(found.headers)
    return f"{sub.settings.base_url}/files/{urllib.parse.quote(files_path(root, path))}"


@router.get("/files/{root}/{path:path}", response_class=Response, openapi_extra=RANGE_REQUESTS,
            responses=file_answers("The complete dataset as a Blosc2 file")
            | DATA_ERRORS | ROOT_ACCESS)
async def files(root: str, path: str, sub: Sub) -> Response:
    """The complete dataset as a Blosc2 file."""
    index: Index | None = None
    with contextlib.suppress(HTTPException):
        subscribed_root(sub, root)
        index = await asyncio.to_thread(sub.cache.index, root)
    index = index or {}
    if path.endswith(".b2") and path[:-3] in index and paths.dataset_kind(path[:-3]) == "file":
        path = path[:-3]
    elif path in index and paths.dataset_kind(path) == "file":
        raise HTTPException(404, f"ordinary files are served as {root}/{path}.b2")
    found, complete = await complete_file(sub, root, path, verify=True)
    name = pathlib.PurePosixPath(files_path(root, path)).name
    with contextlib.suppress(OSError):  # (gone meanwhile: the response says so)
        sub.metrics.bytes_out(root, complete.stat().st_size)
    return responses.LargeFileResponse(complete, filename=name, headers=found.headers,
                                       media_type="application/octet-stream")
