"""The publisher's endpoints (listed in :mod:`caterva2.services.publisher`), as one router.

Handlers reach the root through the :class:`~.catalog.Catalog` at ``app.state.catalog``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from caterva2 import tls, wire
from caterva2.blocks import block_count, blocks_per_chunk, pieces_to_send
from caterva2.models import ArrayMeta, DatasetEntry, RootIndex
from caterva2.roots import (
    BlockPieces,
    DatasetNotFound,
    DatasetUnavailable,
    SourceUnreachable,
    VersionMismatch,
)
from caterva2.services.errors import safe_relpath
from caterva2.services.metrics import PublisherMetrics
from caterva2.services.openapi import (
    CHUNK_STREAM,
    OCTET_STREAM,
    RANGE_REQUESTS,
    binary,
    errors,
    file_answers,
    tagged,
)
from caterva2.services.responses import LargeFileResponse, block_stream, chunk_stream

from .catalog import Catalog, entry_json

log = logging.getLogger("caterva2.publisher")
READ_BATCH = 4  # chunks read per thread hop when streaming
# Passing a download on: time to connect upstream, and to wait for each piece (the
# subscriber there may first fetch what it lacks of the dataset from its own source).
DOWNLOAD_TIMEOUT = httpx.Timeout(300, connect=5)

router = APIRouter()


async def _catalog(request: Request) -> Catalog:
    # (async: a plain function would cost every request a hop to a worker thread)
    return request.app.state.catalog


CatalogDep = Annotated[Catalog, Depends(_catalog)]


def _tagged(request: Request, etag: str, body: bytes) -> Response:
    """A JSON answer with its ETag, or 304 if the client holds that version already."""
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.get("/api/root")
async def get_root(catalog: CatalogDep) -> dict[str, Any]:
    """The root's name, this publisher's id, and the root's hops to its origin (none if
    it is the origin; see :mod:`caterva2.provenance`)."""
    return {"name": catalog.name, "publisher_id": catalog.publisher_id,
            "hops": [hop.model_dump() for hop in catalog.root.hops()]}


@router.get("/api/list")
async def get_list(catalog: CatalogDep) -> list[str]:
    return sorted(await asyncio.to_thread(catalog.root.versions))


@router.get("/api/index", responses=tagged(RootIndex, "index"))
async def get_index(request: Request, catalog: CatalogDep) -> Response:
    etag, body = await asyncio.to_thread(catalog.index)
    return _tagged(request, etag, body)


@router.get("/api/info/{path:path}", responses=tagged(DatasetEntry, "dataset") | errors(400, 404))
async def get_info(path: str, request: Request, catalog: CatalogDep) -> Response:
    entry = await asyncio.to_thread(catalog.entry, safe_relpath(path))
    return _tagged(request, entry.version, entry_json(entry))


@router.get("/api/chunks/{path:path}", response_class=Response, responses=binary(
    CHUNK_STREAM, description="The chunks asked for, as stored (see caterva2.wire)",
    headers={"ETag": "The version read"}) | errors(400, 404, 412, 503))
async def get_chunks(path: str, nchunks: str, catalog: CatalogDep, request: Request,
                     version: str | None = None) -> Response:
    current, meta = await asyncio.to_thread(catalog.readable, safe_relpath(path), version)
    try:
        wanted = wire.parse_chunk_list(nchunks, meta.schunk.nchunks)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return await _stream_chunks(catalog, path, wanted, current, request.app.state.metrics)


async def _stream_chunks(catalog: Catalog, path: str, wanted: list[int],
                         version: str, metrics: PublisherMetrics) -> Response:
    """A chunk stream of chunks ``wanted`` of ``version`` of the dataset, as stored."""
    root = catalog.root
    # The first chunk alone, so that it leaves at once; then batches (fewer thread hops).
    batches = wire.batched(wanted[:1], 1) + wire.batched(wanted[1:], READ_BATCH)

    def read(batch: list[int]) -> list[bytes]:
        chunks = root.read_chunks(path, batch, version)
        metrics.chunks_served(catalog.name, chunks)
        return chunks

    def read_first() -> tuple[list[bytes], list[int] | None]:
        return read(batches[0]) if batches else [], root.chunk_sizes(path, wanted, version)

    first, sizes = await _read_or_http_error(catalog, path, version, read_first)

    async def records():
        announced = dict(zip(wanted, sizes)) if sizes is not None else None
        try:
            async for piece in wire.write_records(read, batches, first, announced):
                yield piece
        except (VersionMismatch, DatasetNotFound, DatasetUnavailable, wire.ChunkChanged):
            log.info("%s changed while streaming; stream cut short", path)
            # the reader sees fewer records than it asked for

    # With known sizes, a known length: no chunked encoding, no copy of each chunk.
    return chunk_stream(records(), {"ETag": version}, sizes)


async def _read_or_http_error(catalog: Catalog, path: str, version: str, read):
    """``read()`` in a thread; the HTTP error for a dataset changed, gone or unreadable."""
    try:
        return await asyncio.to_thread(read)
    except VersionMismatch:
        raise catalog.not_current(path, version) from None
    except DatasetNotFound:
        raise catalog.not_found(path) from None
    except SourceUnreachable as e:  # (a re-published root: 502, not "being rewritten")
        raise HTTPException(502, str(e)) from None
    except DatasetUnavailable as e:
        raise HTTPException(503, str(e)) from None


@router.get("/api/blocks/{path:path}", response_class=Response, responses=binary(
    CHUNK_STREAM, description="The chunk's head and the blocks asked for (see caterva2.wire)",
    headers={"ETag": "The version read",
             wire.CHUNK_DIGEST_HEADER: "The whole chunk's digest"})
    | errors(400, 404, 412, 503))
async def get_blocks(path: str, nchunk: int, blocks: str, catalog: CatalogDep,
                     request: Request, version: str | None = None) -> Response:
    """Blocks of one stored chunk (``blocks``: a list such as ``0-3,7``), as a block stream
    (see :mod:`caterva2.wire`): the chunk's head, then each block at its offset; the whole
    chunk if its blocks cannot move alone.  The whole chunk's digest is in
    :data:`caterva2.wire.CHUNK_DIGEST_HEADER`."""
    current, meta = await asyncio.to_thread(catalog.readable, safe_relpath(path), version)
    if not 0 <= nchunk < meta.schunk.nchunks:
        raise HTTPException(400, f"chunk numbers must be in 0..{meta.schunk.nchunks - 1}")
    if isinstance(meta, ArrayMeta) and catalog.root.reads_blocks:
        upstream, digest = await _relayed_blocks(catalog, path, nchunk, blocks, meta, current)
        request.app.state.metrics.chunks_served(catalog.name, [piece for _, piece in upstream])
        return block_stream(upstream, digest, {"ETag": current})

    def read() -> bytes:
        [chunk] = catalog.root.read_chunks(path, [nchunk], current)
        return chunk

    chunk = await _read_or_http_error(catalog, path, current, read)
    try:
        wanted = wire.parse_chunk_list(blocks, block_count(chunk), "block")
        pieces = pieces_to_send(chunk, wanted)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    request.app.state.metrics.chunks_served(catalog.name, [piece for _, piece in pieces])
    return block_stream(pieces, wire.chunk_digest(chunk), {"ETag": current})


async def _relayed_blocks(catalog: Catalog, path: str, nchunk: int, blocks: str,
                          meta: ArrayMeta, version: str) -> BlockPieces:
    """The pieces of a chunk's blocks from a root that reads blocks itself (a re-published
    root asks upstream for just those), and the whole chunk's digest."""
    try:
        wanted = wire.parse_chunk_list(blocks, blocks_per_chunk(meta.chunks, meta.blocks),
                                       "block")
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    return await _read_or_http_error(
        catalog, path, version,
        lambda: catalog.root.read_blocks(path, nchunk, wanted, version))


@router.get("/api/digests/{path:path}", response_class=Response, responses=binary(
    OCTET_STREAM, description="Each stored chunk's digest, 8 bytes little-endian",
    headers={"ETag": "The version read"}) | errors(400, 404, 412, 503))
async def get_digests(path: str, catalog: CatalogDep,
                      version: str | None = None) -> Response:
    """The digests of every stored chunk of the dataset (8 bytes each, little-endian)."""
    try:
        current, digests = await asyncio.to_thread(catalog.digests, safe_relpath(path), version)
    except DatasetNotFound:
        raise catalog.not_found(path) from None
    except SourceUnreachable as e:
        raise HTTPException(502, str(e)) from None
    except DatasetUnavailable as e:
        raise HTTPException(503, str(e)) from None
    return Response(digests, media_type="application/octet-stream", headers={"ETag": current})


@router.get("/api/download/{path:path}", response_class=Response, openapi_extra=RANGE_REQUESTS,
            responses=file_answers("The stored file (an ordinary file as its .b2 SChunk)")
            | errors(404, 502, 503, 507))
async def download(path: str, catalog: CatalogDep, request: Request) -> Response:
    await asyncio.to_thread(catalog.readable, safe_relpath(path))
    stored = await asyncio.to_thread(catalog.root.stored_file, path)
    if stored is None:
        upstream = await asyncio.to_thread(_download_url, catalog, path)
        if upstream is not None:
            return await _passed_on(upstream, catalog, request)
        raise HTTPException(404, f"{path!r} has no stored file to download")
    with contextlib.suppress(OSError):  # (gone meanwhile: the response says so)
        request.app.state.metrics.file_served(catalog.name, stored.stat().st_size)
    return LargeFileResponse(stored)


# Headers of an upstream file answer that say what the body is: passed on as they are.
PASSED_ON_HEADERS = ("content-length", "content-range", "content-type", "content-disposition",
                     "accept-ranges", "etag", "last-modified")


def _download_url(catalog: Catalog, path: str) -> str | None:
    try:
        return catalog.root.download_url(path)
    except DatasetNotFound:
        raise catalog.not_found(path) from None
    except DatasetUnavailable as e:
        raise HTTPException(503, str(e)) from None


async def _passed_on(url: str, catalog: Catalog, request: Request) -> Response:
    """The file at ``url`` upstream (a re-published root's subscriber), streamed as it
    comes, with the client's Range passed on: the subscriber upstream completes and
    checks the file from its cache, as it does for its own clients."""
    asked = {k: v for k, v in request.headers.items() if k in ("range", "if-range")}
    client = httpx.AsyncClient(timeout=DOWNLOAD_TIMEOUT, verify=tls.client_context(),
                               headers=catalog.root.upstream_headers)
    try:
        upstream = await client.send(client.build_request("GET", url, headers=asked),
                                     stream=True)
    except httpx.HTTPError as e:
        await client.aclose()
        raise HTTPException(502, f"the subscriber upstream is unreachable ({e})") from None
    if upstream.status_code not in (200, 206):
        text = (await upstream.aread())[:300].decode(errors="replace")
        await upstream.aclose()
        await client.aclose()
        status = upstream.status_code if upstream.status_code in (404, 416, 503) else 502
        raise HTTPException(status, f"upstream answered {upstream.status_code}: {text}")

    async def close() -> None:
        await upstream.aclose()
        await client.aclose()

    headers = {k: v for k, v in upstream.headers.items() if k in PASSED_ON_HEADERS}
    with contextlib.suppress(ValueError):
        request.app.state.metrics.file_served(catalog.name,
                                              int(headers.get("content-length", 0)))
    return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code,
                             headers=headers, background=BackgroundTask(close))
