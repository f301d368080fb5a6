"""The subscriber's cache: root indexes and on-demand replicas of datasets.

Layout under ``STATEDIR/cache``::

    roots/ROOT/index.json                       every dataset of the root: version + metadata
    roots/ROOT/data/PATH/VTAG/replica.b2        Blosc2 replica, chunks filled on demand

A replica has the source's shape, chunks, blocks, dtype and compression parameters; its
chunks start uninitialised and are filled, exactly as stored at the source, when a client
needs them.  Each version of a dataset has its own directory, so a chunk of an old version
can never land in a new one; a change drops the old directory.

A replica is one contiguous Blosc2 frame: storing a chunk appends it and rewrites the
frame's small trailer, never other chunks.  Once every chunk is held, the replica file is
itself a complete, valid Blosc2 file, and downloads are served from it with no copy.  A
replica that fails to open (after a crash mid-write) is discarded and rebuilt from the
source; a damaged chunk counts as missing and is fetched again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import threading
import uuid
import weakref
from collections import OrderedDict
from typing import Any

import blosc2
import numpy as np

from caterva2 import b2, paths
from caterva2.services import common

log = logging.getLogger("caterva2.cache")
MAX_OPEN_REPLICAS = 256


class Replica:
    """One version of one dataset, held locally; all Blosc2 access under one lock."""

    def __init__(self, directory: pathlib.Path, entry: dict[str, Any]):
        self.directory = directory
        self.meta = entry["meta"]
        self.version = entry["version"]
        self.is_array = self.meta["kind"] == "ndarray"
        self.file = directory / "replica.b2"
        self.lock = threading.Lock()
        self.write_error: OSError | None = None  # why a store failed (see Follower)
        self.obj = self._open_or_create()

    # -- creation ---------------------------------------------------------------------
    def _open_or_create(self):
        if self.file.is_dir():  # a sparse replica of an older layout: start again
            shutil.rmtree(self.directory, ignore_errors=True)
        if self.file.exists():
            try:
                return blosc2.open(str(self.file), mode="a")
            except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
                log.warning("discarding unreadable replica %s: %s", self.file, e)
                shutil.rmtree(self.directory, ignore_errors=True)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".new-{uuid.uuid4().hex}"
        self._create(tmp)
        os.replace(tmp, self.file)  # a replica appears whole or not at all
        return blosc2.open(str(self.file), mode="a")

    def _create(self, urlpath: pathlib.Path):
        meta, sc = self.meta, self.meta["schunk"]
        cparams = b2.cparams_from_dict(sc["cparams"])
        if self.is_array:
            obj = blosc2.uninit(tuple(meta["shape"]), b2.dtype_from_descr(meta["dtype_descr"]),
                                chunks=tuple(meta["chunks"]), blocks=tuple(meta["blocks"]),
                                cparams=cparams, urlpath=str(urlpath), contiguous=True,
                                mode="w")
            schunk = obj.schunk
        else:
            obj = schunk = blosc2.SChunk(chunksize=sc["chunksize"], urlpath=str(urlpath),
                                         contiguous=True, mode="w", cparams=cparams)
            if sc["nbytes"]:
                schunk.fill_special(sc["nbytes"] // sc["typesize"],
                                    blosc2.SpecialValue.UNINIT)
        for key, value in sc.get("vlmeta", {}).items():
            schunk.vlmeta[key] = value
        return obj

    @property
    def schunk(self) -> blosc2.SChunk:
        return self.obj.schunk if self.is_array else self.obj

    # -- chunks -----------------------------------------------------------------------
    def missing(self, nchunks: list[int]) -> list[int]:
        """Which of ``nchunks`` are not held yet (a damaged chunk counts as not held)."""
        with self.lock:
            return [n for n in nchunks if not self._holds(n)]

    def _holds(self, nchunk: int) -> bool:
        try:
            return not b2.is_uninit_chunk(self.schunk.get_lazychunk(nchunk))
        except RuntimeError:  # unreadable (truncated by a crash, a full disk...): refetch
            log.warning("chunk %d of %s is damaged; fetching it again", nchunk, self.file)
            return False

    def store(self, nchunk: int, chunk: bytes) -> None:
        """Store a chunk exactly as received from the source.

        A failed write leaves the replica damaged: the caller must discard it.  Raises the
        OSError of the disk (full, over quota, read-only...) if that is why, else
        RuntimeError.
        """
        b2.check_chunk(chunk)
        with self.lock:
            try:
                self.schunk.update_chunk(nchunk, chunk)
            except RuntimeError:  # (Blosc2 does not say why)
                check_writable(self.directory, self.file.stat().st_size, len(chunk))
                raise

    def chunk_sizes(self, nchunks: list[int]) -> list[int]:
        """Stored sizes of held chunks, from their headers."""
        with self.lock:
            return b2.stored_sizes(self.schunk, nchunks)

    def read_chunks(self, nchunks: list[int]) -> list[bytes]:
        """Chunks exactly as stored; ValueError if one is damaged."""
        with self.lock:
            chunks = [self.schunk.get_chunk(n) for n in nchunks]
        for chunk in chunks:
            b2.check_chunk(chunk)
        return chunks

    # -- reads ------------------------------------------------------------------------
    def read_array(self, region: tuple[slice, ...]) -> np.ndarray:
        """The elements of ``region`` (every chunk it touches must be held)."""
        with self.lock:
            if not region:
                return self.obj[()]
            return self.obj[region]

    def read_items(self, start: int, stop: int) -> bytes:
        """Items ``start:stop`` of a SChunk, as bytes."""
        with self.lock:
            return self.obj[start:stop] if stop > start else b""

    # -- downloads --------------------------------------------------------------------
    def complete_file(self) -> pathlib.Path:
        """The replica file, which is the complete dataset once every chunk is held.

        Raises RuntimeError if a chunk is missing: a partial file is never handed out.
        """
        missing = self.missing(list(range(self.schunk.nchunks)))
        if missing:
            raise RuntimeError(f"{len(missing)} chunks are not cached")
        return self.file


def check_writable(directory: pathlib.Path, size: int, nbytes: int) -> None:
    """Raise the OSError met by a file of ``size`` bytes in ``directory`` growing by
    ``nbytes`` (a full disk, a quota, a file size limit...), if any."""
    probe = directory / f".probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.seek(size)  # (a hole: no space taken)
            f.write(bytes(nbytes))  # (real blocks: these need the space)
    finally:
        probe.unlink(missing_ok=True)


def version_tag(version: str) -> str:
    """A short, filesystem-safe name for a version tag."""
    return hashlib.sha1(version.encode()).hexdigest()[:16]


class Cache:
    """Indexes and replicas of every subscribed root.  Methods may block: call from a thread."""

    def __init__(self, directory: pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.indexes: dict[str, dict[str, dict[str, Any]]] = {}
        # Replicas kept open (the most recently used), and every replica still in use
        # anywhere (a long download may outlive its place among the recent): one object
        # per replica, never two handles appending to one file.
        self.replicas: OrderedDict[tuple[str, str, str], Replica] = OrderedDict()
        self.in_use: weakref.WeakValueDictionary[tuple[str, str, str], Replica] = \
            weakref.WeakValueDictionary()
        self.lock = threading.RLock()

    def _root_dir(self, root: str) -> pathlib.Path:
        return self.directory / "roots" / paths.check_root_name(root)

    def _data_dir(self, root: str, path: str) -> pathlib.Path:
        return self._root_dir(root) / "data" / paths.check_relpath(path)

    # -- indexes ----------------------------------------------------------------------
    def index(self, root: str) -> dict[str, dict[str, Any]] | None:
        """The cached index of ``root`` (path → entry), or None if never fetched."""
        with self.lock:
            if root not in self.indexes:
                data = common.read_json(self._root_dir(root) / "index.json", None)
                if data is None:
                    return None
                self.indexes[root] = data
            return self.indexes[root]

    def loaded_index(self, root: str) -> dict[str, dict[str, Any]] | None:
        """The index of ``root`` if already in memory (never blocks: callable from async code)."""
        return self.indexes.get(root)

    def set_index(self, root: str, datasets: dict[str, dict[str, Any]]) -> None:
        """Replace a root's index, dropping replicas of changed and deleted datasets."""
        datasets = {p: e for p, e in datasets.items() if _safe(p)}
        with self.lock:
            old = self.index(root) or {}
            common.atomic_write(self._root_dir(root) / "index.json", json.dumps(datasets))
            self.indexes[root] = datasets
            for path, entry in old.items():
                if datasets.get(path, {}).get("version") != entry["version"]:
                    self._drop(root, path, keep=datasets.get(path))

    def update(self, root: str, changed: dict[str, dict[str, Any]], deleted: list[str]) -> None:
        """Apply a change event to a root's index."""
        with self.lock:
            datasets = dict(self.index(root) or {})
            datasets.update(changed)
            for path in deleted:
                datasets.pop(path, None)
            self.set_index(root, datasets)

    def drop_root(self, root: str) -> None:
        with self.lock:
            for key in [k for k in self.in_use if k[0] == root]:
                self._forget(key)
            self.indexes.pop(root, None)
            _trash(self._root_dir(root), self.directory)

    def _drop(self, root: str, path: str, keep: dict[str, Any] | None) -> None:
        """Forget every version of a dataset but ``keep``'s."""
        keep_tag = version_tag(keep["version"]) if keep else None
        for key in [k for k in self.in_use if k[:2] == (root, path)]:
            if keep is None or key[2] != keep["version"]:
                self._forget(key)
        data_dir = self._data_dir(root, path)
        if data_dir.is_dir():
            for child in data_dir.iterdir():
                if child.name != keep_tag:
                    _trash(child, self.directory)

    # -- replicas ---------------------------------------------------------------------
    def replica(self, root: str, path: str, entry: dict[str, Any]) -> Replica:
        """The replica of this version of a dataset, created (empty) if needed."""
        key = (root, path, entry["version"])
        with self.lock:
            replica = self.in_use.get(key)
            if replica is None:
                replica = Replica(self._data_dir(root, path) / version_tag(entry["version"]),
                                  entry)
                self.in_use[key] = replica
            self.replicas[key] = replica
            self.replicas.move_to_end(key)
            while len(self.replicas) > MAX_OPEN_REPLICAS:
                self.replicas.popitem(last=False)
            return replica

    def _forget(self, key: tuple[str, str, str]) -> None:
        """Stop handing out this replica (its readers and writers keep their object)."""
        self.replicas.pop(key, None)
        self.in_use.pop(key, None)

    def discard(self, root: str, path: str, entry: dict[str, Any]) -> None:
        """Throw away a replica found to be damaged; the next read rebuilds it."""
        with self.lock:
            self._forget((root, path, entry["version"]))
            _trash(self._data_dir(root, path) / version_tag(entry["version"]), self.directory)


def _safe(path: str) -> bool:
    try:
        paths.check_relpath(path)
        return True
    except ValueError:
        log.warning("ignoring dataset with unsafe path %r", path)
        return False


def _trash(target: pathlib.Path, cache_dir: pathlib.Path) -> None:
    """Remove a directory: first renamed away (atomic), then deleted."""
    if not target.exists():
        return
    trash = cache_dir / ".trash" / uuid.uuid4().hex
    trash.parent.mkdir(exist_ok=True)
    try:
        os.replace(target, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)
