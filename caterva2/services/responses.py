"""Responses that carry data: chunk streams and whole files."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import FileResponse, StreamingResponse

from caterva2 import wire
from caterva2.chunks import Buffer


class LargeFileResponse(FileResponse):
    """A file answer read and sent in 4 MiB pieces (Starlette's 64 KiB halves the speed),
    as ``application/octet-stream`` unless told otherwise (Blosc2 files have no registered
    type: Starlette would guess ``text/plain``)."""

    chunk_size = 4 << 20

    def __init__(self, path: str | os.PathLike[str], *args: Any,
                 media_type: str | None = "application/octet-stream", **kwargs: Any):
        super().__init__(path, *args, media_type=media_type, **kwargs)


def chunk_stream(body: AsyncIterator[Buffer], headers: dict[str, str],
                 sizes: list[int] | None = None) -> StreamingResponse:
    """A chunk stream answer (see :mod:`caterva2.wire`).  With the ``sizes`` of the chunks
    it holds, its length is announced: no chunked encoding, and uvicorn sends each chunk
    without copying it."""
    if sizes is not None:
        headers = {**headers, "Content-Length": str(wire.stream_length(sizes))}
    return StreamingResponse(body, media_type=wire.CHUNKS_MEDIA_TYPE, headers=headers)
