"""The publisher (``cat2pub NAME ROOT``): serves one root and announces every change in it.

Endpoints (paths relative to the root):

- ``GET /api/root``: ``{"name": NAME}``, the root this publisher serves;
- ``GET /api/list``: dataset paths;
- ``GET /api/index``: every dataset's version and metadata in one response (ETag);
- ``GET /api/info/{path}``: one dataset's version and metadata (ETag / If-None-Match);
  a dataset whose file cannot be read (being written, damaged) is listed with no metadata
  and an ``error`` (see :class:`caterva2.models.DatasetEntry`);
- ``GET /api/chunks/{path}?nchunks=0-3,7&version=V``: stored chunks, exactly as stored,
  as a stream of records (see :mod:`caterva2.b2`); 412 if the version is not current;
- ``GET /api/download/{path}``: the stored file (ordinary files as their ``.b2`` SChunk).
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import pathlib
import time
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from caterva2 import config, paths
from caterva2.models import ChangeEvent, RootInfo
from caterva2.roots import (
    DatasetNotFound,
    DatasetUnavailable,
    PublishedRoot,
    VersionMismatch,
    open_root,
)
from caterva2.services import common

log = logging.getLogger("caterva2.publisher")
READ_BATCH = 4  # chunks read per thread hop when streaming
# A file missing for this long is deleted; before, it may be being written anew (blosc2's
# mode="w" removes the old file first), and announcing it deleted would make subscribers
# answer 404 for a moment.
DELETE_GRACE_S = 0.5
TAKEN_RETRY_S = 5  # how often to try again for a root name that another publisher holds


class RootTaken(Exception):
    """The broker refused the root's name: another publisher serves a root of that name."""


def parse_chunk_list(text: str, nchunks: int) -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; HTTPException(400) on bad or out-of-range items."""
    ranges: list[range] = []
    try:
        for item in filter(None, text.split(",")):
            lo, _, hi = item.partition("-")
            ranges.append(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise HTTPException(400, f"malformed chunk list {text!r}") from None
    # Bounds first: a short text like "0-999999999" must not expand into a huge list.
    if any(r and not (0 <= r.start and r.stop <= nchunks) for r in ranges):
        raise HTTPException(400, f"chunk numbers must be in 0..{nchunks - 1}")
    if sum(len(r) for r in ranges) > nchunks:
        raise HTTPException(400, f"more chunks asked for than the dataset's {nchunks}")
    return [n for r in ranges for n in r]


class Announcer:
    """Registers the root with the broker and announces changes, surviving broker restarts.

    What was last announced is kept in ``statedir/announced.json``, so a publisher that was
    down announces on restart what changed meanwhile.  Deletions are announced once a file
    has been missing for DELETE_GRACE_S.
    """

    def __init__(self, name: str, root: PublishedRoot, address: str, broker: str,
                 statedir: pathlib.Path, client: httpx.AsyncClient):
        self.name, self.root, self.address, self.broker = name, root, address, broker
        self.client = client
        self.state_file = statedir / "announced.json"
        self.announced: dict[str, str] = common.read_json(self.state_file, {})
        self.lock = asyncio.Lock()
        self.registered = False
        self.missing_since: dict[str, float] = {}  # announced paths missing now: since when
        self.recheck: asyncio.Task | None = None

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch())
        try:
            delay = 0.1
            while True:  # keep trying until the broker has heard everything
                try:
                    await self.announce()
                    delay = 0.1
                    await asyncio.sleep(30)  # re-register now and then: cheap, and heals
                    self.registered = False  # a broker that lost its state
                except RootTaken as e:
                    log.error("%s; trying again every %d s", e, TAKEN_RETRY_S)
                    await asyncio.sleep(TAKEN_RETRY_S)
                except httpx.HTTPError as e:
                    self.registered = False
                    log.warning("broker %s unreachable (%s); retrying in %.1fs",
                                self.broker, type(e).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
        finally:
            watcher.cancel()
            if self.recheck is not None:
                self.recheck.cancel()

    def _deleted(self, versions: dict[str, str]) -> list[str]:
        """Announced paths missing for DELETE_GRACE_S (a recheck is due for the others)."""
        now = time.monotonic()
        missing = [p for p in self.announced if p not in versions]
        self.missing_since = {p: self.missing_since.get(p, now) for p in missing}
        deleted = [p for p in missing if now - self.missing_since[p] >= DELETE_GRACE_S]
        if len(deleted) < len(missing) and self.recheck is None:
            self.recheck = asyncio.create_task(self._recheck())
        return deleted

    async def _recheck(self) -> None:
        await asyncio.sleep(DELETE_GRACE_S)
        self.recheck = None
        with contextlib.suppress(httpx.HTTPError, RootTaken):
            await self.announce()

    async def _watch(self) -> None:
        async for _ in self.root.changes():
            with contextlib.suppress(httpx.HTTPError, RootTaken):
                await self.announce()

    async def announce(self) -> None:
        async with self.lock:
            if not self.registered:
                r = await self.client.post(f"http://{self.broker}/api/roots",
                                           json=RootInfo(name=self.name, http=self.address)
                                           .model_dump())
                if r.status_code == 409:  # (the broker's errors are JSON: {"detail": ...})
                    raise RootTaken(r.json().get("detail") if r.headers.get(
                        "content-type") == "application/json" else r.text)
                r.raise_for_status()
                self.registered = True
            versions = await asyncio.to_thread(self.root.versions)
            changed = {}
            for path, version in versions.items():
                if self.announced.get(path) == version:
                    continue
                try:
                    changed[path] = (await asyncio.to_thread(self.root.entry, path))["version"]
                except DatasetNotFound:
                    continue  # gone since the scan
                except DatasetUnavailable as e:
                    # Announced all the same: subscribers drop what they held of the old
                    # version and list it as unreadable.  A file still being written changes
                    # again, and its final version is announced in turn.
                    log.warning("%s", e)
                    changed[path] = version
            deleted = self._deleted(versions)
            if changed or deleted:
                event = ChangeEvent(root=self.name, changed=changed, deleted=deleted)
                r = await self.client.post(f"http://{self.broker}/api/events",
                                           json=event.model_dump())
                r.raise_for_status()
                for p in deleted:
                    del self.announced[p]
                self.announced.update(changed)
                await asyncio.to_thread(common.atomic_write, self.state_file,
                                        json.dumps(self.announced))
                log.info("announced %d changed, %d deleted", len(changed), len(deleted))


def build_app(name: str, root: PublishedRoot, address: str, broker: str,
              statedir: pathlib.Path) -> FastAPI:
    """The publisher's web application for ``root``, announced as ``name``."""
    index_cache: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=httpx.Timeout(10, connect=3)) as client:
            announcer = Announcer(name, root, address, broker, statedir, client)
            task = asyncio.create_task(announcer.run())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        root.close()

    app = FastAPI(title=f"Caterva2 publisher of {name}", lifespan=lifespan)
    common.install_error_handlers(app)

    def entry_or_none(path: str) -> dict[str, Any] | None:
        """The dataset's entry, without metadata if it cannot be read now; None if none."""
        try:
            return root.entry(path)
        except DatasetNotFound:
            return None
        except DatasetUnavailable as e:
            return e.entry()

    def not_found(path: str) -> HTTPException:
        return HTTPException(404, f"no dataset {path!r} in root {name!r}")

    def not_current(path: str, version: str) -> HTTPException:
        return HTTPException(412, f"{path} changed: version {version} is not current")

    def entry_or_404(path: str) -> dict[str, Any]:
        entry = entry_or_none(path)
        if entry is None:
            raise not_found(path)
        return entry

    def entry_or_error(path: str, version: str | None = None) -> dict[str, Any]:
        """The dataset's entry; 412 if ``version`` is given and not current, 503 if the
        dataset cannot be read now."""
        entry = entry_or_404(path)
        if version is not None and version != entry["version"]:
            raise not_current(path, version)
        if entry["meta"] is None:
            raise HTTPException(503, f"dataset not readable now: {entry['error']}")
        return entry

    @app.get("/api/root")
    async def get_root() -> dict[str, str]:
        return {"name": name}

    @app.get("/api/list")
    async def get_list() -> list[str]:
        return sorted(await asyncio.to_thread(root.versions))

    def build_index() -> tuple[str, bytes]:
        versions = root.versions()
        etag = hashlib.sha1(json.dumps(sorted(versions.items())).encode()).hexdigest()
        if index_cache.get("etag") == etag:
            return etag, index_cache["body"]
        datasets = {}
        for path in sorted(versions):
            if (entry := entry_or_none(path)) is not None:  # (None: gone since the scan)
                datasets[path] = entry
        body = json.dumps({"datasets": datasets}).encode()
        if any(entry["meta"] is None for entry in datasets.values()):
            return hashlib.sha1(body).hexdigest(), body  # not kept: read them again next time
        index_cache.update(etag=etag, body=body)
        return etag, body

    @app.get("/api/index")
    async def get_index(request: Request) -> Response:
        etag, body = await asyncio.to_thread(build_index)
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(body, media_type="application/json", headers={"ETag": etag})

    @app.get("/api/info/{path:path}")
    async def get_info(path: str, request: Request) -> Response:
        entry = await asyncio.to_thread(entry_or_404, common.safe_relpath(path))
        etag = entry["version"]
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        return Response(json.dumps(entry), media_type="application/json",
                        headers={"ETag": etag})

    @app.get("/api/chunks/{path:path}")
    async def get_chunks(path: str, nchunks: str, version: str | None = None) -> Response:
        entry = await asyncio.to_thread(entry_or_error, common.safe_relpath(path), version)
        wanted = parse_chunk_list(nchunks, entry["meta"]["schunk"]["nchunks"])
        version = entry["version"]
        # The first chunk alone, so that it leaves at once; then batches (fewer thread hops).
        batches = common.batched(wanted[:1], 1) + common.batched(wanted[1:], READ_BATCH)

        def read(batch: list[int]) -> list[bytes]:
            return root.read_chunks(path, batch, version)

        def read_first() -> tuple[list[bytes], list[int] | None]:
            return read(batches[0]) if batches else [], root.chunk_sizes(path, wanted, version)

        try:
            first, sizes = await asyncio.to_thread(read_first)
        except VersionMismatch:
            raise not_current(path, version) from None
        except DatasetNotFound:
            raise not_found(path) from None
        except DatasetUnavailable as e:
            raise HTTPException(503, str(e)) from None

        async def records():
            announced = dict(zip(wanted, sizes)) if sizes is not None else None
            try:
                async for piece in common.chunk_records(read, batches, first, announced):
                    yield piece
            except (VersionMismatch, DatasetNotFound, DatasetUnavailable, common.ChunkChanged):
                log.info("%s changed while streaming; stream cut short", path)
                # the reader sees fewer records than it asked for

        headers = {"ETag": version}
        if sizes is not None:  # a known length: no chunked encoding, no copy of each chunk
            headers["Content-Length"] = str(common.stream_length(sizes))
        return StreamingResponse(records(), media_type="application/x-caterva2-chunks",
                                 headers=headers)

    @app.get("/api/download/{path:path}")
    async def download(path: str) -> Response:
        await asyncio.to_thread(entry_or_error, common.safe_relpath(path))
        stored = await asyncio.to_thread(root.stored_file, path)
        if stored is None:
            raise HTTPException(404, f"{path!r} has no stored file to download")
        return common.LargeFileResponse(stored)

    return app


def main() -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("name", nargs="?", help="name of the root, e.g. foo")
        parser.add_argument("root", nargs="?",
                            help="directory (or HDF5 file) to publish, e.g. root-example")

    def make_app(settings: dict[str, Any]) -> FastAPI:
        if not settings.get("name") or not settings.get("root"):
            raise config.ConfigError("give NAME and ROOT (or 'name' and 'root' in the "
                                     "[publisher] section of the configuration file)")
        paths.check_root_name(str(settings["name"]))  # ValueError: a clear error at start
        root = open_root(settings["root"], settings["statedir"])
        return build_app(settings["name"], root, settings["address"], settings["broker"],
                         settings["statedir"])

    common.run_service("publisher", "Caterva2 publisher: serves one root of datasets.",
                       {"http": config.PUBLISHER_DEFAULT, "statedir": "_caterva2/pub",
                        "broker": config.BROKER_DEFAULT}, make_app, add_arguments)


if __name__ == "__main__":
    main()
