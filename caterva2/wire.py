"""The data protocol between publishers, subscribers and clients, in one place.

Metadata travels as JSON (:mod:`caterva2.models`); data travels as Blosc2, never pickle.
This module is everything else both ends of a connection must agree on:

- **Chunk streams** carry stored chunks, exactly as stored, inside one HTTP body
  (media type :data:`CHUNKS_MEDIA_TYPE`).  A stream is a sequence of records, each
  ``<u8 nchunk><u8 length><u8 digest>`` followed by the chunk, where the digest is the
  chunk's :func:`chunk_digest`: the reader checks every chunk against it, so a chunk damaged
  anywhere on the way (or in a cache it was read from) is never taken for data.  A sender
  that cannot go on may end a stream with an error record: nchunk :data:`STREAM_ERROR`,
  and the reason (UTF-8, at most :data:`MAX_REASON` bytes) in place of a chunk; the reader
  raises :class:`AnswerCut`.  Written with :func:`write_records`, read with
  :func:`read_records`.
- **Block streams** carry blocks of one stored chunk (see :mod:`caterva2.blocks`) in
  the same records, where the first number is the byte offset of each piece in the chunk
  instead of a chunk number: the chunk's head at offset 0, then each block.  The whole
  chunk's digest goes in :data:`CHUNK_DIGEST_HEADER`, so that the chunk put back together
  is checked too.
- **Chunk lists** name chunks in URLs compactly: ``0-3,7`` (:func:`format_chunk_list`,
  :func:`parse_chunk_list`).
- **The layout header** (:data:`LAYOUT_HEADER`) goes with every array answer, so that a
  client holding older metadata notices that the dataset changed instead of misreading it.
- **The unverified header** (:data:`UNVERIFIED_HEADER`) goes with an answer that a
  subscriber served from its cache without being able to check it with the source.
- **Selections** travel as one compressed buffer of items (:func:`compress_items`; the
  receiver knows shape and dtype), or as an NDArray cframe (:func:`encode_array`).

Only ``numpy`` and ``blosc2`` (and the standard library) are needed here: the client
library uses this module too.
"""
from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import blosc2
import numpy as np
import xxhash

from caterva2.chunks import Buffer, check_chunk, chunk_nbytes

CHUNKS_MEDIA_TYPE = "application/x-caterva2-chunks"

# ---------------------------------------------------------------------------
# Chunk streams
# ---------------------------------------------------------------------------
_RECORD = struct.Struct("<QQQ")
RECORD_HEADER_SIZE = _RECORD.size
STREAM_ERROR = 2**64 - 1
MAX_REASON = 4096


class AnswerCut(ValueError):
    """A chunk stream ended early with its sender's reason (an error record)."""


class StreamCut(ValueError):
    """A chunk stream that is cut short or holds a record larger than it may."""


class DigestMismatch(StreamCut):
    """A chunk that does not match its digest: damaged on the way, or at its sender."""


def chunk_digest(chunk: Buffer) -> int:
    """The digest of a stored chunk's bytes (64-bit XXH3: about 25 GB/s, so that every
    chunk served can be checked).  Never 0: that value stands for "unknown"."""
    return xxhash.xxh3_64_intdigest(chunk) or 1


class ChunkChanged(Exception):
    """A chunk read for a stream differs in size from what its Content-Length announced:
    the data changed since the sizes were read, and the stream must end before it."""


def record_header(nchunk: int, length: int, digest: int) -> bytes:
    """The header of a record; the chunk's ``length`` bytes, of this ``digest``, follow it."""
    return _RECORD.pack(nchunk, length, digest)


def record(nchunk: int, chunk: Buffer) -> bytes:
    """A whole record for ``chunk`` (a copy: for small chunks and tests)."""
    return record_header(nchunk, len(chunk), chunk_digest(chunk)) + bytes(chunk)


def error_record(reason: str) -> bytes:
    """A record ending a stream, for ``reason`` (see :class:`AnswerCut`)."""
    text = reason.encode()[:MAX_REASON]
    return record_header(STREAM_ERROR, len(text), 0) + text


def stream_length(sizes: Sequence[int]) -> int:
    """The length of a chunk stream of chunks of these sizes."""
    return sum(sizes) + RECORD_HEADER_SIZE * len(sizes)


def batched(numbers: list[int], size: int) -> list[list[int]]:
    """``numbers`` in lists of ``size`` (the last one shorter)."""
    return [numbers[i:i + size] for i in range(0, len(numbers), size)]


async def write_records(read: Callable[[list[int]], list[bytes]], batches: Iterable[list[int]],
                        first: list[bytes] | None = None,
                        sizes: dict[int, int] | None = None,
                        digest: Callable[[int, Buffer], int] | None = None
                        ) -> AsyncIterator[Buffer]:
    """A chunk stream's body: each batch of chunk numbers is read with ``read(batch)`` in a
    thread, one batch ahead of the sender; ``first`` is the first batch's chunks if already
    read.  Headers and chunks are yielded separately: no copies.

    ``sizes`` are the chunk sizes a Content-Length was made of: a chunk of another size
    raises ChunkChanged before any of it is sent, so the body is never longer than said.
    ``digest(n, chunk)`` gives a chunk's digest when the sender knows it already (a cache
    that checked the chunk against it); by default it is computed.
    """
    digest = digest or (lambda n, chunk: chunk_digest(chunk))
    batches = list(batches)
    if not batches:
        return
    loop = asyncio.get_running_loop()

    def start(batch: list[int]) -> asyncio.Future:
        return loop.run_in_executor(None, read, batch)

    if first is None:
        pending = start(batches[0])
    else:
        pending = loop.create_future()
        pending.set_result(first)
    try:
        for i, batch in enumerate(batches):
            chunks = await pending
            if i + 1 < len(batches):
                pending = start(batches[i + 1])
            for n, chunk in zip(batch, chunks):
                if sizes is not None and len(chunk) != sizes[n]:
                    raise ChunkChanged(f"chunk {n} is {len(chunk)} bytes, not the "
                                       f"{sizes[n]} announced")
                yield record_header(n, len(chunk), digest(n, chunk))
                yield chunk
    finally:
        if not pending.done():  # the receiver went away: drop the batch being read
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            pending.cancel()


class Readable(Protocol):
    def readinto(self, buffer: Any, /) -> int | None: ...


def read_exactly(body: Readable, buffer: Any) -> int:
    """Fill ``buffer`` from ``body``; returns how many bytes came (fewer only at the end)."""
    view, got = memoryview(buffer).cast("B"), 0
    while got < len(view):
        n = body.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def read_records(body: Readable, max_length: int,
                 keep: Callable[[int], bool] | None = None) -> Iterator[tuple[int, memoryview]]:
    """The ``(nchunk, chunk)`` records of a chunk stream: see :func:`read_digested_records`."""
    for nchunk, chunk, _ in read_digested_records(body, max_length, keep):
        yield nchunk, chunk


def read_digested_records(body: Readable, max_length: int,
                          keep: Callable[[int], bool] | None = None
                          ) -> Iterator[tuple[int, memoryview, int]]:
    """The ``(nchunk, chunk, digest)`` records of a chunk stream read from ``body``, each
    chunk checked against its digest.

    Each chunk is a view of one buffer that the next record overwrites: use it (decompress
    or store it) before asking for the next.  Reusing the buffer spares a fresh allocation,
    and the page faults of filling it, per chunk.  Chunks for which ``keep(nchunk)`` is
    true come in a buffer of their own instead, which the caller may keep.

    Raises StreamCut if the stream is cut short or a record is larger than ``max_length``
    (a chunk can never be: no buffer is sized from untrusted input), DigestMismatch for a
    chunk that does not match its digest, and AnswerCut with the sender's reason if the
    stream ends with an error record.
    """
    header = bytearray(RECORD_HEADER_SIZE)
    buffer = memoryview(bytearray(0))
    while True:
        got = read_exactly(body, header)
        if got == 0:
            return
        if got < len(header):
            raise StreamCut("chunk stream cut short")
        nchunk, length, digest = _RECORD.unpack_from(header)
        if nchunk == STREAM_ERROR and length <= MAX_REASON:
            reason = bytearray(length)
            got = read_exactly(body, reason)
            raise AnswerCut(reason[:got].decode(errors="replace"))
        if length > max_length:
            raise StreamCut(f"chunk of {length} bytes in the stream; "
                            f"at most {max_length} expected")
        if keep is not None and keep(nchunk):
            chunk = memoryview(bytearray(length))
        else:
            if length > len(buffer):
                buffer = memoryview(bytearray(length))
            chunk = buffer[:length]
        if read_exactly(body, chunk) < length:
            raise StreamCut("chunk stream cut short")
        if chunk_digest(chunk) != digest:
            raise DigestMismatch(f"chunk {nchunk} does not match its digest: it was damaged "
                                 "on the way or at its sender")
        yield nchunk, chunk, digest


CHUNK_DIGEST_HEADER = "Caterva2-Chunk-Digest"  # a block stream's whole chunk digest


# ---------------------------------------------------------------------------
# Chunk lists
# ---------------------------------------------------------------------------

def format_chunk_list(numbers: list[int]) -> str:
    """``[0, 1, 2, 5]`` → ``"0-2,5"``: compact chunk lists for URLs."""
    parts: list[str] = []
    start = prev = -2
    for n in numbers:
        if n == prev + 1 and start >= 0:
            prev = n
            continue
        if start >= 0:
            parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = n
    if start >= 0:
        parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


def parse_chunk_list(text: str, nchunks: int, what: str = "chunk") -> list[int]:
    """``"0-3,7"`` → ``[0, 1, 2, 3, 7]``; ValueError for bad or out-of-range items (of
    ``nchunks`` chunks, or of whatever ``what`` the list numbers)."""
    ranges: list[range] = []
    try:
        for item in filter(None, text.split(",")):
            lo, _, hi = item.partition("-")
            ranges.append(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"malformed {what} list {text!r}") from None
    # Bounds first: a short text like "0-999999999" must not expand into a huge list.
    if any(r and not (0 <= r.start and r.stop <= nchunks) for r in ranges):
        raise ValueError(f"{what} numbers must be in 0..{nchunks - 1}")
    if sum(len(r) for r in ranges) > nchunks:
        raise ValueError(f"more {what}s asked for than the {nchunks} there are")
    return [n for r in ranges for n in r]


# ---------------------------------------------------------------------------
# The layout header
# ---------------------------------------------------------------------------
LAYOUT_HEADER = "Caterva2-Layout"


def layout(shape: Sequence[int], dtype: str, chunks: Sequence[int],
           blocks: Sequence[int]) -> str:
    """An array's layout as one line of text, sent with every array answer.

    The client decodes items and chunks with the metadata it fetched earlier, and compares
    this line with its own first.
    """
    return json.dumps([list(shape), dtype, list(chunks), list(blocks)], separators=(",", ":"))


# On an answer (metadata, data, a download) that a subscriber served from its cache while
# neither its broker nor the dataset's publisher could be reached, so that it could not
# check that the dataset is still current: the reason, in words (ASCII).
UNVERIFIED_HEADER = "Caterva2-Unverified"


# ---------------------------------------------------------------------------
# Selections
# ---------------------------------------------------------------------------
MAX_BUFFER_BYTES = 1 << 30  # one Blosc2 buffer holds at most 2 GiB; stay well below
WIRE_CPARAMS = {"codec": blosc2.Codec.LZ4, "clevel": 5}  # fast: subscribers and clients are close


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


def encode_array(data: np.ndarray) -> bytes:
    """An NDArray cframe of ``data`` (0-d included): for dtypes the receiver cannot build
    from the metadata's text (structured ones)."""
    data = np.asarray(data)
    if not data.flags.c_contiguous:  # (np.ascontiguousarray would turn 0-d into 1-d)
        data = data.copy()
    return bytes(blosc2.asarray(data, cparams=WIRE_CPARAMS).to_cframe())


def encode_bytes(data: bytes) -> bytes:
    """A selection of bytes, as one Blosc2 buffer."""
    return bytes(blosc2.compress2(data, typesize=1))


def encode_bytes_frame(data: bytes, typesize: int = 1) -> bytes:
    """A selection of bytes as an SChunk cframe (items of ``typesize`` bytes): what the
    released Caterva2 subscriber answers, and its clients and Blosc2 read
    (``blosc2.schunk_from_cframe(answer)[:]``)."""
    cparams = {**WIRE_CPARAMS, "typesize": typesize if 0 < typesize <= 255 else 1}
    return bytes(blosc2.SChunk(data=data, cparams=cparams).to_cframe())


def decode_selection(content: bytes, is_array: bool) -> Any:
    """What :func:`encode_array` (``is_array``), :func:`encode_bytes` or
    :func:`encode_bytes_frame` made: a NumPy array (a NumPy scalar for 0-d), or bytes."""
    if is_array:
        array = blosc2.ndarray_from_cframe(content)
        return np.asarray(array[()])[()] if array.ndim == 0 else array[:]
    if is_frame(content):
        return bytes(blosc2.schunk_from_cframe(content)[:])
    return blosc2.decompress2(content)


def is_frame(content: bytes) -> bool:
    """Whether ``content`` is a Blosc2 cframe (its header names the format at bytes 2-9)
    rather than one compressed buffer."""
    return bytes(content[2:9]) == b"b2frame"
