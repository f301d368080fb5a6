"""The blocks of a stored Blosc2 chunk: where each lies, and which a read touches.

Blosc2 compresses each block of a chunk on its own.  A chunk is its 32-byte header, then
the offset (``<i4``) of each block's compressed bytes, then the blocks::

    | header | bstarts: one int32 per block | block data ... |

The offsets are not in block order (blocks compressed in parallel are written as they
finish), so a block ends where the next larger offset starts, or at the chunk's end.
The header with the offsets is the chunk's *head*: with it, any single block can be cut
out of the stored chunk, moved alone and put back at its offset.

Blosc2's N-d reads decompress only the blocks a selection touches, so a copy of a chunk
that holds its head and those blocks (anything at all elsewhere) reads that selection
right.  Chunks that are not laid out so (stored uncompressed, special values, with a
dictionary) are *unsplittable*: they move whole.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from caterva2.chunks import Buffer, Shape, chunk_grid, chunk_slices, chunks_in_region

HEADER_SIZE = 32
_MEMCPYED = 0x02  # flags (byte 2): the chunk holds its data uncompressed
_EXTENDED = 0x05  # flags (byte 2): both bits set for a Blosc2 (extended) header


class Unsplittable(ValueError):
    """A chunk whose blocks cannot be moved alone (it moves whole)."""


def block_count(header: Buffer) -> int:
    """How many blocks a chunk holds, from its 32-byte header (0 for a bad header)."""
    if len(header) < HEADER_SIZE:
        return 0
    nbytes, blocksize = struct.unpack_from("<ii", header, 4)
    return -(-nbytes // blocksize) if blocksize > 0 and nbytes > 0 else 0


def head_size(header: Buffer) -> int:
    """The size of a chunk's head (header and block offsets), from its 32-byte header."""
    return HEADER_SIZE + 4 * block_count(header)


@dataclass(frozen=True)
class BlockLayout:
    """Where each block of one stored chunk lies: ``extents[i]`` is ``(start, stop)`` of
    block ``i`` in the chunk (blocks with equal contents may share one extent)."""

    cbytes: int
    head: int
    extents: tuple[tuple[int, int], ...]

    @property
    def nblocks(self) -> int:
        return len(self.extents)


def block_layout(head: Buffer) -> BlockLayout:
    """The layout of a chunk from its head (the chunk itself will do); Unsplittable for a
    chunk whose blocks cannot be moved alone, or a head that does not hold together."""
    if len(head) < HEADER_SIZE:
        raise Unsplittable("shorter than a Blosc2 header")
    flags, blosc2_flags = head[2], head[31]
    nbytes, blocksize, cbytes = struct.unpack_from("<iii", head, 4)
    if (flags & _EXTENDED) != _EXTENDED or flags & _MEMCPYED or blosc2_flags & ~0x02:
        raise Unsplittable("not a compressed chunk of plain blocks")  # (0x02: big-endian)
    if blocksize <= 0 or nbytes <= 0 or cbytes <= 0:
        raise Unsplittable("a chunk with no blocks")
    size = head_size(head)
    nblocks = (size - HEADER_SIZE) // 4
    if len(head) < size or size > cbytes:
        raise Unsplittable("head cut short")
    starts = struct.unpack_from(f"<{nblocks}i", head, HEADER_SIZE)
    ordered = sorted(set(starts))
    # The first block right after the offsets (nothing, e.g. a dictionary, in between).
    if ordered[0] != size or ordered[-1] >= cbytes:
        raise Unsplittable("block offsets out of place")
    stops = dict(zip(ordered, ordered[1:] + [cbytes]))
    return BlockLayout(cbytes, size, tuple((s, stops[s]) for s in starts))


def local_region(nchunk: int, shape: Shape, chunks: Shape,
                 region: tuple[slice, ...]) -> tuple[slice, ...] | None:
    """The part of ``region`` (clipped to ``shape``) inside chunk ``nchunk``, in the chunk's
    own coordinates; None if they do not meet."""
    local = []
    for held, wanted in zip(chunk_slices(nchunk, shape, chunks), region):
        lo, hi = max(held.start, wanted.start), min(held.stop, wanted.stop)
        if hi <= lo:
            return None
        local.append(slice(lo - held.start, hi - held.start))
    return tuple(local)


def blocks_touched(chunks: Shape, blocks: Shape, local: tuple[slice, ...]) -> list[int]:
    """The blocks (C order within a chunk, as Blosc2 numbers them) that a region of one
    chunk, in the chunk's coordinates, touches."""
    return chunks_in_region(chunks, blocks, local)


def blocks_per_chunk(chunks: Shape, blocks: Shape) -> int:
    """How many blocks an NDArray chunk is cut into."""
    count = 1
    for n in chunk_grid(chunks, blocks):
        count *= n
    return count


def pieces_to_send(chunk: Buffer, wanted: list[int]) -> list[tuple[int, memoryview]]:
    """What moves of ``chunk`` for blocks ``wanted``: ``(offset, bytes)`` pieces, the head
    first, then each block once; the whole chunk as one piece if it is unsplittable."""
    view = memoryview(chunk).cast("B")
    try:
        layout = block_layout(view)
    except Unsplittable:
        return [(0, view)]
    if any(not 0 <= b < layout.nblocks for b in wanted):
        raise ValueError(f"block numbers must be in 0..{layout.nblocks - 1}")
    pieces = [(0, view[:layout.head])]
    for start, stop in sorted({layout.extents[b] for b in wanted}):
        pieces.append((start, view[start:stop]))
    return pieces
