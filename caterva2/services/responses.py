"""Responses that carry data: chunk streams and whole files."""
from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio.to_thread
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.datastructures import Headers
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable
from starlette.types import Receive, Scope, Send

from caterva2 import wire
from caterva2.chunks import Buffer


class LargeFileResponse(FileResponse):
    """A file answer read and sent in 4 MiB pieces (Starlette's 64 KiB halves the speed),
    as ``application/octet-stream`` unless told otherwise (as the schemas say; not a type
    guessed from the file's name by whatever MIME table the host has).

    A ``Range`` header asks for parts of the file (a 206, as Starlette answers it); one
    that cannot be served is a JSON error like every other (Starlette's is plain text):
    400 if it is malformed, 416 if it starts beyond the file's end.
    """

    chunk_size = 4 << 20

    def __init__(self, path: str | os.PathLike[str], *,
                 media_type: str | None = "application/octet-stream", **kwargs: Any):
        super().__init__(path, media_type=media_type, **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._range_refusal(scope)
        await (refusal or super().__call__)(scope, receive, send)

    async def _range_refusal(self, scope: Scope) -> JSONResponse | None:
        """The error for a ``Range`` header that Starlette would refuse, if any."""
        headers = Headers(scope=scope)
        asked = headers.get("range")
        # (with If-Range, Starlette may send the whole file instead: let it decide)
        if asked is None or "if-range" in headers or scope.get("method") not in ("GET", "HEAD"):
            return None
        try:
            stat = self.stat_result
            if stat is None:
                stat = await anyio.to_thread.run_sync(os.stat, self.path)
            self._parse_range_header(asked, stat.st_size)
        except OSError:  # (gone meanwhile: Starlette's answer says so)
            return None
        except MalformedRangeHeader as e:
            return JSONResponse({"detail": f"bad Range header {asked[:100]!r}: {e.content} "
                                           "(expected bytes=START-END[, ...])"}, 400)
        except RangeNotSatisfiable as e:
            return JSONResponse({"detail": f"Range {asked[:100]!r} starts beyond the end of "
                                           f"the file ({e.max_size} bytes)"}, 416,
                                headers={"Content-Range": f"bytes */{e.max_size}"})
        return None


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
