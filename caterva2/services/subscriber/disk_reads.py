"""Reading the cache from another process: what a front worker (see :mod:`.front`) answers
from, while the owner worker writes it.

The owner is the only process that writes the cache (see :mod:`.cache` for its layout);
a front only reads, and says "I cannot tell" (None) whenever anything is uncertain, so that
the request goes to the owner instead.  Two things make reads safe without any lock shared
between processes:

- **Indexes** (``roots/ROOT/index.json``) are replaced whole by a rename: a front re-reads
  one when its file changes (one ``stat`` a request), so it always has some whole version.
  A replica directory belongs to one version (VTAG), so an answer built from the index's
  entry and that entry's replica never mixes versions.
- **Replicas** are Blosc2 frames that the owner fills by appending chunks (a held chunk's
  bytes are never rewritten in place) and rewriting the small trailer.  A front keeps a
  read-only handle per replica, keyed by the file's identity (inode, size, mtime) and that
  of its digests file, and opens it again when either changes.  Before answering, every
  chunk it reads is checked against its digest (a chunk without a digest is not held), and
  once the answer is built the files' identity is checked again: a write that happened
  meanwhile (the frame grew) voids the answer.  A torn or stale chunk is never served.

  Every read checks its chunks again, as the owner does: damage on the disk changes
  neither a file's size nor its time, and a damaged chunk is never served.
  :data:`RECHECK_S` could spare the hashing for a while after a check (reading and hashing
  a 2 MB chunk for every 10x10 read was half of a front's time per read, 0.28 of 0.55 ms),
  but it stays 0: a bit flip on disk would be served until the next check.

A replica removed by the owner (eviction, new version) stays readable through an open
handle until it is closed: handles of files that changed or vanished are closed at the next
:meth:`ReplicaHandles.prune` (the front calls it twice a second), so a removed file does not
hold its room for long.
"""
from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections import OrderedDict
from typing import Any

import blosc2
import numpy as np
from pydantic import ValidationError

from caterva2 import paths, wire
from caterva2.models import AnyMeta, ArrayMeta, DatasetEntry
from caterva2.services.subscriber.cache import _INDEX, REPLICA_FILE, Index, version_tag

log = logging.getLogger("caterva2.front")
MAX_HANDLES = 64  # replicas a front keeps open
RECHECK_S = 0.0  # how long a chunk checked against its digest is taken as good (0: every read)

Identity = tuple[int, int, int, int]  # inode, size, mtime (ns), device


def identity(file: pathlib.Path) -> Identity | None:
    """What changes when a file is written or replaced; None if it does not exist."""
    try:
        st = os.stat(file)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_dev


class DiskIndexes:
    """The indexes of the cache under ``cache_dir``, as the owner last wrote them."""

    def __init__(self, cache_dir: pathlib.Path):
        self.cache_dir = pathlib.Path(cache_dir)
        self._loaded: dict[str, tuple[Identity, Index]] = {}
        self._lock = threading.Lock()

    def index(self, root: str) -> Index | None:
        """The index of ``root`` (None if there is none, or it cannot be read)."""
        file = self.cache_dir / "roots" / paths.check_root_name(root) / "index.json"
        now = identity(file)
        if now is None:
            return None
        with self._lock:
            loaded = self._loaded.get(root)
            if loaded is not None and loaded[0] == now:
                return loaded[1]
        try:
            index = _INDEX.validate_json(file.read_bytes())
        except (OSError, ValidationError):  # (replaced meanwhile, or damaged: ask the owner)
            return None
        if identity(file) != now:  # (replaced while being read: take it next time)
            return None
        with self._lock:
            self._loaded[root] = (now, index)
        return index

    def entry(self, root: str, path: str) -> DatasetEntry | None:
        """The dataset's entry if it is listed with metadata."""
        index = self.index(root)
        entry = index.get(path) if index is not None else None
        return entry if entry is not None and entry.meta is not None else None


class ReadOnlyReplica:
    """One replica file opened for reading by a front; every Blosc2 access under a lock."""

    def __init__(self, file: pathlib.Path, meta: AnyMeta, key: tuple[Identity, Identity]):
        self.file, self.meta, self.key = file, meta, key
        self.is_array = isinstance(meta, ArrayMeta)
        self.lock = threading.Lock()
        self.container: Any = blosc2.open(str(file), mode="r")
        schunk = self.container.schunk if self.is_array else self.container
        self.schunk = schunk
        nchunks = int(schunk.nchunks)
        digests = file.with_name(file.name + ".digests")
        if nchunks != meta.schunk.nchunks or digests.stat().st_size != 8 * nchunks:
            raise ValueError(f"{file} does not have the layout of its dataset")
        self.digests = (np.memmap(digests, dtype="<u8", mode="r", shape=(nchunks,))
                        if nchunks else np.zeros(0, dtype="<u8"))
        self.checked: dict[int, float] = {}  # chunk -> when it last matched its digest

    def verified(self, nchunks: list[int]) -> bool:
        """Whether every chunk of ``nchunks`` is held and matches its digest (see the
        module's docstring: checked again after :data:`RECHECK_S`)."""
        now = time.monotonic()
        with self.lock:
            for n in nchunks:
                if now - self.checked.get(n, -RECHECK_S) < RECHECK_S:
                    continue
                digest = int(self.digests[n])
                if not digest or wire.chunk_digest(self.schunk.get_chunk(n)) != digest:
                    return False
                self.checked[n] = now
        return True

    def read_array(self, region: tuple[slice, ...]) -> np.ndarray:
        with self.lock:
            return self.container[()] if not region else self.container[region]

    def read_items(self, start: int, stop: int) -> bytes:
        with self.lock:
            return self.container[start:stop] if stop > start else b""

    def close(self) -> None:
        with self.lock:
            self.container = self.schunk = None
            self.digests = np.zeros(0, dtype="<u8")


class ReplicaHandles:
    """Read-only handles of the replicas under ``cache_dir``, the last used kept open."""

    def __init__(self, cache_dir: pathlib.Path):
        self.cache_dir = pathlib.Path(cache_dir)
        self._open: OrderedDict[pathlib.Path, ReadOnlyReplica] = OrderedDict()
        self._lock = threading.Lock()

    def replica_file(self, root: str, path: str, version: str) -> pathlib.Path:
        return (self.cache_dir / "roots" / paths.check_root_name(root) / "data" /
                paths.check_relpath(path) / version_tag(version) / REPLICA_FILE)

    def _key(self, file: pathlib.Path) -> tuple[Identity, Identity] | None:
        frame, digests = identity(file), identity(file.with_name(file.name + ".digests"))
        return None if frame is None or digests is None else (frame, digests)

    def _handle(self, file: pathlib.Path, meta: AnyMeta,
                key: tuple[Identity, Identity]) -> ReadOnlyReplica | None:
        with self._lock:
            handle = self._open.get(file)
            if handle is not None and handle.key == key:
                self._open.move_to_end(file)
                return handle
        try:
            new = ReadOnlyReplica(file, meta, key)
        except Exception as e:  # noqa: BLE001 - being written, damaged...: ask the owner
            log.debug("cannot read %s now: %s", file, e)
            return None
        stale = []
        with self._lock:
            old = self._open.pop(file, None)
            if old is not None:
                stale.append(old)
            self._open[file] = new
            while len(self._open) > MAX_HANDLES:
                stale.append(self._open.popitem(last=False)[1])
        for handle in stale:
            handle.close()
        return new

    def answer(self, root: str, path: str, entry: DatasetEntry, nchunks: list[int],
               build: Any) -> bytes | None:
        """``build(replica)`` if every chunk of ``nchunks`` of this version is held and
        checked, and nothing was written to the replica meanwhile; else None (the owner
        answers).  Blocks: call from a thread."""
        assert entry.meta is not None
        file = self.replica_file(root, path, entry.version)
        key = self._key(file)
        if key is None:
            return None
        handle = self._handle(file, entry.meta, key)
        if handle is None:
            return None
        try:
            if not handle.verified(nchunks):
                return None
            body = build(handle)
        except Exception as e:  # noqa: BLE001 - closed, torn, damaged...: ask the owner
            log.debug("cannot answer from %s: %s", file, e)
            return None
        return body if self._key(file) == key else None

    def prune(self) -> None:
        """Close the handles of replica files that changed or are gone."""
        with self._lock:
            files = list(self._open.items())
        stale = [(f, h) for f, h in files if self._key(f) != h.key]
        with self._lock:
            for file, handle in stale:
                if self._open.get(file) is handle:
                    del self._open[file]
        for _, handle in stale:
            handle.close()

    def close(self) -> None:
        with self._lock:
            handles = list(self._open.values())
            self._open.clear()
        for handle in handles:
            handle.close()
