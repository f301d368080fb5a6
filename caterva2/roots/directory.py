"""A directory published as a root: ``.b2nd`` arrays, ``.b2frame`` SChunks, ordinary files."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pathlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

import blosc2
import watchfiles

from caterva2 import chunks, metadata, paths
from caterva2.models import AnyMeta, DatasetEntry

from .base import (
    DatasetNotFound,
    DatasetUnavailable,
    PublishedRoot,
    VersionMismatch,
    without_paths,
)

log = logging.getLogger(__name__)

FILE_CHUNKSIZE = 1 << 20  # ordinary files are compressed in chunks of 1 MiB
FILE_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "typesize": 1}
MAX_OPEN = 64
IDENTITY_CHECK_S = 1.0  # how often an idle watch checks that the root is the same directory


def file_version(st: os.stat_result) -> str:
    """A version tag from what changes when a file is rewritten."""
    return f"{st.st_mtime_ns:x}-{st.st_size:x}-{st.st_ino:x}"


class DirectoryRoot(PublishedRoot):
    """Every regular file below ``directory`` (hidden ones and links out of it excluded)."""

    def __init__(self, directory: str | os.PathLike, statedir: str | os.PathLike):
        self.directory = pathlib.Path(directory).resolve()
        self.compressed_dir = pathlib.Path(statedir) / "files"
        self._entries: dict[str, DatasetEntry] = {}  # path -> entry, for its version
        self._handles: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    # -- paths -------------------------------------------------------------------------
    def _source(self, path: str) -> pathlib.Path:
        """The file of a dataset path, never outside the root."""
        parts = pathlib.PurePosixPath(path).parts
        if not parts or path.startswith("/") or any(p in ("..", ".") or p.startswith(".")
                                                     for p in parts):
            raise DatasetNotFound(path)
        full = self.directory.joinpath(*parts)
        try:
            real = full.resolve(strict=True)
        except OSError:
            raise DatasetNotFound(path) from None
        if not real.is_relative_to(self.directory) or not real.is_file():
            raise DatasetNotFound(path)
        return real

    def versions(self) -> dict[str, str]:
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.directory, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = pathlib.Path(dirpath).relative_to(self.directory)
            for name in filenames:
                if name.startswith("."):
                    continue
                full = pathlib.Path(dirpath, name)
                try:
                    if not full.resolve().is_relative_to(self.directory):
                        continue
                    st = full.stat()
                except OSError:
                    continue  # vanished while scanning
                found[(rel / name).as_posix()] = file_version(st)
        return found

    # -- metadata ----------------------------------------------------------------------
    def entry(self, path: str) -> DatasetEntry:
        source = self._source(path)
        version = _version_of(source, path)
        cached = self._entries.get(path)
        if cached and cached.version == version:
            return cached
        try:
            meta = self._read_meta(path, source, version)
        except (DatasetNotFound, DatasetUnavailable):
            raise
        except Exception as e:  # noqa: BLE001 - blosc2 raises several kinds on a bad or partial one
            raise self._unreadable(path, e, version) from None
        # A file rewritten while we read it must not be announced with stale metadata.
        if _version_now(source) != version:
            raise DatasetUnavailable(f"{path}: changed while being read", version)
        entry = DatasetEntry(version=version, meta=meta)
        self._entries[path] = entry
        return entry

    def _read_meta(self, path: str, source: pathlib.Path, version: str) -> AnyMeta:
        kind = paths.dataset_kind(path)
        if kind == "ndarray":
            array = blosc2.open(str(source), mode="r")
            if not isinstance(array, blosc2.NDArray):
                raise DatasetUnavailable(f"{path}: not a Blosc2 NDArray", version)
            return metadata.array_meta(array)
        if kind == "frame":
            schunk = blosc2.open(str(source), mode="r")
            if isinstance(schunk, blosc2.NDArray):
                schunk = schunk.schunk
            return metadata.frame_meta(schunk)
        compressed = self._compressed(path, source, version)
        st = source.stat()
        return metadata.file_meta(blosc2.open(str(compressed)), st.st_size, st.st_mtime)

    def _compressed(self, path: str, source: pathlib.Path, version: str) -> pathlib.Path:
        """The ordinary file compressed into a SChunk, made once per version, in bounded memory."""
        tag = hashlib.sha1(f"{path}\0{version}".encode()).hexdigest()[:16]
        target = self.compressed_dir / f"{path}.{tag}.b2"
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        for old in target.parent.glob(f"{pathlib.Path(path).name}.{'[0-9a-f]' * 16}.b2"):
            old.unlink(missing_ok=True)  # earlier versions of this file
        tmp = target.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
        schunk = blosc2.SChunk(chunksize=FILE_CHUNKSIZE, urlpath=str(tmp), mode="w",
                               contiguous=True, cparams=FILE_CPARAMS)
        with open(source, "rb") as f:
            while block := f.read(FILE_CHUNKSIZE):
                schunk.append_data(block)
        del schunk
        os.replace(tmp, target)
        return target

    # -- data --------------------------------------------------------------------------
    def read_chunk(self, path: str, nchunk: int, version: str | None = None) -> bytes:
        return self.read_chunks(path, [nchunk], version)[0]

    def read_chunks(self, path: str, nchunks: list[int],
                    version: str | None = None) -> list[bytes]:
        source, current, (keepalive, schunk) = self._current(path, version)  # noqa: RUF059
        for n in nchunks:
            if not 0 <= n < schunk.nchunks:
                if version is not None:  # checked against that version: the file changed
                    raise VersionMismatch(path)
                raise IndexError(f"{path} has {schunk.nchunks} chunks, not {n + 1}")
        try:
            with self._lock:
                found = [schunk.get_chunk(n) for n in nchunks]
        except RuntimeError as e:
            raise DatasetUnavailable(f"{path}: chunk unreadable ({e})") from None
        if _version_now(source) != current:
            raise VersionMismatch(path)  # rewritten while we read: do not serve a mix
        return found

    def chunk_sizes(self, path: str, nchunks: list[int], version: str) -> list[int] | None:
        source, current, (keepalive, schunk) = self._current(path, version)  # noqa: RUF059
        try:
            with self._lock:
                sizes = chunks.stored_sizes(schunk, nchunks)
        except RuntimeError:
            return None
        if _version_now(source) != current:
            raise VersionMismatch(path)  # rewritten while we read: the sizes may be of neither
        return sizes

    def _current(self, path: str, version: str | None):
        """``(source, current version, (obj, schunk))``; VersionMismatch unless ``version``
        (if given) is still the current one."""
        source = self._source(path)
        current = _version_of(source, path)
        if version is not None and version != current:
            raise VersionMismatch(path)
        return source, current, self._open(path, source, current)

    def _open(self, path: str, source: pathlib.Path, version: str):
        """``(obj, schunk)`` of a dataset version, opened once and kept in an LRU.

        The caller must keep ``obj`` while using ``schunk``: an NDArray's SChunk is only valid
        while the NDArray lives (an evicted handle must not pull it from under a reader).
        """
        key = (path, version)
        with self._lock:  # (opening inside the lock: concurrent first reads open it once)
            if key in self._handles:
                self._handles.move_to_end(key)
                return self._handles[key]
            try:
                if paths.dataset_kind(path) != "file":
                    obj = blosc2.open(str(source), mode="r")
                else:
                    obj = blosc2.open(str(self._compressed(path, source, version)), mode="r")
            except Exception as e:  # noqa: BLE001 - being rewritten, or damaged
                raise self._unreadable(path, e, version) from None
            schunk = obj.schunk if isinstance(obj, blosc2.NDArray) else obj
            self._handles[key] = (obj, schunk)
            while len(self._handles) > MAX_OPEN:
                self._handles.popitem(last=False)
            return obj, schunk

    def _unreadable(self, path: str, error: Exception, version: str) -> DatasetUnavailable:
        """The error for a file Blosc2 cannot read, naming no server path."""
        text = without_paths(error, self.compressed_dir, self.directory)
        return DatasetUnavailable(f"{path}: not readable as Blosc2 ({text})", version)

    def stored_file(self, path: str) -> pathlib.Path:
        source = self._source(path)
        if paths.dataset_kind(path) != "file":
            return source
        return self._compressed(path, source, _version_of(source, path))

    async def changes(self) -> AsyncIterator[None]:
        """Yields after changes below the directory, and when the directory itself is
        replaced (``mv new root``) or removed: a watch follows the directory it started on,
        so it is started again on whatever holds the root's path then."""
        while True:
            watched = _identity(self.directory)
            if watched is None:  # removed: look for it again now and then
                await asyncio.sleep(IDENTITY_CHECK_S)
            else:
                # Short debounce: changes reach subscribers quickly; a file still being
                # written produces more events and a new version tag, so it is re-read
                # until it settles.  Idle watches wake up to check the directory itself.
                async for batch in watchfiles.awatch(
                        self.directory, debounce=30, step=10, recursive=True,
                        rust_timeout=int(IDENTITY_CHECK_S * 1000), yield_on_timeout=True):
                    if _identity(self.directory) != watched:
                        break
                    if batch:
                        yield None
            if _identity(self.directory) != watched:
                log.info("%s was replaced or removed; watching it anew", self.directory)
                yield None

    def close(self) -> None:
        with self._lock:
            self._handles.clear()


def _identity(directory: pathlib.Path) -> tuple[int, int] | None:
    """Which directory is at this path now (None if none)."""
    try:
        st = directory.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _version_now(source: pathlib.Path) -> str | None:
    """The file's version tag now; None if it was removed since it was found."""
    try:
        return file_version(source.stat())
    except OSError:
        return None


def _version_of(source: pathlib.Path, path: str) -> str:
    """The file's version tag; DatasetNotFound if it was removed since it was found."""
    version = _version_now(source)
    if version is None:
        raise DatasetNotFound(path)
    return version
