"""A sparse replica: a local Blosc2 file with a dataset's layout, filled chunk by chunk.

The subscriber keeps one per cached dataset version, and an HDF5 root one per converted
dataset: both start from the dataset's metadata with every chunk uninitialised, store
chunks exactly as they come from the source, and serve reads once the chunks a read
touches are held.

A replica is one contiguous Blosc2 frame: storing a chunk appends it and rewrites the
frame's small trailer, never other chunks.  Once every chunk is held the file is itself a
complete, valid Blosc2 file (downloads are served from it with no copy).  A file that fails
to open (after a crash mid-write) is replaced by an empty one.

Beside the frame, ``FILE.digests`` holds each chunk's digest (:func:`caterva2.wire.
chunk_digest`, 8 bytes a chunk, 0 for none), written once the chunk is stored.  A chunk
counts as held only with its digest, and every chunk read to be served is checked against
it: a chunk damaged in the file (a bit flip, a crash mid-write) is never served, but
counts as not held from then on and is fetched again.

A new replica is built in memory and written with one ordinary file write (under a
temporary name, then renamed): a full disk is then the disk's own OSError, and a failure
leaves no file behind.  An owner that bounds its disk use gives each replica a
:class:`Space` to ask before every write; :meth:`SparseReplica.close` lets go of the file
at once (Blosc2 keeps it open while the replica is).
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
import threading
import types
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import blosc2
import numpy as np

from caterva2 import chunks, metadata, wire
from caterva2.models import AnyMeta, ArrayMeta
from caterva2.partial_chunks import PartialChunks

log = logging.getLogger("caterva2.replica")


class ReplicaGone(Exception):
    """The replica's file was removed (a newer version replaced it) while in use, or the
    replica was closed."""


class Space(Protocol):
    """Where a replica asks for room before it writes (e.g. a bounded cache)."""

    def reserve(self, replica: SparseReplica, nbytes: int) -> None:
        """Make room for ``nbytes`` more in the replica's directory, or raise the OSError
        saying why there is none."""

    def settle(self, replica: SparseReplica, nbytes: int) -> None:
        """The write ``nbytes`` were reserved for is over (done or failed): what the
        replica's directory really holds counts from now on."""


class _WithoutBlosc2Frames:
    """Strips the traceback of an error raised inside the block.

    Blosc2 keeps a replica's file open for as long as its Python objects live, and the
    frames of a traceback hold them: an error kept somewhere (a future, ``write_error``)
    would keep a closed replica's file open, and a removed file's room taken.
    """

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: types.TracebackType | None) -> None:
        if error is not None:  # (it goes on from here, without the frames it came through)
            error.with_traceback(None)


_without_blosc2_frames = _WithoutBlosc2Frames()


def write_reserve(nbytes: int, nchunks: int) -> int:
    """Room to ask for before storing ``nbytes`` of a chunk in a frame of ``nchunks``: the
    chunk, the frame's trailer, the growth of its chunk index (measured: well under
    one byte per chunk of the dataset) and a new page of the digests' file."""
    return nbytes + 2 * 4096 + nchunks // 16


class ChunkDamaged(ValueError):
    """A cached chunk that does not match its digest: it now counts as not held."""

    def __init__(self, nchunk: int, file: pathlib.Path):
        super().__init__(f"chunk {nchunk} of {file.name} does not match its digest")
        self.nchunk = nchunk


class SparseReplica:
    """One dataset version held locally; every Blosc2 access under one lock.

    A write that fails leaves the replica damaged: it remembers why (:attr:`write_error`,
    the disk's error, or :attr:`damaged`) and refuses further writes; its owner must
    discard it and start a new one.
    """

    def __init__(self, file: pathlib.Path, meta: AnyMeta, space: Space | None = None):
        self.file = pathlib.Path(file)
        self.meta = meta
        self.is_array = isinstance(meta, ArrayMeta)
        self.space = space
        self.lock = threading.Lock()
        self.write_error: OSError | None = None  # the disk's reason a store failed
        self.damaged = False  # a store failed for another reason
        self.container: Any = self._open_or_create()
        self.digests = self._open_digests()
        self.partial = PartialChunks(self.file)  # chunks of which only some blocks came

    # -- creation ---------------------------------------------------------------------
    def _open_or_create(self) -> Any:
        if self.file.is_dir():  # a replica of an older layout: start again
            shutil.rmtree(self.file, ignore_errors=True)
        if self.file.exists():
            try:
                return blosc2.open(str(self.file), mode="a")
            except Exception as e:  # noqa: BLE001 - any failure means: rebuild it
                log.warning("discarding unreadable replica %s: %s", self.file, e)
                self.file.unlink(missing_ok=True)
        frame = self._empty_frame()
        if self.space is not None:
            self.space.reserve(self, len(frame))
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.file.with_name(f".new-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.write(frame)
                os.replace(tmp, self.file)  # a replica appears whole or not at all
            finally:
                tmp.unlink(missing_ok=True)
        finally:
            if self.space is not None:
                self.space.settle(self, len(frame))
        return blosc2.open(str(self.file), mode="a")

    def _empty_frame(self) -> bytes:
        """The replica with no chunk held yet, as a Blosc2 frame (built in memory: small,
        as chunks never written take no room)."""
        meta, sc = self.meta, self.meta.schunk
        cparams = metadata.cparams_from_dict(sc.cparams)
        if isinstance(meta, ArrayMeta):
            array = blosc2.uninit(tuple(meta.shape), metadata.dtype_from_descr(meta.dtype_descr),
                                  chunks=tuple(meta.chunks), blocks=tuple(meta.blocks),
                                  cparams=cparams, contiguous=True)
            schunk = array.schunk
        else:
            schunk = blosc2.SChunk(chunksize=sc.chunksize, contiguous=True, cparams=cparams)
            if sc.nbytes:
                schunk.fill_special(sc.nbytes // sc.typesize, blosc2.SpecialValue.UNINIT)
        for key, value in sc.vlmeta.items():
            schunk.vlmeta[key] = value
        return bytes(array.to_cframe() if isinstance(meta, ArrayMeta) else schunk.to_cframe())

    def close(self) -> None:
        """Let go of the file (Blosc2 holds it open): further use raises ReplicaGone.  For
        the owner, once nobody uses the replica (a removed file takes no room once closed)."""
        with self.lock:
            self.container = None
            # (the digests' file is let go too; a closed replica holds nothing)
            self.digests = np.broadcast_to(np.uint64(0), self.digests.shape)

    @property
    def closed(self) -> bool:
        return self.container is None

    def _open_digests(self) -> np.ndarray:
        """The digests beside the frame; new (all unknown) if missing or of the wrong size,
        so that chunks stored without one are fetched again."""
        file = self.file.with_name(self.file.name + ".digests")
        nchunks = int(self.schunk.nchunks)
        if not file.exists() or file.stat().st_size != 8 * nchunks:
            tmp = file.with_name(f".new-{uuid.uuid4().hex}")
            try:
                with open(tmp, "wb") as f:
                    f.truncate(8 * nchunks)  # (a hole: zeros, no space taken)
                os.replace(tmp, file)
            finally:
                tmp.unlink(missing_ok=True)
        if nchunks == 0:
            return np.zeros(0, dtype="<u8")  # (an empty file cannot be mapped)
        return np.memmap(file, dtype="<u8", mode="r+", shape=(nchunks,))

    @property
    def schunk(self) -> blosc2.SChunk:
        return self._container().schunk if self.is_array else self._container()

    def _container(self) -> Any:
        if self.container is None:
            raise ReplicaGone(f"{self.file} was closed")
        return self.container

    # -- chunks -----------------------------------------------------------------------
    def missing(self, nchunks: list[int]) -> list[int]:
        """Which of ``nchunks`` are not held yet (a damaged chunk counts as not held)."""
        with self.lock:
            return [n for n in nchunks if not self._holds(n)]

    def _holds(self, nchunk: int) -> bool:
        if not self.digests[nchunk]:
            return False
        try:
            return not chunks.is_uninit_chunk(self.schunk.get_lazychunk(nchunk))
        except RuntimeError:  # unreadable (truncated by a crash, a full disk...): refetch
            log.warning("chunk %d of %s is damaged; fetching it again", nchunk, self.file)
            return False

    def damaged_chunks(self, nchunks: list[int]) -> list[int]:
        """Which of ``nchunks`` (held ones) do not match their digests: they are marked as
        not held, to be fetched again.  Reads the chunks: call before serving from them."""
        with self.lock:
            found = [n for n in nchunks if not self._verified(n, self.schunk.get_chunk(n))]
        return found

    def _verified(self, nchunk: int, chunk: bytes) -> bool:
        """Whether ``chunk`` matches the digest of chunk ``nchunk``; if not, forget it."""
        if wire.chunk_digest(chunk) == self.digests[nchunk]:
            return True
        log.warning("chunk %d of %s does not match its digest; fetching it again", nchunk,
                    self.file)
        self.digests[nchunk] = 0
        return False

    def store(self, nchunk: int, chunk: chunks.Buffer, digest: int | None = None) -> None:
        """Store a chunk exactly as received from the source.

        Raises the disk's OSError (full, over quota, read-only...) if that is why a write
        fails, ReplicaGone if the file was removed meanwhile, else RuntimeError; after any
        of these the replica is damaged (see the class).  ``digest`` is the chunk's, if
        already checked (else it is computed).
        """
        self.fill(nchunk, lambda container: self.schunk.update_chunk(nchunk, chunk),
                  len(chunk), chunk, digest)

    def fill(self, nchunk: int, write: Callable[[Any], None], nbytes: int = 0,
             chunk: chunks.Buffer | None = None, digest: int | None = None) -> None:
        """Run ``write(container)`` to fill chunk ``nchunk`` (e.g. by assigning decompressed
        data to the NDArray), with the failure handling of :meth:`store`."""
        if chunk is not None:
            chunks.check_chunk(chunk)
        reserved = write_reserve(nbytes, self.meta.schunk.nchunks)
        if self.space is not None:
            self.space.reserve(self, reserved)
        try:
            with self.lock:
                if self.write_error is not None:  # (a new error: one raised again and
                    # again would keep every frame it went through, and their chunks)
                    raise OSError(self.write_error.errno, self.write_error.strerror)
                if self.damaged:
                    raise RuntimeError(f"replica {self.file.name} is damaged")
                self.digests[nchunk] = 0  # (until the new chunk is whole)
                try:
                    with _without_blosc2_frames:
                        write(self._container())
                except RuntimeError:  # (Blosc2 does not say why)
                    self._failed(nbytes)
                    raise
                if digest is None:
                    stored = chunk if chunk is not None else self.schunk.get_chunk(nchunk)
                    digest = wire.chunk_digest(stored)
                self.digests[nchunk] = digest
            if nchunk in self.partial:  # (held whole now: its blocks are not needed)
                self.partial.remove(nchunk)
        finally:
            if self.space is not None:
                self.space.settle(self, reserved)

    def store_piece(self, nchunk: int, offset: int, piece: chunks.Buffer, digest: int,
                    chunk_digest: int) -> None:
        """Store a piece of a chunk that comes in blocks (see :mod:`caterva2.blocks`): its
        head (``offset`` 0), or blocks at ``offset``, checked against ``digest`` already;
        ``chunk_digest`` is the whole chunk's, as its source gives it."""
        reserved = len(piece) + 2 * 4096  # (and the piece's digests file)
        if self.space is not None:
            self.space.reserve(self, reserved)
        try:
            if self.closed:
                raise ReplicaGone(f"{self.file} was closed")
            if offset == 0:
                self.partial.store_head(nchunk, piece, chunk_digest)
            else:
                self.partial.store_piece(nchunk, offset, piece, digest)
        except FileNotFoundError:  # (removed: the replica, or the chunk held in part)
            raise ReplicaGone(str(self.file)) from None
        finally:
            if self.space is not None:
                self.space.settle(self, reserved)

    def _failed(self, nbytes: int) -> None:
        """Find out why a write failed: raises the reason, or leaves it to the caller."""
        self.damaged = True
        if not self.file.exists():
            raise ReplicaGone(str(self.file)) from None
        try:
            check_writable(self.file.parent, self.file.stat().st_size, nbytes)
        except OSError as e:
            self.write_error = e
            raise

    def chunk_sizes(self, nchunks: list[int]) -> list[int]:
        """Stored sizes of held chunks, from their headers."""
        with self.lock, _without_blosc2_frames:
            return chunks.stored_sizes(self.schunk, nchunks)

    def digest(self, nchunk: int, chunk: chunks.Buffer) -> int:
        """The digest of a held chunk, as checked when it was read (see read_chunks)."""
        return int(self.digests[nchunk])

    def read_chunks(self, nchunks: list[int]) -> list[bytes]:
        """Chunks exactly as stored, each checked against its digest; ChunkDamaged for
        one that does not match (it then counts as not held)."""
        with self.lock, _without_blosc2_frames:
            found = [self.schunk.get_chunk(n) for n in nchunks]
            for n, chunk in zip(nchunks, found):
                if not self._verified(n, chunk):
                    raise ChunkDamaged(n, self.file)
        return found

    # -- reads ------------------------------------------------------------------------
    def read_array(self, region: tuple[slice, ...]) -> np.ndarray:
        """The elements of ``region`` (every chunk it touches must be held)."""
        with self.lock, _without_blosc2_frames:
            if not region:
                return self._container()[()]
            return self._container()[region]

    def read_items(self, start: int, stop: int) -> bytes:
        """Items ``start:stop`` of a SChunk, as bytes."""
        with self.lock, _without_blosc2_frames:
            return self._container()[start:stop] if stop > start else b""

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
