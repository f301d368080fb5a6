"""Responses that carry data: chunk streams and whole files."""
from __future__ import annotations

from collections.abc import AsyncIterator

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
