"""An HDF5 file published directly as a root (``cat2pub NAME FILE.h5``; needs the 'hdf5' extra).

Each dataset ``a/b`` of the file appears as the NDArray ``a/b.b2nd`` (groups are
directories; a group's attributes are the vlmeta of ``GROUP/__attrs__.b2frame``), laid out
as ``cat2import`` would write it (see :mod:`caterva2.h5convert`: variable-length strings
are served as fixed-size ones, a soft link to a dataset as that dataset; clients may name
``a/b`` without its suffix, see :meth:`caterva2.Client.info`).  Nothing is converted up
front: a chunk is converted when a subscriber first asks for it, and kept in a per-version
sparse replica (:class:`caterva2.replica.SparseReplica`) under the publisher's state
directory, ``hdf5-cache/VERSION/PATH``, from which it is served as stored.

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
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import blosc2
import watchfiles

from caterva2 import metadata
from caterva2.models import ArrayMeta, DatasetEntry, FrameMeta
from caterva2.replica import SparseReplica

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

    from caterva2 import h5convert
except ImportError as e:  # reported when an HDF5 root is opened
    h5py = h5convert = None  # type: ignore[assignment]
    MISSING = e

log = logging.getLogger(__name__)
MAX_OPEN = 64
DIRTY_MARK = "in-use"  # present while a publisher uses the cache; left behind by a crash


class HDF5Root(PublishedRoot):
    """The datasets of one HDF5 file, converted to Blosc2 chunk by chunk on demand."""

    offers_digests = False  # (digesting a version would convert every chunk of it)

    def __init__(self, path: str | os.PathLike, statedir: str | os.PathLike):
        if h5py is None:
            raise ValueError(f"publishing an HDF5 file needs the 'hdf5' extra "
                             f"(pip install 'caterva2[hdf5]'): {MISSING}")
        self.path = pathlib.Path(path).resolve()
        try:
            h5convert.check_hdf5(self.path)
        except h5convert.ConversionError as e:
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
        self._entries: dict[str, DatasetEntry] = {}
        self._layouts: dict[str, h5convert.Layout] = {}
        self._replicas: OrderedDict[str, SparseReplica] = OrderedDict()  # at most MAX_OPEN

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
            listing[h5convert.GROUP_ATTRS] = ("attrs", "/")
        for name, obj in h5convert.walk(h5, warn):
            if isinstance(obj, h5py.Group):
                if obj.attrs:
                    listing[f"{name}/{h5convert.GROUP_ATTRS}"] = ("attrs", name)
                continue
            reason = h5convert.unsupported_reason(obj.dtype)
            if reason:
                warn(f"{name}: {reason}, not published")
            else:
                listing[f"{name}.b2nd"] = ("dataset", name)
        return listing

    def _forget(self) -> None:
        self._close_file()
        self._entries.clear()
        self._layouts.clear()
        self._replicas.clear()
        self._readable = False

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):  # closing a file that went bad
                self._file.close()
            self._file = None

    def _object(self, name: str) -> Any:
        """The group or dataset ``name`` of the open file."""
        if self._file is None:
            raise RuntimeError(f"{self.path.name} is not open")
        return self._file[name]

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
    def entry(self, path: str) -> DatasetEntry:
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
            entry = DatasetEntry(version=version, meta=meta)
            self._entries[path] = entry
            return entry

    def _attrs_meta(self, name: str) -> FrameMeta:
        schunk = blosc2.SChunk()
        for key, value in self._read_attrs(self._object(name), name).items():
            schunk.vlmeta[key] = value
        return metadata.frame_meta(schunk)

    def _read_attrs(self, obj, name: str) -> dict[str, Any]:
        return h5convert.read_attrs(obj, name,
                                    lambda m: log.info("%s: %s", self.path.name, m))

    def _array_meta(self, path: str, name: str) -> ArrayMeta:
        dset = self._object(name)
        layout = h5convert.dataset_layout(dset)
        attrs = self._read_attrs(dset, name)
        if layout.null:
            attrs[h5convert.KIND_ATTR] = h5convert.NULL_KIND
        # An in-memory skeleton of the NDArray says what Blosc2 makes of the layout.
        meta = metadata.array_meta(h5convert.new_array(layout, vlmeta=attrs))
        # Sizes at the source: what the HDF5 file holds for this dataset.
        stored = int(dset.id.get_storage_size()) if dset.shape is not None else 0
        meta.schunk.cbytes = stored
        meta.schunk.cratio = meta.schunk.nbytes / stored if stored else 0.0
        self._layouts[path] = layout
        return meta

    # -- data --------------------------------------------------------------------------
    def read_chunk(self, path: str, nchunk: int, version: str | None = None) -> bytes:
        current = self._sync()
        if current is None:
            raise DatasetNotFound(path)
        if version is not None and version != current:
            raise VersionMismatch(path)
        meta = self.entry(path).meta
        nchunks = meta.schunk.nchunks if isinstance(meta, ArrayMeta) else 0  # (attributes)
        if not isinstance(meta, ArrayMeta) or not 0 <= nchunk < nchunks:
            raise IndexError(f"{path} has {nchunks} chunks, not {nchunk + 1}")
        with self._lock:
            try:
                chunk = self._converted_chunk(path, meta, current, nchunk)
            except Exception as e:  # noqa: BLE001 - h5py and blosc2 raise several kinds
                if self._stat_version() != current:
                    raise VersionMismatch(path) from None
                raise DatasetUnavailable(f"{path}: chunk {nchunk} not readable "
                                         f"({self._scrub(e)})") from None
        if self._stat_version() != current:
            raise VersionMismatch(path)  # rewritten while we read: do not serve a mix
        return chunk

    def _converted_chunk(self, path: str, meta: ArrayMeta, version: str, nchunk: int) -> bytes:
        """Chunk ``nchunk`` as stored in the dataset's replica, converted on first use."""
        replica = self._replica(path, meta, version)
        if replica.missing([nchunk]):
            dset, layout = self._object(self._listing[path][1]), self._layouts[path]
            try:
                replica.fill(nchunk, lambda array: h5convert.copy_chunk(dset, layout, array,
                                                                         nchunk))
            except Exception:
                if replica.damaged:  # a write failed: start that replica again next time
                    self._replicas.pop(path, None)
                    replica.file.unlink(missing_ok=True)
                raise
        return replica.read_chunks([nchunk])[0]

    def _replica(self, path: str, meta: ArrayMeta, version: str) -> SparseReplica:
        """The sparse replica of a dataset for this version (made on first use)."""
        if path in self._replicas:
            self._replicas.move_to_end(path)
            return self._replicas[path]
        replica = SparseReplica(self.cachedir / version / path, meta)
        self._replicas[path] = replica
        while len(self._replicas) > MAX_OPEN:
            self._replicas.popitem(last=False)
        return replica

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
