"""What every service shares: logging, serving on a pre-bound socket, errors, atomic files."""
from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import logging
import os
import pathlib
import socket
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from caterva2 import b2, config, paths

log = logging.getLogger("caterva2")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def bind(http: str) -> tuple[socket.socket, str]:
    """Bind a listening socket for ``HOST:PORT``; returns it and the address really bound.

    Port 0 picks a free port, so tests and parallel runs never collide.
    """
    host, port = config.parse_host(http)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: only then does asyncio set TCP_NODELAY on accepted
    # connections; without it every reply on a kept-alive connection waits ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise config.ConfigError(f"cannot listen on {http}: {e.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock, f"{host}:{sock.getsockname()[1]}"


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed chunk-sized buffers instead of returning them to the OS.

    Services allocate and free buffers of a chunk's size (about 1-10 MB) many times a second.
    By default glibc maps each with ``mmap`` and unmaps it when freed, so every new buffer
    is filled through fresh page faults; on virtual machines that is as slow as copying the
    data several times (a cached 100 MB read went from 0.14 to 0.12 s, median of 36 runs).
    Buffers up to 64 MiB come from the heap instead, and up to 64 MiB of free heap is kept
    for reuse (a few batches of chunks).  Memory stays bounded by the chunks in flight.

    All threads share one heap (one malloc arena): chunks are read in worker threads and
    freed in the event loop's, and with an arena per thread each one grew and kept a heap
    of its own.  One arena cut peak memory by 40% (subscriber 229 -> 137 MB, publisher
    199 -> 152 MB) at the same speed (``bench/ab.py``, 8 rounds).
    Does nothing where the C library is not glibc.
    """
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # from glibc's malloc.h
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):  # not glibc: leave the defaults
        return
    mallopt(M_MMAP_THRESHOLD, 64 << 20)
    mallopt(M_TRIM_THRESHOLD, 64 << 20)
    mallopt(M_ARENA_MAX, 1)


class _CutResponses(logging.Filter):
    """One line, not uvicorn's traceback, for a response that ends before its Content-Length.

    That is how a publisher cuts short a chunk stream whose file changed while being sent
    (the subscriber sees fewer chunks than it asked for, and reads the new version); the
    publisher logs why, so uvicorn's traceback says nothing more.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RuntimeError) and "shorter than Content-Length" in str(error):
            record.msg, record.args = "a response was cut short: %s", (error,)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
        return True


def serve(app: FastAPI, sock: socket.socket, address: str, statedir: pathlib.Path,
          loglevel: str) -> None:
    """Run ``app`` until SIGINT/SIGTERM.  Writes ``STATEDIR/address`` once listening."""
    server = uvicorn.Server(uvicorn.Config(app, log_level=loglevel, access_log=False,
                                           timeout_graceful_shutdown=3, ws_ping_interval=10))
    logging.getLogger("uvicorn.error").addFilter(_CutResponses())  # (once uvicorn set it up)
    atomic_write(statedir / "address", address)
    server.run(sockets=[sock])


def run_service(kind: str, description: str, defaults: dict[str, Any],
                make_app: Callable[[dict[str, Any]], FastAPI],
                add_arguments: Callable | None = None) -> None:
    """Parse options, build the service's app with ``make_app(settings)`` and serve it.

    Configuration errors end with one clear line on stderr and exit status 2.
    """
    parser = config.service_parser(description, kind)
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args()
    try:
        settings = config.resolve(args, kind, defaults)
        setup_logging(settings["loglevel"])
        statedir = pathlib.Path(settings["statedir"])
        statedir.mkdir(parents=True, exist_ok=True)
        settings["statedir"] = statedir
        sock, address = bind(settings["http"])
        settings["address"] = address
        app = make_app(settings)
    except (config.ConfigError, FileNotFoundError, ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    keep_freed_memory()
    print(f"{parser.prog}: listening on http://{address}", file=sys.stderr, flush=True)
    serve(app, sock, address, statedir, settings["loglevel"])


def atomic_write(path: pathlib.Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never half."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: pathlib.Path, default: Any) -> Any:
    """A JSON state file, or ``default`` when it is missing or unreadable."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable state file %s: %s", path, e)
        return default


def install_error_handlers(app: FastAPI) -> None:
    """Errors are JSON ``{"detail": ...}``; bad request parameters are a 400, not a 422."""

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return JSONResponse({"detail": f"invalid {where}: {first.get('msg', 'bad input')}"},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)  # ours, and the router's (no such URL)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.url.path} (the API is described at /docs)"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = f"{request.method} is not allowed for {request.url.path}"
        return JSONResponse({"detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(OSError)  # a full disk (...): 507, not a 500 with a traceback
    async def disk_error(request: Request, exc: OSError) -> JSONResponse:
        if exc.errno not in DISK_ERRORS:
            raise exc
        logging.getLogger("caterva2").error("%s %s: %s", request.method, request.url.path,
                                            exc)
        return JSONResponse({"detail": disk_error_text(exc, f"the {request.app.title}")},
                            status_code=507)


NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
DISK_ERRORS = NO_SPACE | {errno.EROFS}


def disk_error_text(error: OSError, service: str) -> str:
    """What a client is told of a failed write (the error's text, never a server path)."""
    advice = "; free space where its --statedir is, then try again" \
        if error.errno in NO_SPACE else ""
    return f"{service} cannot write to its disk ({error.strerror or 'write error'}){advice}"


def safe_relpath(path: str) -> str:
    """Validate a dataset path from a URL (see :func:`caterva2.paths.check_relpath`).

    Raises HTTPException(400) otherwise, so nothing outside a root is ever named.
    """
    try:
        return paths.check_relpath(path)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None


class ChunkChanged(Exception):
    """A chunk read for a stream differs in size from what its Content-Length announced:
    the data changed since the sizes were read, and the stream must end before it."""


async def chunk_records(read: Callable[[list[int]], list[bytes]], batches: Iterable[list[int]],
                        first: list[bytes] | None = None,
                        sizes: dict[int, int] | None = None) -> AsyncIterator[bytes]:
    """A chunk stream's body (see :mod:`caterva2.b2`): each batch of chunk numbers is read
    with ``read(batch)`` in a thread, one batch ahead of the sender; ``first`` is the first
    batch's chunks if already read.  Headers and chunks are yielded separately: no copies.

    ``sizes`` are the chunk sizes a Content-Length was made of: a chunk of another size
    raises ChunkChanged before any of it is sent, so the body is never longer than said.
    """
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
                yield b2.record_header(n, len(chunk))
                yield chunk
    finally:
        if not pending.done():  # the receiver went away: drop the batch being read
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
            pending.cancel()


def stream_length(sizes: list[int]) -> int:
    """The length of a chunk stream of chunks of these sizes."""
    return sum(sizes) + b2.RECORD_HEADER_SIZE * len(sizes)


def batched(numbers: list[int], size: int) -> list[list[int]]:
    return [numbers[i:i + size] for i in range(0, len(numbers), size)]


class LargeFileResponse(FileResponse):
    """A file answer read and sent in 4 MiB pieces (Starlette's 64 KiB halves the speed)."""

    chunk_size = 4 << 20
