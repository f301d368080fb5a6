"""The subscriber (``cat2sub``): follows roots, caches chunks on demand, serves clients.

REST API (dataset paths always include the root):

- ``GET /api/roots``, ``POST /api/subscribe/{root}``, ``GET /api/list/{root}``,
  ``GET /api/url/{root}[/{path}]``, ``GET /api/info/{root}/{path}``;
- ``GET /api/fetch/{root}/{path}?slice_=...``: the selection as an NDArray cframe (arrays)
  or a Blosc2-compressed buffer (bytes).  For arrays, ``&buffer=true`` asks instead for the
  selection's items in C order as one Blosc2-compressed buffer (the client knows shape and
  dtype: far cheaper than a cframe for small reads), and ``&chunks=true`` for the stored
  chunks the selection touches, as a chunk stream (see :mod:`caterva2.b2`), for the client
  to decompress — much cheaper for large selections.  Array answers carry the header
  ``Caterva2-Layout`` (shape, dtype, chunks, blocks: :func:`caterva2.b2.layout`), so a
  client holding older metadata notices that the dataset changed instead of misreading it;
- ``GET /api/download/{root}/{path}``: the URL of the complete file;
- ``GET /files/{root}/{path}``: the complete dataset as a Blosc2 file (``.b2`` added for
  ordinary files).
"""
from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import math
import pathlib
import urllib.parse
from typing import Any

import blosc2
import httpx
import numpy as np
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse, StreamingResponse

from caterva2 import b2, config, paths, slicing
from caterva2.models import DatasetEntry, user_info
from caterva2.services import common
from caterva2.services.sync import Follower, Gone, Stale, Unavailable

log = logging.getLogger("caterva2.subscriber")
WIRE_CPARAMS = {"codec": blosc2.Codec.LZ4, "clevel": 5}  # fast: subscribers and clients are close
STREAM_BATCH = 8  # chunks read from a replica per thread hop


def encode_array(data: np.ndarray) -> bytes:
    """An NDArray cframe of ``data`` (0-d included)."""
    data = np.asarray(data)
    if not data.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
        data = data.copy()
    return blosc2.asarray(data, cparams=WIRE_CPARAMS).to_cframe()


def chunk_layout(meta: dict[str, Any]) -> tuple:
    """What decides which chunks a selection needs, and how they decode."""
    sc = meta["schunk"]
    return (meta["kind"], meta.get("shape"), meta.get("dtype"), meta.get("chunks"),
            meta.get("blocks"), sc["chunkshape"], sc["typesize"], sc["nbytes"])


def build_app(broker: str, statedir: pathlib.Path, address: str,
              url: str | None = None) -> FastAPI:
    """The subscriber's web application.  ``url`` is the base of the URLs it hands out."""
    base_url = (url or f"http://{address}").rstrip("/")
    state: dict[str, Follower] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        async with httpx.AsyncClient(timeout=httpx.Timeout(30, connect=3),
                                     limits=limits) as client:
            state["f"] = follower = Follower(broker, statedir, client)
            task = asyncio.create_task(follower.follow_broker())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(follower.connected.wait(), 2)  # a head start
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(title="Caterva2 subscriber", lifespan=lifespan)
    common.install_error_handlers(app)

    # -- lookups ----------------------------------------------------------------------
    def subscribed_root(root: str) -> Follower:
        follower = state["f"]
        try:
            paths.check_root_name(root)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        if root not in follower.subscribed:
            if root in follower.roots:
                raise HTTPException(404, f"root {root!r} is not subscribed; subscribe first")
            raise HTTPException(404, f"no root named {root!r}")
        return follower

    async def lookup(root: str, path: str) -> dict[str, Any]:
        follower = subscribed_root(root)
        common.safe_relpath(path)
        index = follower.cache.loaded_index(root)
        if index is None:
            index = await asyncio.to_thread(follower.cache.index, root) or {}
        if path not in index:
            raise HTTPException(404, f"no dataset {path!r} in root {root!r}")
        entry = index[path]
        return entry if entry["meta"] is not None else await readable_now(root, path, entry)

    async def current_or_404(root: str, path: str) -> dict[str, Any]:
        """The dataset's entry at its publisher now (see ``Follower.current_entry``); 404 if
        it is gone (the index follows when its publisher announces the deletion)."""
        try:
            return await state["f"].current_entry(root, path)
        except Gone:
            raise HTTPException(404, f"dataset {root}/{path} no longer exists") from None

    async def readable_now(root: str, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A dataset listed without metadata (its file could not be read): ask its publisher
        again, as it may be readable now; 503 with the reason if not."""
        follower = state["f"]
        try:
            new = await current_or_404(root, path)
        except Unavailable as e:
            new, error = None, str(e)
        if new is not None:
            if new != entry:
                await asyncio.to_thread(follower.cache.update, root, {path: new}, [])
            if new["meta"] is not None:
                return new
            error = new.get("error")
        raise HTTPException(503, f"{root}/{path} cannot be read at its source now ({error}); "
                                 "a file being written becomes readable when complete")

    async def with_chunks(root: str, path: str, entry: dict[str, Any], nchunks: list[int],
                          wait: bool = True):
        """``(entry, replica, arrivals)`` for a read of ``nchunks`` of ``entry``'s dataset,
        with HTTP errors.

        With ``wait``, every chunk is cached on return (``arrivals`` is empty); without, only
        one (so the answer can start while the rest arrive) and ``arrivals`` maps each chunk
        still coming to its future.  If the dataset changes meanwhile, the new version is
        read, provided its chunks are laid out as ``entry`` says (else 409: read again).
        """
        follower = state["f"]
        layout = chunk_layout(entry["meta"])
        for _ in range(3):
            entry = await lookup(root, path)
            if chunk_layout(entry["meta"]) != layout:
                raise HTTPException(409, f"{root}/{path} changed its shape or chunking while "
                                         "being read; read it again")
            try:
                replica, arrivals = await follower.request_chunks(root, path, entry, nchunks,
                                                                  forward=not wait)
                if wait or not arrivals:
                    for future in arrivals.values():
                        await asyncio.shield(future)
                    return entry, replica, {}
                done, _ = await asyncio.wait(arrivals.values(),
                                             return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    future.result()  # the fetch's error, if it failed
                return entry, replica, arrivals
            except (Stale, Gone):
                # The source changed (or vanished, maybe for a moment while being rewritten)
                # under us: learn its current version, then try again.
                try:
                    new = await current_or_404(root, path)
                except Unavailable:
                    continue  # (the next attempt says why, if it fails)
                await asyncio.to_thread(follower.cache.update, root, {path: new}, [])
            except Unavailable as e:
                raise HTTPException(504 if e.timeout else 503, str(e)) from None
        raise HTTPException(503, f"{root}/{path} keeps changing at its source; try later")

    # -- roots ------------------------------------------------------------------------
    @app.get("/api/roots")
    async def get_roots() -> dict[str, dict[str, Any]]:
        follower = state["f"]
        try:
            await follower.refresh_roots()
        except httpx.HTTPError as e:  # known roots are still worth listing; none is not
            if not follower.roots:
                raise HTTPException(503, f"the broker at {follower.broker} is unreachable "
                                         f"({type(e).__name__}); no roots known yet") from None
        return {name: {"name": name, "http": info.http, "subscribed": name in follower.subscribed}
                for name, info in sorted(follower.roots.items())}

    @app.post("/api/subscribe/{root}")
    async def subscribe(root: str) -> str:
        follower = state["f"]
        try:
            paths.check_root_name(root)
            await follower.subscribe(root)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        except KeyError:
            raise HTTPException(404, f"no root named {root!r}") from None
        except Unavailable as e:
            raise HTTPException(503, str(e)) from None
        return "Ok"

    @app.get("/api/list/{root}")
    async def get_list(root: str) -> list[str]:
        follower = subscribed_root(root)
        return sorted(await asyncio.to_thread(follower.cache.index, root) or {})

    @app.get("/api/url/{root}")
    async def get_root_url(root: str) -> list[str]:
        follower = state["f"]
        if root not in follower.roots:
            raise HTTPException(404, f"no root named {root!r}")
        return [f"http://{follower.roots[root].http}"]

    @app.get("/api/url/{root}/{path:path}")
    async def get_dataset_url(root: str, path: str) -> list[str]:
        await lookup(root, path)
        return [f"http://{state['f'].publisher(root)}/api/download/{urllib.parse.quote(path)}"]

    @app.get("/api/info/{root}/{path:path}")
    async def get_info(root: str, path: str) -> dict[str, Any]:
        entry = await lookup(root, path)
        return user_info(DatasetEntry.model_validate(entry).meta)

    # -- data -------------------------------------------------------------------------
    @app.get("/api/fetch/{root}/{path:path}")
    async def fetch(root: str, path: str, slice_: str | None = None,
                    prefer_schunk: bool = True, chunks: bool = False,
                    buffer: bool = False) -> Response:
        entry = await lookup(root, path)
        meta = entry["meta"]
        try:
            key = slicing.parse_slice(slice_)
            if meta["kind"] == "ndarray":
                shape = tuple(meta["shape"])
                plan = slicing.plan(key, shape)
                nchunks = b2.chunks_in_region(shape, meta["chunks"], plan.region,
                                              plan.within)
            else:
                sc = meta["schunk"]
                plan = slicing.plan_bytes(key, sc["nbytes"] // sc["typesize"])
                r = plan.region[0]
                nchunks = list(range(r.start // sc["chunkshape"], -(-r.stop // sc["chunkshape"]))) \
                    if r.stop > r.start else []
        except slicing.SelectionError as e:
            raise HTTPException(400, str(e)) from None
        headers = {b2.LAYOUT_HEADER: b2.layout(meta)} if meta["kind"] == "ndarray" else {}
        if chunks and meta["kind"] == "ndarray":
            entry, replica, arrivals = await with_chunks(root, path, entry, nchunks,
                                                         wait=False)
            announced = None
            if not arrivals:  # all cached: a known length spares uvicorn a copy of each chunk
                sizes = await asyncio.to_thread(replica.chunk_sizes, nchunks)
                headers["Content-Length"] = str(common.stream_length(sizes))
                announced = dict(zip(nchunks, sizes))
            return StreamingResponse(stream_chunks(root, path, entry, replica, nchunks, arrivals,
                                                   announced),
                                     media_type="application/x-caterva2-chunks",
                                     headers=headers)
        if meta["kind"] == "ndarray":
            def answer(replica) -> bytes:
                data = np.asarray(replica.read_array(plan.region))[plan.within]
                return b2.compress_items(data) if buffer else encode_array(data)
        else:
            def answer(replica) -> bytes:
                r = plan.region[0]
                data = replica.read_items(r.start, r.stop)
                typesize = meta["schunk"]["typesize"]
                items = np.frombuffer(data, dtype=f"V{typesize}")[plan.within]
                return blosc2.compress2(np.ascontiguousarray(items).tobytes(), typesize=1)
        if buffer and (meta["kind"] != "ndarray" or
                       math.prod(plan.result_shape) * meta["schunk"]["typesize"]
                       > b2.MAX_BUFFER_BYTES):
            raise HTTPException(400, "buffer=true is for array selections up to "
                                     f"{b2.MAX_BUFFER_BYTES} bytes; use chunks=true")
        cache = state["f"].cache

        def cached_answer() -> bytes | None:  # a cached read costs one thread hop
            replica = cache.replica(root, path, entry)
            return None if replica.missing(nchunks) else answer(replica)

        try:
            body = await asyncio.to_thread(cached_answer)
            if body is None:
                entry, replica, _ = await with_chunks(root, path, entry, nchunks)
                body = await asyncio.to_thread(answer, replica)
        except RuntimeError as e:  # a damaged replica: drop it, the next read rebuilds it
            await asyncio.to_thread(cache.discard, root, path, entry)
            raise HTTPException(503, f"cached copy of {root}/{path} was damaged ({e}); "
                                     "it has been dropped, read again") from None
        return Response(body, media_type="application/octet-stream", headers=headers)

    async def stream_chunks(root: str, path: str, entry: dict[str, Any], replica,
                            nchunks: list[int], arrivals: dict[int, asyncio.Future],
                            sizes: dict[int, int] | None):
        """Held chunks first, then each missing one as soon as it is stored (``sizes``: of
        the held chunks, if a Content-Length was sent).

        If a chunk cannot be had midway, the stream ends without it: the client checks that
        every chunk came, so a partial answer is never taken for a whole one.  The stream
        ends with an error record saying why, unless the data changed at its source (the
        client then reads again).
        """
        held = [n for n in nchunks if n not in arrivals]
        coming = {future: n for n, future in arrivals.items()}
        del arrivals  # (each chunk is let go once sent: see sync.Forwarded)
        try:
            async for piece in common.chunk_records(replica.read_chunks,
                                                    common.batched(held, STREAM_BATCH),
                                                    sizes=sizes):
                yield piece
            while coming:
                done, _ = await asyncio.wait(coming, return_when=asyncio.FIRST_COMPLETED)
                arrived = {coming.pop(future): future.result() for future in done}
                for n, forwarded in arrived.items():
                    if forwarded is not None:  # sent as fetched, not read back
                        yield b2.record_header(n, len(forwarded.chunk))
                        yield forwarded.chunk
                stored = [n for n, forwarded in arrived.items() if forwarded is None]
                del done, arrived
                async for piece in common.chunk_records(replica.read_chunks,
                                                        common.batched(stored, STREAM_BATCH)):
                    yield piece
        except (Gone, Stale) as e:
            log.warning("answer for %s/%s cut short: it changed at its source (%s)", root,
                        path, type(e).__name__)
        except common.ChunkChanged as e:  # (the client finds chunks missing: read again)
            log.warning("answer for %s/%s cut short: %s", root, path, e)
        except (Unavailable, OSError) as e:
            reason = common.disk_error_text(e, f"the {app.title}") \
                if isinstance(e, OSError) else str(e)
            log.warning("answer for %s/%s cut short: %s", root, path, reason)
            yield b2.error_record(reason)
        except (ValueError, RuntimeError) as e:  # a damaged replica: the next read rebuilds it
            log.warning("cached copy of %s/%s damaged (%s); dropped", root, path, e)
            await asyncio.to_thread(state["f"].cache.discard, root, path, entry)

    async def complete_file(root: str, path: str) -> tuple[dict[str, Any], pathlib.Path]:
        """The dataset's entry and its replica file, every chunk held."""
        entry = await lookup(root, path)
        nchunks = list(range(entry["meta"]["schunk"]["nchunks"]))
        entry, replica, _ = await with_chunks(root, path, entry, nchunks)
        return entry, await asyncio.to_thread(replica.complete_file)

    def files_path(root: str, path: str, meta: dict[str, Any]) -> str:
        return f"{root}/{path}.b2" if meta["kind"] == "file" else f"{root}/{path}"

    @app.get("/api/download/{root}/{path:path}")
    async def download(root: str, path: str) -> str:
        entry, _ = await complete_file(root, path)
        return f"{base_url}/files/{urllib.parse.quote(files_path(root, path, entry['meta']))}"

    @app.get("/files/{root}/{path:path}")
    async def files(root: str, path: str) -> Response:
        index = {}
        with contextlib.suppress(HTTPException):
            subscribed_root(root)
            index = await asyncio.to_thread(state["f"].cache.index, root) or {}
        def kind(path: str) -> str | None:
            return ((index.get(path) or {}).get("meta") or {}).get("kind")

        if path.endswith(".b2") and kind(path[:-3]) == "file":
            path = path[:-3]
        elif kind(path) == "file":
            raise HTTPException(404, f"ordinary files are served as {root}/{path}.b2")
        entry, complete = await complete_file(root, path)
        name = pathlib.PurePosixPath(files_path(root, path, entry["meta"])).name
        return common.LargeFileResponse(complete, filename=name, media_type="application/octet-stream")

    # -- a page for browsers ----------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def home() -> str:
        follower = state["f"]
        rows = []
        for name in sorted(follower.roots):
            if name in follower.subscribed:
                index = await asyncio.to_thread(follower.cache.index, name) or {}
                items = "".join(
                    f'<li><a href="/api/info/{html.escape(name)}/{html.escape(p)}">'
                    f"{html.escape(name)}/{html.escape(p)}</a></li>" for p in sorted(index))
                rows.append(f"<h2>{html.escape(name)} (subscribed)</h2><ul>{items}</ul>")
            else:
                rows.append(f"<h2>{html.escape(name)}</h2><p>not subscribed: "
                            f"<code>cat2cli subscribe {html.escape(name)}</code></p>")
        body = "".join(rows) or "<p>No roots yet: start a publisher.</p>"
        return (f"<!doctype html><title>Caterva2 subscriber</title><h1>Caterva2 subscriber</h1>"
                f"{body}<p><a href='/docs'>REST API</a></p>")

    return app


def main() -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--url", help="base of the URLs handed out (when behind a proxy)")

    def make_app(settings: dict[str, Any]) -> FastAPI:
        return build_app(settings["broker"], settings["statedir"], settings["address"],
                         settings.get("url"))

    common.run_service("subscriber", "Caterva2 subscriber: follows roots and serves clients.",
                       {"http": config.SUBSCRIBER_DEFAULT, "statedir": "_caterva2/sub",
                        "broker": config.BROKER_DEFAULT}, make_app, add_arguments)


if __name__ == "__main__":
    main()
