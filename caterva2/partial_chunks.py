"""Chunks held in part: the blocks of a chunk that reads needed, kept beside a replica.

A small read inside a big chunk needs only the chunk's head and the blocks it touches
(see :mod:`caterva2.blocks`).  Those are kept, until the whole chunk is, in two files
beside the replica ``FILE``:

- ``FILE.part-N``: chunk ``N`` at its own size with only the pieces held written (a sparse
  file: what was not written takes no room), so that once every block is in, the file
  *is* the chunk;
- ``FILE.part-N.digests``: ``<u8`` digests (:func:`caterva2.wire.chunk_digest`): of the
  whole chunk (as its source gave it), of the head, then of each block; 0 for not held.

A piece counts as held only once its digest is written, and every piece read is checked
against it first: a damaged block is never read, but forgotten and fetched again.  No file
stays open between calls, so a replica's directory removed (evicted, replaced) takes its
room with it at once.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import struct
import threading

import blosc2
import numpy as np

from caterva2 import wire
from caterva2.blocks import HEADER_SIZE, BlockLayout, block_layout, head_size

_WHOLE, _HEAD, _FIRST_BLOCK = 0, 1, 2  # slots of a digests file


class PiecesDamaged(ValueError):
    """Pieces of a partly held chunk did not match their digests: forgotten (not held)."""


class NotHeldInPart(ValueError):
    """The chunk is not held in part (any more: completed, evicted or forgotten meanwhile
    by another reader)."""


class PartialChunks:
    """The chunks of one replica (its file is ``replica_file``) held in part.

    Thread-safe; methods touch the disk (call them from a thread).
    """

    def __init__(self, replica_file: pathlib.Path):
        self.replica_file = pathlib.Path(replica_file)
        self.lock = threading.Lock()
        prefix = self.replica_file.name + ".part-"
        self.held: set[int] = set()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.replica_file.parent):
                number = name[len(prefix):]
                if name.startswith(prefix) and number.isdigit():
                    self.held.add(int(number))

    def _file(self, nchunk: int) -> pathlib.Path:
        return self.replica_file.with_name(f"{self.replica_file.name}.part-{nchunk}")

    def _digests_file(self, nchunk: int) -> pathlib.Path:
        return self.replica_file.with_name(f"{self.replica_file.name}.part-{nchunk}.digests")

    def __contains__(self, nchunk: int) -> bool:
        return nchunk in self.held

    # -- what is held ----------------------------------------------------------------
    def _digests(self, nchunk: int) -> np.ndarray | None:
        try:
            raw = self._digests_file(nchunk).read_bytes()
        except FileNotFoundError:
            return None
        return np.frombuffer(raw, dtype="<u8").copy() if len(raw) % 8 == 0 else None

    def _held(self, nchunk: int) -> tuple[BlockLayout, np.ndarray] | None:
        """The chunk's block layout and digests, if its head is held and checks out."""
        digests = self._digests(nchunk)
        if digests is None or len(digests) < _FIRST_BLOCK or not digests[_HEAD]:
            return None
        try:
            with open(self._file(nchunk), "rb") as f:
                size = head_size(f.read(HEADER_SIZE))
                f.seek(0)
                head = f.read(size)
            layout = block_layout(head)
        except (OSError, ValueError, struct.error):
            return None
        if wire.chunk_digest(head) != digests[_HEAD] or len(digests) != 2 + layout.nblocks:
            return None
        return layout, digests

    def missing_blocks(self, nchunk: int, wanted: list[int]) -> list[int] | None:
        """Which of blocks ``wanted`` are not held; None if not even the head is."""
        with self.lock:
            held = self._held(nchunk)
            if held is None:
                return None
            return [b for b in wanted if not held[1][_FIRST_BLOCK + b]]

    def chunk_digest(self, nchunk: int) -> int:
        """The whole chunk's digest as its source gave it (0: unknown)."""
        with self.lock:
            digests = self._digests(nchunk)
            return int(digests[_WHOLE]) if digests is not None and len(digests) else 0

    # -- writing ---------------------------------------------------------------------
    def store_head(self, nchunk: int, head: bytes | memoryview, chunk_digest: int) -> None:
        """Start (or start again) a partly held chunk from its head; any block held of a
        chunk with another digest is dropped (the source's bytes changed)."""
        layout = block_layout(head)
        with self.lock:
            digests = self._digests(nchunk)
            if (digests is None or len(digests) != 2 + layout.nblocks
                    or digests[_WHOLE] != chunk_digest):
                self._remove(nchunk)
                digests = np.zeros(2 + layout.nblocks, dtype="<u8")
                digests[_WHOLE] = chunk_digest
                with open(self._file(nchunk), "wb") as f:
                    f.truncate(layout.cbytes)  # (a hole: no room taken)
                self.held.add(nchunk)
            self._write(nchunk, 0, head[:layout.head])
            digests[_HEAD] = wire.chunk_digest(head[:layout.head])
            self._digests_file(nchunk).write_bytes(digests.tobytes())

    def store_piece(self, nchunk: int, offset: int, piece: bytes | memoryview,
                    digest: int) -> None:
        """Store the bytes of blocks at ``offset`` (checked against ``digest`` already)."""
        with self.lock:
            held = self._held(nchunk)
            if held is None:  # (held whole meanwhile, or evicted)
                raise FileNotFoundError(f"chunk {nchunk} is no longer held in part")
            layout, digests = held
            blocks = [b for b, extent in enumerate(layout.extents)
                      if extent == (offset, offset + len(piece))]
            if not blocks:
                raise ValueError(f"chunk {nchunk}: no block lies at {offset}, "
                                 f"{len(piece)} bytes long")
            self._write(nchunk, offset, piece)
            for b in blocks:
                digests[_FIRST_BLOCK + b] = digest
            self._digests_file(nchunk).write_bytes(digests.tobytes())

    def _write(self, nchunk: int, offset: int, data: bytes | memoryview) -> None:
        fd = os.open(self._file(nchunk), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def remove(self, nchunk: int) -> None:
        """Forget a partly held chunk (the whole chunk is held now, or it went bad)."""
        with self.lock:
            self._remove(nchunk)

    def _remove(self, nchunk: int) -> None:
        self.held.discard(nchunk)
        self._digests_file(nchunk).unlink(missing_ok=True)
        self._file(nchunk).unlink(missing_ok=True)

    # -- reading ---------------------------------------------------------------------
    def assembled(self, nchunk: int, wanted: list[int]) -> bytearray:
        """The chunk with its head and blocks ``wanted`` in place (zeros elsewhere), each
        checked against its digest: PiecesDamaged (and forgotten) if one does not match,
        NotHeldInPart if the chunk is not held in part."""
        with self.lock:
            held = self._held(nchunk)
            if held is None:
                raise NotHeldInPart(f"chunk {nchunk} is not held in part")
            return self._assembled(nchunk, wanted, *held)

    def _assembled(self, nchunk: int, wanted: list[int], layout: BlockLayout,
                   digests: np.ndarray) -> bytearray:
        chunk = bytearray(layout.cbytes)
        with open(self._file(nchunk), "rb") as f:
            f.readinto(memoryview(chunk)[:layout.head])
            bad = []
            for b in sorted(set(wanted), key=lambda b: layout.extents[b]):
                if not digests[_FIRST_BLOCK + b]:
                    raise NotHeldInPart(f"block {b} of chunk {nchunk} is not held")
                start, stop = layout.extents[b]
                f.seek(start)
                piece = memoryview(chunk)[start:stop]
                f.readinto(piece)
                if wire.chunk_digest(piece) != digests[_FIRST_BLOCK + b]:
                    bad.append(b)
        if bad:
            digests[[_FIRST_BLOCK + b for b in bad]] = 0
            self._digests_file(nchunk).write_bytes(digests.tobytes())
            raise PiecesDamaged(f"{len(bad)} blocks of chunk {nchunk} of "
                                f"{self.replica_file.name} do not match their digests")
        return chunk

    def whole(self, nchunk: int) -> tuple[memoryview, int] | None:
        """The whole chunk and its digest, if every block is held and the chunk put back
        together matches its source's digest; None if blocks are missing.  A chunk that
        does not match is forgotten (PiecesDamaged)."""
        with self.lock:
            held = self._held(nchunk)
            if held is None or not held[1][_FIRST_BLOCK:].all():
                return None
            layout, digests = held
            chunk = memoryview(self._assembled(nchunk, list(range(layout.nblocks)), *held))
            if wire.chunk_digest(chunk) != digests[_WHOLE]:
                self._remove(nchunk)
                raise PiecesDamaged(f"chunk {nchunk} of {self.replica_file.name}, put back "
                                    "together, does not match its source's digest")
            return chunk, int(digests[_WHOLE])


def read_region(chunk: bytes | bytearray, chunks: tuple[int, ...], blocks: tuple[int, ...],
                dtype: np.dtype, local: tuple[slice, ...]) -> np.ndarray:
    """The items of ``local`` (a region in the chunk's coordinates) of one NDArray chunk,
    given as a stored chunk that holds (at least) the blocks that region touches."""
    one = blosc2.uninit(chunks, dtype, chunks=chunks, blocks=blocks)
    one.schunk.update_chunk(0, chunk)
    return one[local] if local else one[()]
