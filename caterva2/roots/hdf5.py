"""An HDF5 file published directly as a root (``cat2pub NAME FILE.h5``; needs the 'hdf5' extra).

Each dataset ``a/b`` of the file appears as the NDArray ``a/b.b2nd`` (groups are
directories; a group's attributes are the vlmeta of ``GROUP/__attrs__.b2frame``), laid out
as ``cat2import`` would write it (see :mod:`caterva2.hdf5`).  Nothing is converted up front:
a chunk is converted when a subscriber first asks for it, and kept in a per-version cache
NDArray under the publisher's state directory, from which it is served as stored.

Every dataset's version tag is the file's (mtime, size, inode): any change to the file
changes them all, which is coarse but never serves stale data.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import blosc2
import watchfiles

from caterva2 import b2

from .base import (
    DatasetNotFound,
    DatasetUnavailable,
    PublishedRoot,
    VersionMismatch,
    without_paths,
)
from .directory import file_version

try:
    import h5py

    from caterva2 import hdf5
except ImportError as e:  # reported when an HDF5 root is opened
    h5py = hdf5 = None
    MISSING = e

log = logging.getLogger(__name__)
MAX_OPEN = 64
DIRTY_MARK = "in-use"  # present while a publisher uses the cache; left behind by a crash


class HDF5Root(PublishedRoot):
    """The datasets of one HDF5 file, converted to Blosc2 chunk by chunk on demand."""

    def __init__(self, path: str | os.PathLike, statedir: str | os.PathLike):
        if h5py is None:
            raise ValueError(f"publishing an HDF5 file needs the 'hdf5' extra "
                             f"(pip install 'caterva2[hdf5]'): {MISSING}")
        self.path = pathlib.Path(path).resolve()
        try:
            hdf5.check_hdf5(self.path)
        except hdf5.ConversionError as e:
            raise ValueError(str(e)) from None
        self.cachedir = pathlib.Path(statedir) / "hdf5-cache"
        if (self.cachedir / DIRTY_MARK).exists():
            # Chunks being written when the last publisher died may be damaged.
            log.warning("discarding the chunk cache of an unclean shutdown")
            shutil.rmtree(self.cachedir, ignore_errors=True)
        self.cachedir.mkdir(parents=True, exist_ok=True)
        (self.cachedir / DIRTY_MARK).touch()
        self._lock = threading.RLock()
        self._version: str | None = None  # the file version the state below describes
        self._readable = False
        self._file: h5py.File | None = None
        self._listing: dict[str, tuple[str, str]] = {}  # path -> (kind, HDF5 name)
        self._entries: dict[str, dict[str, Any]] = {}
        self._layouts: dict[str, hdf5.Layout] = {}
        self._arrays: OrderedDict[str, blosc2.NDArray] = OrderedDict()

    # -- the file and its versions -----------------------------------------------------
    def _stat_version(self) -> str | None:
        try:
            return file_version(self.path.stat())
        except OSError:
            return None

    def _sync(self) -> str | None:
        """Bring the state up to the file's current version, which is returned."""
        version = self._stat_version()
        with self._lock:
            if version == self._version:
                return version
            self._forget()
            self._version = version
            if version is None:
                self._listing = {}
                return None
            try:
                self._file = h5py.File(self.path, "r", locking=False)
                self._listing = self._scan(self._file)
                self._readable = True
            except Exception as e:  # noqa: BLE001 - a file being written, or not HDF5 now
                # Keep the previous paths: their entries are unavailable until the file
                # settles (a new version), rather than announced as deleted.
                log.info("%s not readable now: %s", self.path, e)
                self._close_file()
            self._drop_other_caches(version)
            return version

    def _scan(self, h5: h5py.File) -> dict[str, tuple[str, str]]:
        def warn(message: str) -> None:
            log.warning("%s: %s", self.path.name, message)

        listing = {}
        if h5.attrs:
            listing[hdf5.GROUP_ATTRS] = ("attrs", "/")
        for name, obj in hdf5.walk(h5, warn):
            if isinstance(obj, h5py.Group):
                if obj.attrs:
                    listing[f"{name}/{hdf5.GROUP_ATTRS}"] = ("attrs", name)
                continue
            reason = hdf5.unsupported_reason(obj.dtype)
            if reason:
                warn(f"{name}: {reason}, not published")
            else:
                listing[f"{name}.b2nd"] = ("dataset", name)
        return listing

    def _forget(self) -> None:
        self._close_file()
        self._entries.clear()
        self._layouts.clear()
        self._arrays.clear()
        self._readable = False

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):  # closing a file that went bad
                self._file.close()
            self._file = None

    def _drop_other_caches(self, version: str) -> None:
        for child in self.cachedir.iterdir():
            if child.is_dir() and child.name != version:
                shutil.rmtree(child, ignore_errors=True)

    def _scrub(self, error: Exception) -> str:
        """An error's text for clients: no server directories in it."""
        return without_paths(error, self.path.parent, self.cachedir)

    def versions(self) -> dict[str, str]:
        version = self._sync()
        with self._lock:
            return {path: version for path in self._listing} if version else {}

    # -- metadata ----------------------------------------------------------------------
    def entry(self, path: str) -> dict[str, Any]:
        version = self._sync()
        with self._lock:
            if version is None or path not in self._listing:
                raise DatasetNotFound(path)
            if not self._readable:
                raise DatasetUnavailable(f"{path}: {self.path.name} is not readable now",
                                         version)
            if path in self._entries:
                return self._entries[path]
            kind, name = self._listing[path]
            try:
                meta = self._attrs_meta(name) if kind == "attrs" else self._array_meta(path,
                                                                                     name)
            except Exception as e:  # noqa: BLE001 - h5py and blosc2 raise several kinds
                raise DatasetUnavailable(f"{path}: not readable now ({self._scrub(e)})",
                                         version) from None
            if self._stat_version() != version:
                raise DatasetUnavailable(f"{path}: the file changed while being read", version)
            entry = {"version": version, "meta": meta}
            self._entries[path] = entry
            return entry

    def _attrs_meta(self, name: str) -> dict[str, Any]:
        schunk = blosc2.SChunk()
        for key, value in self._read_attrs(self._file[name], name).items():
            schunk.vlmeta[key] = value
        return {"kind": "frame", "schunk": b2.schunk_meta(schunk)}

    def _read_attrs(self, obj, name: str) -> dict[str, Any]:
        return hdf5.read_attrs(obj, name, lambda m: log.info("%s: %s", self.path.name, m))

    def _array_meta(self, path: str, name: str) -> dict[str, Any]:
        dset = self._file[name]
        layout = hdf5.dataset_layout(dset)
        attrs = self._read_attrs(dset, name)
        if layout.null:
            attrs[hdf5.KIND_ATTR] = hdf5.NULL_KIND
        meta = b2.array_meta(hdf5.new_array(layout, vlmeta=attrs))  # an in-memory skeleton
        # Sizes at the source: what the HDF5 file holds for this dataset.
        stored = int(dset.id.get_storage_size()) if dset.shape is not None else 0
        meta["schunk"]["cbytes"] = stored
        meta["schunk"]["cratio"] = meta["schunk"]["nbytes"] / stored if stored else 0.0
        self._layouts[path] = layout
        return meta

    # -- data --------------------------------------------------------------------------
    def read_chunk(self, path: str, nchunk: int, version: str | None = None) -> bytes:
        current = self._sync()
        if current is None:
            raise DatasetNotFound(path)
        if version is not None and version != current:
            raise VersionMismatch(path)
        entry = self.entry(path)
        nchunks = entry["meta"]["schunk"]["nchunks"]
        if not 0 <= nchunk < nchunks:
            raise IndexError(f"{path} has {nchunks} chunks, not {nchunk + 1}")
        with self._lock:
            try:
                array = self._cache_array(path, current)
                if b2.is_uninit_chunk(array.schunk.get_lazychunk(nchunk)):
                    hdf5.copy_chunk(self._file[self._listing[path][1]], self._layouts[path],
                                    array, nchunk)
                chunk = array.schunk.get_chunk(nchunk)
            except Exception as e:  # noqa: BLE001 - h5py and blosc2 raise several kinds
                if self._stat_version() != current:
                    raise VersionMismatch(path) from None
                raise DatasetUnavailable(f"{path}: chunk {nchunk} not readable "
                                         f"({self._scrub(e)})") from None
        if self._stat_version() != current:
            raise VersionMismatch(path)  # rewritten while we read: do not serve a mix
        return chunk

    def _cache_array(self, path: str, version: str) -> blosc2.NDArray:
        """The cache NDArray of a dataset for this version (made on first use)."""
        if path in self._arrays:
            self._arrays.move_to_end(path)
            return self._arrays[path]
        file = self.cachedir / version / path
        array = None
        if file.exists():
            try:
                array = blosc2.open(str(file), mode="a")
            except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
                log.warning("discarding unreadable cache %s: %s", file, e)
        if array is None:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_name(f".{file.name}.{uuid.uuid4().hex}")
            hdf5.new_array(self._layouts[path], str(tmp))  # written on disk as it is made
            os.replace(tmp, file)  # the cache array appears whole or not at all
            array = blosc2.open(str(file), mode="a")
        self._arrays[path] = array
        while len(self._arrays) > MAX_OPEN:
            self._arrays.popitem(last=False)
        return array

    async def changes(self) -> AsyncIterator[None]:
        name = self.path.name

        def this_file(change: watchfiles.Change, changed: str) -> bool:
            return pathlib.Path(changed).name == name

        # Rewriting or appending produces a burst of events; a short debounce groups them,
        # and a file still being written is re-read once it settles (a new version).
        async for _ in watchfiles.awatch(self.path.parent, watch_filter=this_file,
                                         debounce=30, step=10, recursive=False):
            yield None

    def close(self) -> None:
        with self._lock:
            self._forget()
            self._version = None
        (self.cachedir / DIRTY_MARK).unlink(missing_ok=True)
