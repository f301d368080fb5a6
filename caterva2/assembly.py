"""Large selections on the client: stored chunks decompressed straight into the result.

The subscriber sends a large selection as the stored chunks it touches (a chunk stream,
see :mod:`caterva2.wire`), and the client, not the server, pays for decompression.
"""
from __future__ import annotations

import itertools
import math

import blosc2
import numpy as np

from caterva2.chunks import Buffer, Shape, block_grid, check_chunk, chunk_nbytes, chunk_slices


class IncompleteAnswer(ValueError):
    """A chunk stream lacked chunks: the subscriber could not get them all."""


def _block_pieces(lo: int, hi: int, block: int, at: int) -> list[tuple[slice, slice, slice]]:
    """Items ``lo:hi`` of a chunk axis, for :func:`caterva2.chunks.block_grid`, going to
    ``at:`` of a result.

    Each piece is (blocks, offsets, where in the result): a part of one block, or a run of
    whole blocks.  At most three: a part, whole blocks, a part.
    """
    pieces = []
    while lo < hi:
        first, offset = divmod(lo, block)
        if offset == 0 and hi - lo >= block:  # whole blocks
            count = (hi - lo) // block
            blocks, offsets, length = slice(first, first + count), slice(None), count * block
        else:  # part of one block
            length = min(hi, (first + 1) * block) - lo
            blocks, offsets = slice(first, first + 1), slice(offset, offset + length)
        pieces.append((blocks, offsets, slice(at, at + length)))
        lo, at = lo + length, at + length
    return pieces


class ChunkAssembler:
    """Decompress stored NDArray chunks straight into a region of a NumPy array."""

    def __init__(self, shape: Shape, chunks: Shape, blocks: Shape, dtype: np.dtype,
                 region: tuple[slice, ...], threads: int | None = None):
        """``threads`` decompress each chunk (default: Blosc2's global setting)."""
        self.shape, self.chunks, self.blocks, self.dtype = shape, chunks, blocks, dtype
        self.dparams = blosc2.DParams(nthreads=threads or blosc2.nthreads)
        self.region = region
        self.out = np.empty([r.stop - r.start for r in region], dtype=dtype)
        self.nitems = math.prod(-(-c // b) * b for c, b in zip(chunks, blocks))
        self.max_chunk_bytes = self.nitems * dtype.itemsize + blosc2.MAX_OVERHEAD
        self.added: set[int] = set()
        self._buffer = np.empty(self.nitems, dtype=dtype)  # (no page touched until used)

    def add(self, nchunk: int, chunk: Buffer) -> None:
        """Decompress one stored chunk (bytes-like) into its place in ``out``."""
        buffer = self._buffer
        check_chunk(chunk)
        if chunk_nbytes(chunk) != buffer.nbytes:  # never decompress past the buffer
            raise ValueError(f"a chunk of {chunk_nbytes(chunk)} bytes where the dataset's "
                             f"chunks hold {buffer.nbytes}: it changed; read again")
        blosc2.decompress2(chunk, dst=buffer, dparams=self.dparams)
        grid = block_grid(buffer, self.chunks, self.blocks)
        pieces = []
        for held, wanted, block in zip(chunk_slices(nchunk, self.shape, self.chunks),
                                       self.region, self.blocks):
            lo, hi = max(held.start, wanted.start), min(held.stop, wanted.stop)
            pieces.append(_block_pieces(lo - held.start, hi - held.start, block,
                                        lo - wanted.start))
        # One copy from the buffer into ``out`` (the ellipsis keeps a 0-d index a view).
        for part in itertools.product(*pieces):
            src = grid[tuple(i for blocks, offsets, _ in part for i in (blocks, offsets))
                       + (...,)]
            dst = self.out[tuple(where for *_, where in part) + (...,)]
            dst.reshape(src.shape, copy=False)[...] = src
        self.added.add(nchunk)

    def check_complete(self, nchunks: list[int]) -> None:
        """Raise IncompleteAnswer unless every chunk of ``nchunks`` was added."""
        missing = set(nchunks) - self.added
        if missing:
            raise IncompleteAnswer(f"the answer lacks {len(missing)} of {len(nchunks)} chunks "
                                   "(the subscriber could not get them: its publisher may be "
                                   "down or the data changed); read again")
