"""Blosc2 helpers shared by services and clients: metadata, chunk geometry, chunk assembly.

Only ``numpy`` and ``blosc2`` are needed here, so the client library can use this module.
"""
from __future__ import annotations

import itertools
import json
import math
import struct
from typing import Any

import blosc2
import numpy as np

# The Blosc2 chunk header keeps its "special value" kind in bits 4-6 of byte 31.
_SPECIAL_SHIFT, _SPECIAL_MASK, _SPECIAL_UNINIT = 4, 0x7, 4


def jsonable(value: Any) -> Any:
    """Turn a value read from Blosc2 metadata (msgpack) into plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def cparams_dict(cparams: Any) -> dict[str, Any]:
    """Compression parameters as plain JSON values (codec and filters as numbers)."""
    def num(v: Any) -> Any:
        return int(v.value) if hasattr(v, "value") else v

    return {
        "codec": num(cparams.codec),
        "codec_meta": int(cparams.codec_meta),
        "clevel": int(cparams.clevel),
        "filters": [num(f) for f in cparams.filters],
        "filters_meta": [int(m) for m in cparams.filters_meta],
        "typesize": int(cparams.typesize),
        "blocksize": int(cparams.blocksize),
        "splitmode": num(cparams.splitmode),
        "use_dict": bool(cparams.use_dict),
    }


def cparams_from_dict(d: dict[str, Any]) -> blosc2.CParams:
    """Inverse of :func:`cparams_dict`."""
    return blosc2.CParams(
        codec=blosc2.Codec(d["codec"]), codec_meta=d.get("codec_meta", 0), clevel=d["clevel"],
        filters=[blosc2.Filter(f) for f in d["filters"]], filters_meta=d["filters_meta"],
        typesize=d["typesize"], blocksize=d.get("blocksize", 0),
        splitmode=blosc2.SplitMode(d.get("splitmode", blosc2.SplitMode.AUTO_SPLIT)),
        use_dict=d.get("use_dict", False),
    )


def vlmeta_dict(schunk: blosc2.SChunk) -> dict[str, Any]:
    """User attributes of a super-chunk as plain JSON values."""
    return {str(k): jsonable(v) for k, v in schunk.vlmeta.getall().items()}


def schunk_meta(schunk: blosc2.SChunk) -> dict[str, Any]:
    """The ``schunk`` part of the metadata: sizes at the source, no filesystem path."""
    return {
        "blocksize": int(schunk.blocksize),
        "cbytes": int(schunk.cbytes),
        "chunkshape": int(schunk.chunkshape),
        "chunksize": int(schunk.chunksize),
        "contiguous": bool(schunk.contiguous),
        "cparams": cparams_dict(schunk.cparams),
        "cratio": float(schunk.cratio) if schunk.cbytes else 0.0,
        "nbytes": int(schunk.nbytes),
        "typesize": int(schunk.typesize),
        "nchunks": int(schunk.nchunks),
        "vlmeta": vlmeta_dict(schunk),
    }


def array_meta(array: blosc2.NDArray) -> dict[str, Any]:
    """Metadata of an NDArray, keyed as in the Caterva2 README."""
    return {
        "kind": "ndarray",
        "dtype": str(array.dtype),
        "dtype_descr": jsonable(np.lib.format.dtype_to_descr(array.dtype)),
        "ndim": array.ndim,
        "shape": list(array.shape),
        "ext_shape": list(array.ext_shape),
        "chunks": list(array.chunks),
        "ext_chunks": list(array.ext_chunks),
        "blocks": list(array.blocks),
        "blocksize": int(array.schunk.blocksize),
        "chunksize": int(array.schunk.chunksize),
        "size": int(array.schunk.nbytes),
        "schunk": schunk_meta(array.schunk),
    }


LAYOUT_HEADER = "Caterva2-Layout"


def layout(meta: dict[str, Any]) -> str:
    """An array's layout (shape, dtype, chunks, blocks) as one line of text.

    The subscriber sends it with every array answer (header :data:`LAYOUT_HEADER`); the
    client decodes items and chunks with the metadata it fetched earlier, and compares it
    with its own first, so an answer for a dataset that changed since is never misread.
    """
    return json.dumps([meta["shape"], meta["dtype"], meta["chunks"], meta["blocks"]],
                      separators=(",", ":"))


def dtype_from_descr(descr: Any) -> np.dtype:
    """Rebuild a dtype from :func:`numpy.lib.format.dtype_to_descr` output sent as JSON."""
    def tuples(d: Any) -> Any:
        if isinstance(d, list):
            return [tuple(tuples(x) for x in field) if isinstance(field, list) else field
                    for field in d]
        return d

    return np.lib.format.descr_to_dtype(tuples(descr))


def is_uninit_chunk(lazychunk: bytes) -> bool:
    """True for a chunk that was never written (a placeholder in a sparse replica)."""
    return len(lazychunk) >= 32 and (
        (lazychunk[31] >> _SPECIAL_SHIFT) & _SPECIAL_MASK) == _SPECIAL_UNINIT


def chunk_nbytes(chunk: bytes) -> int:
    """The decompressed size of a chunk, from its header."""
    return struct.unpack_from("<i", chunk, 4)[0]


def chunk_cbytes(chunk: bytes) -> int:
    """The stored size of a chunk, from its header (a lazy chunk's header is enough)."""
    return struct.unpack_from("<i", chunk, 12)[0]


def stored_sizes(schunk: blosc2.SChunk, nchunks: list[int]) -> list[int]:
    """Stored sizes of chunks of ``schunk``, read from their headers only."""
    return [chunk_cbytes(schunk.get_lazychunk(n)) for n in nchunks]


def check_chunk(chunk: bytes) -> None:
    """Raise ValueError unless ``chunk`` is one whole Blosc2 chunk (as its header says)."""
    if len(chunk) < 16:
        raise ValueError("chunk shorter than a Blosc2 header")
    cbytes = chunk_cbytes(chunk)
    if cbytes != len(chunk):
        raise ValueError(f"chunk header says {cbytes} bytes, got {len(chunk)}")


# ---------------------------------------------------------------------------
# Chunk geometry of NDArrays
# ---------------------------------------------------------------------------

def chunk_grid(shape: tuple[int, ...], chunks: tuple[int, ...]) -> tuple[int, ...]:
    """Number of chunks along each dimension."""
    return tuple(-(-s // c) if c else 0 for s, c in zip(shape, chunks))


def chunks_in_region(shape, chunks, region: tuple[slice, ...], within=None) -> list[int]:
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
    return np.ravel_multi_index(coords.T, grid).tolist()


def chunk_slices(nchunk: int, shape, chunks) -> tuple[slice, ...]:
    """The region of the array that chunk ``nchunk`` holds (clipped to the shape)."""
    coords = np.unravel_index(nchunk, chunk_grid(shape, chunks)) if shape else ()
    return tuple(slice(int(i) * c, min((int(i) + 1) * c, s))
                 for i, c, s in zip(coords, chunks, shape))


def block_grid(flat: np.ndarray, chunks, blocks) -> np.ndarray:
    """View a decompressed NDArray chunk by block: axes ``2i, 2i+1`` are (block, offset).

    Blosc2 stores an NDArray chunk as a C-ordered grid of blocks, each block contiguous,
    the chunk padded up to whole blocks.  Item ``k`` of axis ``i`` sits at block
    ``k // blocks[i]``, offset ``k % blocks[i]``.  Never a copy.
    """
    nd = len(chunks)
    nblocks = [-(-c // b) for c, b in zip(chunks, blocks)]
    order = [i for pair in zip(range(nd), range(nd, 2 * nd)) for i in pair]
    return flat.reshape((*nblocks, *blocks)).transpose(order)


def _block_pieces(lo: int, hi: int, block: int, at: int) -> list[tuple[slice, slice, slice]]:
    """Items ``lo:hi`` of a chunk axis, for :func:`block_grid`, going to ``at:`` of a result.

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


class IncompleteAnswer(ValueError):
    """A chunk stream lacked chunks: the subscriber could not get them all."""


class AnswerCut(ValueError):
    """A chunk stream ended early with its sender's reason (an error record)."""


class ChunkAssembler:
    """Decompress stored NDArray chunks straight into a region of a NumPy array.

    Used by the client for large selections: the subscriber sends chunks exactly as stored
    and the client, not the server, pays for decompression.
    """

    def __init__(self, shape, chunks, blocks, dtype: np.dtype, region: tuple[slice, ...],
                 threads: int | None = None):
        """``threads`` decompress each chunk (default: Blosc2's global setting)."""
        self.shape, self.chunks, self.blocks, self.dtype = shape, chunks, blocks, dtype
        self.dparams = blosc2.DParams(nthreads=threads or blosc2.nthreads)
        self.region = region
        self.out = np.empty([r.stop - r.start for r in region], dtype=dtype)
        self.nitems = math.prod(-(-c // b) * b for c, b in zip(chunks, blocks))
        self.max_chunk_bytes = self.nitems * dtype.itemsize + blosc2.MAX_OVERHEAD
        self.added: set[int] = set()
        self._buffer = np.empty(self.nitems, dtype=dtype)  # (no page touched until used)

    def add(self, nchunk: int, chunk) -> None:
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
        """Raise ValueError unless every chunk of ``nchunks`` was added."""
        missing = set(nchunks) - self.added
        if missing:
            raise IncompleteAnswer(f"the answer lacks {len(missing)} of {len(nchunks)} chunks "
                                   "(the subscriber could not get them: its publisher may be "
                                   "down or the data changed); read again")


# ---------------------------------------------------------------------------
# Small selections: items in one compressed buffer
# ---------------------------------------------------------------------------
MAX_BUFFER_BYTES = 1 << 30  # one Blosc2 buffer holds at most 2 GiB; stay well below


def compress_items(data: np.ndarray) -> bytes:
    """An array's items in C order, compressed into one Blosc2 buffer (shape and dtype are
    not included: the receiver knows them).  Far cheaper than an NDArray cframe."""
    data = np.ascontiguousarray(data)
    typesize = data.dtype.itemsize if data.dtype.itemsize <= 255 else 1
    return blosc2.compress2(data.reshape(-1).view("u1"), typesize=typesize,
                            codec=blosc2.Codec.LZ4, clevel=5)


def decompress_items(buffer: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array that :func:`compress_items` compressed; ValueError if sizes disagree."""
    out = np.empty(shape, dtype=dtype)
    check_chunk(buffer)
    nbytes = chunk_nbytes(buffer)
    if nbytes != out.nbytes:
        raise ValueError(f"answer holds {nbytes} bytes, the selection {out.nbytes}")
    if nbytes:
        blosc2.decompress2(buffer, dst=out.reshape(-1).view("u1"))
    return out


# ---------------------------------------------------------------------------
# Chunk streams: how stored chunks travel inside one HTTP body
# ---------------------------------------------------------------------------
# A stream is a sequence of records, each ``<u8 nchunk><u8 length>`` followed by the chunk.
# A sender that cannot go on may end it with an error record: nchunk STREAM_ERROR, and
# the reason (UTF-8, at most MAX_REASON bytes) in place of a chunk.
_RECORD = struct.Struct("<QQ")
STREAM_ERROR = 2**64 - 1
MAX_REASON = 4096


RECORD_HEADER_SIZE = _RECORD.size


def error_record(reason: str) -> bytes:
    """A record ending a stream, for ``reason`` (see :class:`AnswerCut`)."""
    text = reason.encode()[:MAX_REASON]
    return record_header(STREAM_ERROR, len(text)) + text


def record_header(nchunk: int, length: int) -> bytes:
    """The header of a record; the chunk's ``length`` bytes follow it."""
    return _RECORD.pack(nchunk, length)


def parse_record_header(header) -> tuple[int, int]:
    """``(nchunk, length)`` from a record header."""
    return _RECORD.unpack_from(header)
