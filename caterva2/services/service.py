"""Starting a service process: options, logging, a pre-bound socket, uvicorn, memory."""
from __future__ import annotations

import ctypes
import logging
import pathlib
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI

from caterva2 import config, tls
from caterva2.services.limits import BoundedHeads
from caterva2.statefiles import atomic_write


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


def serve(app: FastAPI, sockets: list[socket.socket], address: str, statedir: pathlib.Path,
          loglevel: str, **server_options: Any) -> None:
    """Run ``app`` on ``sockets`` until SIGINT/SIGTERM.  Writes ``STATEDIR/address`` once
    listening.  ``server_options`` go to ``uvicorn.Config``."""
    options: dict[str, Any] = {"http": BoundedHeads, **server_options}
    server = uvicorn.Server(uvicorn.Config(app, log_level=loglevel, access_log=False,
                                           timeout_graceful_shutdown=3, ws_ping_interval=10,
                                           **options))
    logging.getLogger("uvicorn.error").addFilter(_CutResponses())  # (once uvicorn set it up)
    atomic_write(statedir / "address", address)
    server.run(sockets=sockets)


def run_service(kind: str, description: str, defaults: dict[str, Any],
                make_app: Callable[[dict[str, Any]], FastAPI],
                add_arguments: Callable | None = None, **server_options: Any) -> None:
    """Parse options, build the service's app with ``make_app(settings)`` and serve it
    (``server_options`` go to ``uvicorn.Config``).  ``settings["sockets"]`` holds the
    bound listening socket; ``make_app`` may add more sockets to serve the app on.

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
        tls.use_ca_bundle(settings.get("ca_bundle"))
        server_options.update(tls_options(settings))
        sock, address = bind(settings["http"])
        if "ssl_certfile" in server_options:
            address = f"https://{address}"
        settings["address"] = address
        settings["sockets"] = [sock]
        app = make_app(settings)
    except (config.ConfigError, FileNotFoundError, ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    keep_freed_memory()
    print(f"{parser.prog}: listening on {tls.base_url(address)}", file=sys.stderr, flush=True)
    serve(app, settings["sockets"], address, statedir, settings["loglevel"], **server_options)


def tls_options(settings: dict[str, Any]) -> dict[str, str]:
    """uvicorn's options to listen with TLS, if a certificate and key are set (checked
    now: a clear error at start, not a failure per connection)."""
    certfile, keyfile = settings.get("certfile"), settings.get("keyfile")
    if not certfile:
        return {}
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as e:
        raise config.ConfigError(f"cannot listen with TLS using {certfile} and {keyfile}: "
                                 f"{e}") from None
    return {"ssl_certfile": certfile, "ssl_keyfile": keyfile}
