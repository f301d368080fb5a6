"""Responses that carry data: chunk streams and whole files."""
from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from fastapi.responses import FileResponse, StreamingResponse

from caterva2 import wire
from caterva2.chunks import Buffer


class LargeFileResponse(FileResponse):
    """A file answer read and sent in 4 MiB pieces (Starlette's 64 KiB halves the speed)."""

    chunk_size = 4 << 20


def chunk_stream(body: AsyncIterator[Buffer], headers: dict[str, str],
                 sizes: list[int] | None = None) -> StreamingResponse:
    """A chunk stream answer (see :mod:`caterva2.wire`).  With the ``sizes`` of the chunks
    it holds, its length is announced: no chunked encoding, and uvicorn sends each chunk
    without copying it."""
    if sizes is not None:
        headers = {**headers, "Content-Length": str(wire.stream_length(sizes))}
    return StreamingResponse(body, media_type=wire.CHUNKS_MEDIA_TYPE, headers=headers)


def block_stream(pieces: Sequence[tuple[int, Buffer]], chunk_digest: int,
                 headers: dict[str, str]) -> StreamingResponse:
    """A block stream answer (see :mod:`caterva2.wire`): ``(offset, bytes)`` pieces of one
    chunk, each with its own digest, and the whole chunk's digest in
    :data:`caterva2.wire.CHUNK_DIGEST_HEADER`."""
    async def records() -> AsyncIterator[Buffer]:
        for offset, piece in pieces:
            yield wire.record_header(offset, len(piece), wire.chunk_digest(piece))
            yield piece

    return chunk_stream(records(), {**headers, wire.CHUNK_DIGEST_HEADER: str(chunk_digest)},
                        [len(piece) for _, piece in pieces])
