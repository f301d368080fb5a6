"""The subscriber's relay endpoints: a subscribed root served onward, for re-publishing.

A relay publisher (``cat2pub NAME http://HOST:PORT/ROOT``, see
:mod:`caterva2.roots.relayed`) reads root ROOT through these, as a subscriber reads a
publisher: the data comes from this subscriber's cache, and what is not cached is fetched
from the source once, stored, and passed on as stored.  With ``--require-login`` they need
a user who may read the root, like every endpoint.

- ``GET /api/relay/{root}/index[?wait=S]``: every dataset's version and metadata (a
  :class:`caterva2.models.RootIndex`), with an ETag; given ``If-None-Match`` with the
  current ETag and ``wait``, the answer waits up to S seconds (at most MAX_WAIT_S) for
  the index to change, then says 304 if it did not: relays learn of changes in about
  INDEX_POLL_S;
- ``GET /api/relay/{root}/chunks/{path}?nchunks=0-3,7&version=V``: stored chunks as a
  chunk stream (see :mod:`caterva2.wire`), digests in the records; 412 if V is not the
  current version, and a stream cut short if it changes meanwhile (never a chunk of
  another version);
- ``GET /api/relay/{root}/blocks/{path}?nchunk=N&blocks=0-3,7&version=V``: blocks of one
  chunk of an array, as a publisher's ``/api/blocks`` (see :mod:`caterva2.blocks`): a small
  read downstream moves only the blocks it touches, on every link;
- ``GET /api/relay/{root}/digests/{path}?version=V``: the digests of every chunk, as the
  root's publisher gives them;
- ``GET /api/source/{root}``: where the root comes from (a
  :class:`caterva2.provenance.Source`), for relays and ``cat2cli url``.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import urllib.parse

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import ValidationError

from caterva2 import tls, wire
from caterva2.blocks import blocks_per_chunk, pieces_to_send
from caterva2.models import ArrayMeta, RootIndex
from caterva2.provenance import Source
from caterva2.replica import ChunkDamaged, SparseReplica
from caterva2.services import responses
from caterva2.services.metrics import counted
from caterva2.services.openapi import (
    CHUNK_STREAM,
    DATA_ERRORS,
    OCTET_STREAM,
    ROOT_ACCESS,
    binary,
    errors,
    tagged,
)
from caterva2.services.subscriber.cache import Index
from caterva2.services.subscriber.data_api import stream_chunks
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.errors import Gone, Stale, Unavailable
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import lookup, subscribed_root, with_chunks

router = APIRouter()
# Longest a relay's index request is held: less than the time uvicorn lets answers in
# flight finish when the subscriber stops (3 s), so that held requests never delay a stop
# beyond it.  The relay asks again at once: a few small requests a minute.
MAX_WAIT_S = 2.5
INDEX_POLL_S = 0.1  # how often a held index request looks for a change
SOURCE_TIMEOUT = httpx.Timeout(5, connect=2)


class IndexBodies:
    """Each root's index as JSON and its ETag, made again only when the index changes
    (the cache replaces a root's index object whenever it changes)."""

    def __init__(self) -> None:
        self._made: dict[str, tuple[Index, str, bytes]] = {}

    def get(self, root: str, index: Index) -> tuple[str, bytes]:
        made = self._made.get(root)
        if made is not None and made[0] is index:
            return made[1], made[2]
        readable = {p: {"error"} for p, e in index.items() if e.error is None}
        body = RootIndex(datasets=dict(sorted(index.items()))).model_dump_json(
            exclude={"datasets": readable}).encode()
        etag = hashlib.sha1(body).hexdigest()
        self._made[root] = (index, etag, body)
        return etag, body


def _bodies(request: Request) -> IndexBodies:
    state = request.app.state
    if not hasattr(state, "relay_index_bodies"):
        state.relay_index_bodies = IndexBodies()
    return state.relay_index_bodies


async def _current_index(sub: Subscriber, root: str) -> Index:
    subscribed_root(sub, root)
    index = sub.cache.loaded_index(root)
    if index is None:
        index = await asyncio.to_thread(sub.cache.index, root) or {}
    return index


@router.get("/api/relay/{root}/index", response_class=Response,
            responses=tagged(RootIndex, "index") | errors(400, 404) | ROOT_ACCESS)
async def relay_index(root: str, sub: Sub, request: Request, wait: float = 0) -> Response:
    """The root's index for a relay, held up to ``wait`` seconds for a change if the
    relay already has the current one (``If-None-Match``)."""
    bodies = _bodies(request)
    known = request.headers.get("if-none-match")
    index = await _current_index(sub, root)
    etag, body = await asyncio.to_thread(bodies.get, root, index)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(max(wait, 0.0), MAX_WAIT_S)
    while etag == known and loop.time() < deadline:
        await asyncio.sleep(INDEX_POLL_S)
        if await request.is_disconnected():  # (the relay stopped: stop waiting for it)
            break
        latest = await _current_index(sub, root)
        if latest is not index:
            index = latest
            etag, body = await asyncio.to_thread(bodies.get, root, index)
    if etag == known:
        return Response(status_code=304, headers={"ETag": etag})
    return Response(body, media_type="application/json", headers={"ETag": etag})


@router.get("/api/relay/{root}/chunks/{path:path}", response_class=Response, responses=binary(
    CHUNK_STREAM, description="The chunks asked for, as stored (see caterva2.wire)",
    headers={"ETag": "The version read"}) | DATA_ERRORS | errors(412) | ROOT_ACCESS)
async def relay_chunks(root: str, path: str, nchunks: str, sub: Sub,
                       version: str | None = None) -> Response:
    """Chunks of one version, as stored, for a relay (see the module's docstring)."""
    found = await lookup(sub, root, path)
    if version is not None and found.entry.version != version:
        raise _not_current(root, path, version)
    try:
        wanted = wire.parse_chunk_list(nchunks, found.meta.schunk.nchunks)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    found, replica, arrivals = await with_chunks(sub, found, wanted, wait=False)
    if version is not None and found.entry.version != version:  # (changed meanwhile)
        if arrivals is not None:
            arrivals.close()
        raise _not_current(root, path, version)
    sizes = None
    if arrivals is None:
        sizes = await asyncio.to_thread(replica.chunk_sizes, wanted)
    body = counted(stream_chunks(sub, found, replica, wanted, arrivals, sizes),
                   functools.partial(sub.metrics.bytes_out, root))
    return responses.chunk_stream(body, {"ETag": found.entry.version, **found.headers}, sizes)


@router.get("/api/relay/{root}/blocks/{path:path}", response_class=Response, responses=binary(
    CHUNK_STREAM, description="The chunk's head and the blocks asked for (see caterva2.wire)",
    headers={"ETag": "The version read", wire.CHUNK_DIGEST_HEADER: "The whole chunk's digest"})
    | DATA_ERRORS | errors(412) | ROOT_ACCESS)
async def relay_blocks(root: str, path: str, nchunk: int, blocks: str, sub: Sub,
                       version: str | None = None) -> Response:
    """Blocks of one chunk of an array, as a publisher's ``/api/blocks`` sends them: from
    the cache, or fetched from the source (just those blocks, if the chunk is not held)."""
    found = await lookup(sub, root, path)
    meta = found.meta
    if version is not None and found.entry.version != version:
        raise _not_current(root, path, version)
    if not isinstance(meta, ArrayMeta):
        raise HTTPException(400, f"{root}/{path} is not an array: read whole chunks")
    if not 0 <= nchunk < meta.schunk.nchunks:
        raise HTTPException(400, f"chunk numbers must be in 0..{meta.schunk.nchunks - 1}")
    try:
        wanted = wire.parse_chunk_list(blocks, blocks_per_chunk(meta.chunks, meta.blocks),
                                       "block")
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    replica = await asyncio.to_thread(sub.cache.replica, root, path, found.entry)
    try:
        await sub.fetcher.blocks.fetch(root, path, found.entry, replica, nchunk, wanted)
        chunk, digest = await asyncio.to_thread(_held_blocks, replica, nchunk, wanted)
        pieces = pieces_to_send(chunk, wanted)
    except Unavailable as e:
        raise HTTPException(504 if e.timeout else 503, str(e)) from None
    except (Stale, Gone):
        raise _not_current(root, path, found.entry.version) from None
    except (ValueError, ChunkDamaged, FileNotFoundError) as e:  # (evicted, or damaged)
        raise HTTPException(503, f"blocks of {root}/{path} not held now ({e}); ask "
                                 "again") from None
    sub.metrics.bytes_out(root, sum(len(piece) for _, piece in pieces))
    return responses.block_stream(pieces, digest, {"ETag": found.entry.version,
                                                   **found.headers})


def _held_blocks(replica: SparseReplica, nchunk: int, wanted: list[int]) -> tuple[bytes, int]:
    """The chunk (whole if held, else its head and blocks ``wanted`` in place) and the
    whole chunk's digest; each part checked against its digest."""
    if not replica.missing([nchunk]):
        [chunk] = replica.read_chunks([nchunk])
        return chunk, replica.digest(nchunk, chunk)
    return bytes(replica.partial.assembled(nchunk, wanted)), replica.partial.chunk_digest(nchunk)


def _not_current(root: str, path: str, version: str) -> HTTPException:
    return HTTPException(412, f"{root}/{path} changed: version {version} is not current")


@router.get("/api/relay/{root}/digests/{path:path}", response_class=Response, responses=binary(
    OCTET_STREAM, description="Each stored chunk's digest, 8 bytes little-endian",
    headers={"ETag": "The version read"}) | errors(400, 404, 412, 503) | ROOT_ACCESS)
async def relay_digests(root: str, path: str, sub: Sub,
                        version: str | None = None) -> Response:
    """Every chunk's digest, as the root's publisher gives them (8 bytes each)."""
    await lookup(sub, root, path)
    url = (f"{tls.base_url(sub.registry.publisher(root))}/api/digests/"
           f"{urllib.parse.quote(path)}")
    try:
        r = await sub.indexes.client.get(url, params={"version": version} if version else None)
    except httpx.HTTPError as e:
        raise HTTPException(503, f"the publisher of {root!r} is unreachable "
                                 f"({type(e).__name__})") from None
    if r.status_code in (404, 412):
        raise HTTPException(r.status_code, f"the publisher of {root!r} answered "
                                           f"{r.status_code} for the digests of {path}")
    if r.status_code != 200:
        raise HTTPException(503, f"the publisher of {root!r} answered {r.status_code}")
    return Response(r.content, media_type="application/octet-stream",
                    headers={"ETag": r.headers.get("etag", "")})


@router.get("/api/source/{root}", responses=errors(404) | ROOT_ACCESS)
async def get_source(root: str, sub: Sub) -> Source:
    """Where the root comes from: its publisher, and that publisher's hops to the origin
    (``hops`` null if the publisher could not be asked now)."""
    sub.access.check("read", root)
    if root not in sub.registry.known:
        raise HTTPException(404, f"no root named {root!r}")
    publisher = tls.base_url(sub.registry.known[root].http)
    source = Source(root=root, publisher=publisher)
    try:
        r = await sub.indexes.client.get(f"{publisher}/api/root", timeout=SOURCE_TIMEOUT)
        r.raise_for_status()
        said = r.json()
        return Source(root=root, publisher=publisher, publisher_id=said.get("publisher_id"),
                      hops=said.get("hops", []))
    except (httpx.HTTPError, ValueError, ValidationError, AttributeError):
        return source  # (hops unknown: the publisher is unreachable, or says nothing)
