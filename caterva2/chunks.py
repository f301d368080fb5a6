"""Blosc2 chunks: what a stored chunk's header says, and where chunks lie in an NDArray.

A Blosc2 chunk starts with a 32-byte header (sizes, flags); an NDArray is cut into equal
chunks laid out in C order, each a C-ordered grid of equal blocks.  These functions read
only headers and shapes: no chunk is ever decompressed here, so the client library, the
publisher and the subscriber use them alike (they need only ``numpy`` and ``blosc2``).
"""
from __future__ import annotations

import struct
from collections.abc import Sequence

import blosc2
import numpy as np

# The chunk header keeps its "special value" kind in bits 4-6 of byte 31.
_SPECIAL_SHIFT, _SPECIAL_MASK, _SPECIAL_UNINIT = 4, 0x7, 4

Shape = Sequence[int]
Buffer = bytes | memoryview  # a chunk, or a view of one in a reused buffer


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------

def is_uninit_chunk(lazychunk: Buffer) -> bool:
    """True for a chunk that was never written (a placeholder in a sparse replica)."""
    return len(lazychunk) >= 32 and (
        (lazychunk[31] >> _SPECIAL_SHIFT) & _SPECIAL_MASK) == _SPECIAL_UNINIT


def chunk_nbytes(chunk: Buffer) -> int:
    """The decompressed size of a chunk, from its header."""
    return int(struct.unpack_from("<i", chunk, 4)[0])


def chunk_cbytes(chunk: Buffer) -> int:
    """The stored size of a chunk, from its header (a lazy chunk's header is enough)."""
    return int(struct.unpack_from("<i", chunk, 12)[0])


def stored_sizes(schunk: blosc2.SChunk, nchunks: list[int]) -> list[int]:
    """Stored sizes of chunks of ``schunk``, read from their headers only."""
    return [chunk_cbytes(schunk.get_lazychunk(n)) for n in nchunks]


def check_chunk(chunk: Buffer) -> None:
    """Raise ValueError unless ``chunk`` is one whole Blosc2 chunk (as its header says)."""
    if len(chunk) < 16:
        raise ValueError("chunk shorter than a Blosc2 header")
    cbytes = chunk_cbytes(chunk)
    if cbytes != len(chunk):
        raise ValueError(f"chunk header says {cbytes} bytes, got {len(chunk)}")


# ---------------------------------------------------------------------------
# Where chunks lie in an NDArray
# ---------------------------------------------------------------------------

def chunk_grid(shape: Shape, chunks: Shape) -> tuple[int, ...]:
    """Number of chunks along each dimension."""
    return tuple(-(-s // c) if c else 0 for s, c in zip(shape, chunks))


def chunks_in_region(shape: Shape, chunks: Shape, region: tuple[slice, ...],
                     within: tuple | None = None) -> list[int]:
    """Linear indexes (C order, as Blosc2 stores them) of the chunks a selection touches.

    ``region`` is one ``slice(start, stop)`` per dimension, already clipped to ``shape``;
    ``within`` (see :class:`caterva2.slicing.Plan`), if given, is the selection inside it:
    with steps larger than a chunk, chunks holding no selected element are left out.
    """
    if any(r.stop <= r.start for r in region):
        return []
    grid = chunk_grid(shape, chunks)
    if not grid:  # 0-d array: one chunk
        return [0]
    per_dim = []
    for d, (r, c) in enumerate(zip(region, chunks)):
        picked = range(r.start, r.stop)
        if within is not None and isinstance(within[d], slice):
            picked = picked[within[d]]
        lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1])
        if abs(picked.step) <= c:  # every chunk in between holds a selected element
            per_dim.append(np.arange(lo // c, hi // c + 1))
        else:  # at most one selected element per chunk: as many as chunks, no more
            per_dim.append(np.unique(np.fromiter((i // c for i in picked), dtype=np.int64)))
    coords = np.stack(np.meshgrid(*per_dim, indexing="ij"), axis=-1).reshape(-1, len(grid))
    return [int(n) for n in np.ravel_multi_index(tuple(coords.T), grid).ravel()]


def chunks_in_items(start: int, stop: int, chunkshape: int) -> list[int]:
    """The chunks of a one-dimensional SChunk holding items ``start:stop``."""
    return list(range(start // chunkshape, -(-stop // chunkshape))) if stop > start else []


def chunk_slices(nchunk: int, shape: Shape, chunks: Shape) -> tuple[slice, ...]:
    """The region of the array that chunk ``nchunk`` holds (clipped to the shape)."""
    coords = np.unravel_index(nchunk, chunk_grid(shape, chunks)) if shape else ()
    return tuple(slice(int(i) * c, min((int(i) + 1) * c, s))
                 for i, c, s in zip(coords, chunks, shape))


def block_grid(flat: np.ndarray, chunks: Shape, blocks: Shape) -> np.ndarray:
    """View a decompressed NDArray chunk by block: axes ``2i, 2i+1`` are (block, offset).

    Blosc2 stores an NDArray chunk as a C-ordered grid of blocks, each block contiguous,
    the chunk padded up to whole blocks.  Item ``k`` of axis ``i`` sits at block
    ``k // blocks[i]``, offset ``k % blocks[i]``.  Never a copy.
    """
    nd = len(chunks)
    nblocks = [-(-c // b) for c, b in zip(chunks, blocks)]
    order = [i for pair in zip(range(nd), range(nd, 2 * nd)) for i in pair]
    return flat.reshape((*nblocks, *blocks)).transpose(order)
