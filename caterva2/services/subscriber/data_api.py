"""The subscriber's data endpoints: selections, chunk streams and complete files.

- ``GET /api/fetch/{root}/{path}?slice_=...``: the selection as an NDArray cframe (arrays)
  or an SChunk cframe (bytes).  ``&buffer=true`` asks instead for the selection's items
  in C order as one compressed buffer (for arrays the client knows shape and dtype: far
  cheaper for small reads; bytes get the same with ``prefer_schunk``, which 0.2-era
  clients send), and ``&chunks=true`` for the stored chunks an array selection touches,
  as a chunk stream (see :mod:`caterva2.wire`), for the client to decompress.  Array
  answers carry the layout header (:data:`caterva2.wire.LAYOUT_HEADER`);
- ``GET /api/chunk/{root}/{path}?nchunk=N``: one chunk as stored;
- ``GET /api/download/{root}/{path}``: the URL of the complete file (with
  ``Accept-Encoding: blosc2``, the complete file itself);
- ``GET /files/{root}/{path}``: the complete dataset as a Blosc2 file (``.b2`` added for
  ordinary files).

Which client expects which form is told in :mod:`.compat`.

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
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, HTTPException, Query, Response

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
    ErrorBody,
    binary,
    described,
    file_answers,
)
from caterva2.services.subscriber import compat
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
NOT_RANGED = ("Byte ranges of a selection are not served (it is built for each request): "
              "a request with a Range header is refused (read /api/chunk or /files)")
CODED_FILE = "blosc2 when an ordinary file is sent as its Blosc2 frame"


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


def array_encoder(plan: slicing.Plan, buffer: bool, field: str | None = None
                  ) -> Callable[[np.ndarray], bytes]:
    """How to answer a selection of an array (of one ``field`` of its records, as an
    NDArray cframe) from the items of its region."""
    def encode(region: np.ndarray) -> bytes:
        data = np.asarray(region)[plan.within]
        if field is not None:
            return wire.encode_array(data[field])
        return wire.compress_items(data) if buffer else wire.encode_array(data)
    return encode


def encoder(meta: AnyMeta, plan: slicing.Plan, buffer: bool,
            encode_bytes: Callable[[bytes, int], bytes] = wire.encode_bytes_frame,
            field: str | None = None) -> Callable[[SparseReplica], bytes]:
    """How to answer a selection read whole from a replica (every chunk held); bytes
    with ``encode_bytes(data, typesize)`` (see :func:`.compat.bytes_encoder`)."""
    if isinstance(meta, ArrayMeta):
        encode = array_encoder(plan, buffer, field)
        return lambda replica: encode(replica.read_array(plan.region))
    typesize = meta.schunk.typesize

    def answer_bytes(replica: SparseReplica) -> bytes:
        r = plan.region[0]
        items = np.frombuffer(replica.read_items(r.start, r.stop), dtype=f"V{typesize}")
        return encode_bytes(np.ascontiguousarray(items[plan.within]).tobytes(), typesize)
    return answer_bytes


@router.get("/api/fetch/{root}/{path:path}", response_class=Response, responses=binary(
    OCTET_STREAM, CHUNK_STREAM, headers=LAYOUT | UNVERIFIED,
    description="The selection: an NDArray cframe (arrays), an SChunk cframe (bytes), or a "
                "Blosc2-compressed buffer (with buffer=true; bytes also with prefer_schunk); "
                "with chunks=true, a chunk stream; with field, that field's NDArray cframe")
    | DATA_ERRORS | ROOT_ACCESS | {416: {"model": ErrorBody, "description": NOT_RANGED}})
async def fetch(root: str, path: str, sub: Sub, slice_: str | None = None,
                prefer_schunk: bool | None = None, chunks: bool = False,
                buffer: bool = False, indices: str | None = None,
                filter_: Annotated[str | None, Query(alias="filter")] = None,
                field: str | None = None,
                range_: Annotated[str | None, Header(alias="Range")] = None) -> Response:
    """A selection of a dataset (see the module's docstring for the forms of answer)."""
    found = await lookup(sub, root, path)
    compat.refuse_unsupported(f"{root}/{path}", indices, filter_)
    compat.refuse_ranges(range_, f"{root}/{path}")
    meta = found.meta
    if field is not None:
        compat.check_field(f"{root}/{path}", meta, field, chunks)
    selection = plan_selection(meta, slice_)
    headers = found.headers
    if isinstance(meta, ArrayMeta):
        headers[wire.LAYOUT_HEADER] = wire.layout(meta.shape, meta.dtype, meta.chunks,
                                                  meta.blocks)
        if chunks:
            return await chunk_stream_answer(sub, found, selection.nchunks, headers)
    if buffer and field is None and (math.prod(selection.plan.result_shape)
                                     * meta.schunk.typesize > wire.MAX_BUFFER_BYTES):
        raise HTTPException(400, f"buffer=true is for selections up to "
                                 f"{wire.MAX_BUFFER_BYTES} bytes; use chunks=true (arrays)")
    in_blocks = None
    if isinstance(meta, ArrayMeta):
        encode = array_encoder(selection.plan, buffer, field)

        async def in_blocks() -> bytes | None:
            data = await read_in_blocks(sub, found, selection.plan.region, selection.nchunks)
            return None if data is None else await asyncio.to_thread(encode, data)
    body = await whole_answer(sub, found, selection.nchunks,
                              encoder(meta, selection.plan, buffer,
                                      compat.bytes_encoder(buffer, prefer_schunk), field),
                              in_blocks)
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


@router.get("/api/chunk/{root}/{path:path}", response_class=Response, responses=binary(
    OCTET_STREAM, headers=UNVERIFIED,
    description="The chunk exactly as stored: one Blosc2 chunk (blosc2.decompress reads it)")
    | DATA_ERRORS | ROOT_ACCESS)
async def chunk(root: str, path: str, nchunk: int, sub: Sub) -> Response:
    """One chunk of a dataset as stored at its source, numbered as its SChunk numbers them
    (what Blosc2's ``C2Array.get_chunk`` and the upstream client's ``get_chunk`` read)."""
    found = await lookup(sub, root, path)
    total = found.meta.schunk.nchunks
    if not 0 <= nchunk < total:  # (a chunk that is not there, as a dataset that is not)
        raise HTTPException(404, f"no chunk {nchunk} in {root}/{path}: it has {total} "
                                 f"chunks" + (f", 0..{total - 1}" if total else ""))
    try:
        body = await whole_answer(sub, found, [nchunk],
                                  lambda replica: replica.read_chunks([nchunk])[0])
    except ChunkDamaged:  # (damaged since it was checked: it is fetched again next time)
        sub.metrics.digest_mismatch(root)
        raise HTTPException(503, f"chunk {nchunk} of {root}/{path} was damaged in the "
                                 "cache; read it again") from None
    sub.metrics.bytes_out(root, len(body))
    return Response(body, media_type=OCTET_STREAM, headers=found.headers)


@router.get("/api/download/{root}/{path:path}", response_model=str, responses={200: {
    "description": "The URL of the complete file at /files (JSON); with Accept-Encoding: "
                   "blosc2, the complete dataset itself (see the route's description)",
    "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
    "headers": described(UNVERIFIED | {"Content-Encoding": CODED_FILE})}}
    | DATA_ERRORS | ROOT_ACCESS)
async def download(root: str, path: str, sub: Sub, response: Response,
                   accept_encoding: Annotated[str | None, Header()] = None) -> Any:
    """Fetch whatever is missing of a dataset, and say where the complete file is.

    Clients that send ``Accept-Encoding: blosc2`` (the upstream client of the 2026
    releases) get the complete dataset itself instead: its Blosc2 file, and an ordinary
    file as its Blosc2 frame marked ``Content-Encoding: blosc2`` (the client unpacks it).
    """
    if compat.accepts_blosc2(accept_encoding):
        return await file_answer(sub, root, path, coded=True)
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
    return await file_answer(sub, root, path)


async def file_answer(sub: Subscriber, root: str, path: str,
                      coded: bool = False) -> responses.LargeFileResponse:
    """The complete dataset's Blosc2 file, every chunk checked; an ordinary file's is named
    ``NAME.b2``, or, ``coded``, ``NAME`` with ``Content-Encoding: blosc2``."""
    found, complete = await complete_file(sub, root, path, verify=True)
    headers = found.headers
    name = pathlib.PurePosixPath(files_path(root, path)).name
    if coded and paths.dataset_kind(path) == "file":
        name, headers = pathlib.PurePosixPath(path).name, {
            **headers, "Content-Encoding": compat.BLOSC2_CODING}
    with contextlib.suppress(OSError):  # (gone meanwhile: the response says so)
        sub.metrics.bytes_out(root, complete.stat().st_size)
    return responses.LargeFileResponse(complete, filename=name, headers=headers,
                                       media_type="application/octet-stream")
