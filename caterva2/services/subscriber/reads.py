"""Finding a dataset for a client's read, and getting the chunks the read touches.

Everything here answers in HTTP terms (HTTPException with a status and a reason), and
retries where the source changed under a read: a read is of one version, whole.
"""
from __future__ import annotations

import asyncio
import pathlib
from dataclasses import dataclass

from fastapi import HTTPException

from caterva2 import paths, wire
from caterva2.models import AnyMeta, DatasetEntry, chunk_layout
from caterva2.replica import SparseReplica
from caterva2.services.errors import safe_relpath
from caterva2.services.subscriber.chunk_fetcher import Arrivals
from caterva2.services.subscriber.errors import Gone, Stale, Unavailable
from caterva2.services.subscriber.node import Subscriber

READ_ATTEMPTS = 3  # versions a read tries before saying the dataset keeps changing


@dataclass
class Found:
    """A dataset found for a read: its entry (with metadata) and where it lives; and, if
    it could not be checked with its source (see :mod:`.freshness`), why."""

    root: str
    path: str
    entry: DatasetEntry
    unverified: str | None = None

    @property
    def headers(self) -> dict[str, str]:
        """What an answer about this dataset says of its freshness, as headers."""
        return {wire.UNVERIFIED_HEADER: self.unverified} if self.unverified else {}

    @property
    def meta(self) -> AnyMeta:
        assert self.entry.meta is not None  # (lookup never returns an entry without)
        return self.entry.meta


def subscribed_root(sub: Subscriber, root: str) -> None:
    """400 for a bad name, 403 if the user may not read it, 404 unless ``root`` is
    subscribed."""
    try:
        paths.check_root_name(root)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    sub.access.check("read", root)
    if root not in sub.registry.subscribed:
        if root in sub.registry.known:
            raise HTTPException(404, f"root {root!r} is not subscribed; subscribe first")
        raise HTTPException(404, f"no root named {root!r}")


async def lookup(sub: Subscriber, root: str, path: str) -> Found:
    """The dataset ``root/path`` with its metadata, or the HTTP error saying why not.

    While the broker is connected, its events keep the index current and this asks nobody;
    while not, the dataset's version is first checked with its publisher (see
    :mod:`.freshness`).
    """
    subscribed_root(sub, root)
    safe_relpath(path)
    index = sub.cache.loaded_index(root)
    if index is None:
        index = await asyncio.to_thread(sub.cache.index, root) or {}
    entry = index.get(path)
    if entry is None:
        raise HTTPException(404, f"no dataset {path!r} in root {root!r}")
    unverified = None
    if entry.meta is not None and sub.freshness.needed:
        try:
            entry, unverified = await sub.freshness.revalidate(root, path, entry)
        except Gone:
            raise _gone(root, path) from None
        if entry.meta is None:  # (just learnt from its publisher: no need to ask again)
            raise _unreadable(root, path, entry.error or "unknown reason")
    elif entry.meta is None:
        entry = await readable_now(sub, root, path, entry)
    return Found(root, path, entry, unverified)


def _gone(root: str, path: str) -> HTTPException:
    return HTTPException(404, f"dataset {root}/{path} no longer exists")


def _unreadable(root: str, path: str, error: str) -> HTTPException:
    return HTTPException(503, f"{root}/{path} cannot be read at its source now ({error}); "
                              "a file being written becomes readable when complete")


async def current_or_404(sub: Subscriber, root: str, path: str) -> DatasetEntry:
    """The dataset's entry at its publisher now; 404 if it is gone (the index follows when
    its publisher announces the deletion)."""
    try:
        return await sub.indexes.current_entry(root, path)
    except Gone:
        raise _gone(root, path) from None


async def readable_now(sub: Subscriber, root: str, path: str,
                       entry: DatasetEntry) -> DatasetEntry:
    """A dataset listed without metadata (its file could not be read): ask its publisher
    again, as it may be readable now; 503 with the reason if not."""
    try:
        new = await current_or_404(sub, root, path)
    except Unavailable as e:
        error = str(e)
    else:
        if new != entry:
            await sub.indexes.refresh_entry(root, path, new)
        if new.meta is not None:
            return new
        error = new.error or "unknown reason"
    raise _unreadable(root, path, error)


async def with_chunks(sub: Subscriber, found: Found, nchunks: list[int], wait: bool = True
                      ) -> tuple[Found, SparseReplica, Arrivals | None]:
    """``(found, replica, arrivals)`` for a read of ``nchunks`` of ``found``'s dataset.

    With ``wait``, every chunk is cached on return (``arrivals`` is None); without, at least
    one is (so the answer can start while the rest arrive), and ``arrivals`` has the rest:
    the caller streams them as they come, and closes it.  If the dataset changes meanwhile,
    the new version is read, provided its chunks are laid out as ``found`` says (else 409:
    read again).
    """
    layout = chunk_layout(found.meta)
    for _ in range(READ_ATTEMPTS):
        found = await lookup(sub, found.root, found.path)
        if chunk_layout(found.meta) != layout:
            raise HTTPException(409, f"{found.root}/{found.path} changed its shape or "
                                     "chunking while being read; read it again")
        try:
            replica, arrivals = await sub.fetcher.request_chunks(
                found.root, found.path, found.entry, nchunks, forward=not wait)
        except Unavailable as e:
            raise HTTPException(504 if e.timeout else 503, str(e)) from None
        try:
            if wait or not arrivals:
                await arrivals.all_stored()
                arrivals.close()
                return found, replica, None
            await arrivals.first_stored()
            return found, replica, arrivals
        except (Stale, Gone):
            arrivals.close()
            # The source changed (or vanished, maybe for a moment while being rewritten)
            # under us: learn its current version, then try again.
            try:
                new = await current_or_404(sub, found.root, found.path)
            except Unavailable:
                continue  # (the next attempt says why, if it fails)
            await sub.indexes.refresh_entry(found.root, found.path, new)
        except Unavailable as e:
            arrivals.close()
            raise HTTPException(504 if e.timeout else 503, str(e)) from None
        except BaseException:
            arrivals.close()
            raise
    raise HTTPException(503, f"{found.root}/{found.path} keeps changing at its source; "
                             "try later")


async def complete_file(sub: Subscriber, root: str, path: str,
                        verify: bool = False) -> tuple[Found, pathlib.Path]:
    """The dataset and its replica file, every chunk held (fetched if needed).  With
    ``verify`` (to serve the file), every chunk is checked against its digest first, and
    damaged ones are fetched again."""
    found = await lookup(sub, root, path)
    nchunks = list(range(found.meta.schunk.nchunks))
    for _ in range(READ_ATTEMPTS):
        found, replica, _ = await with_chunks(sub, found, nchunks)
        damaged = await asyncio.to_thread(replica.damaged_chunks, nchunks) if verify else []
        for _ in damaged:
            sub.metrics.digest_mismatch(root)
        if not damaged:
            return found, await asyncio.to_thread(replica.complete_file)
    raise HTTPException(503, f"the cached copy of {root}/{path} keeps failing its digest "
                             "checks (a failing disk?); it is not served")
