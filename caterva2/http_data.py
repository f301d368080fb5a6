"""Reading data answers (selections, chunk streams, downloads) fast.

API calls go through httpx; answers that carry data are read with the standard library's
:mod:`http.client` instead, because its ``readinto`` fills our own buffers with no
intermediate copies.  On loopback it moves 100 MB in about 0.02 s where httpx needs 0.07
to 0.14 s (``bench/http_read.py``), which is most of what a cached full read costs.

A :class:`ConnectionPool` keeps the connections alive between answers, so that a read does
not pay for a new TCP connection.  It may be used from many threads at once; each answer
has a connection to itself while it is read.  Failures are raised as the httpx exceptions
the rest of the library uses (``httpx.ConnectError``, ``httpx.ReadError``...), so callers
see one vocabulary of errors::

    with ConnectionPool() as pool, pool.get("http://localhost:8002/files/foo/a.b2nd") as r:
        save(r, out)
"""
from __future__ import annotations

import contextlib
import http.client
import select
import ssl
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import BinaryIO

import httpx

from caterva2 import tls, wire

READ_BUFFER = 4 << 20
TIMEOUT = (5.0, 300.0)  # seconds to connect, seconds to wait for each piece of an answer
MAX_IDLE = 32  # kept-alive connections per server; more are closed when given back

Key = tuple[str, str]  # (scheme, netloc)


def _connect(key: Key, timeout: tuple[float, float],
             ssl_context: ssl.SSLContext | None) -> http.client.HTTPConnection:
    scheme, netloc = key
    if scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            netloc, timeout=timeout[0], context=ssl_context or tls.client_context())
    else:
        conn = http.client.HTTPConnection(netloc, timeout=timeout[0])
    conn.connect()
    conn.sock.settimeout(timeout[1])
    return conn


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle connection was closed by the server: with no request sent, anything
    to read (the end of the stream, most likely) means it cannot serve another."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        if hasattr(select, "poll"):
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


class ConnectionPool:
    """Kept-alive :mod:`http.client` connections, per server, shared by threads.

    A connection is taken from the pool (or opened) for one request, and given back once
    its answer has been read whole; one left half-read is closed, never reused.
    :meth:`close` closes the idle connections, and those given back afterwards.
    """

    def __init__(self, timeout: tuple[float, float] = TIMEOUT, max_idle: int = MAX_IDLE,
                 ssl_context: ssl.SSLContext | None = None):
        """``timeout`` is (seconds to connect, seconds to wait for each piece of an answer);
        at most ``max_idle`` connections per server are kept for reuse; ``https`` servers'
        certificates are checked with ``ssl_context`` (default:
        :func:`caterva2.tls.client_context`)."""
        self.timeout, self.max_idle, self.ssl_context = timeout, max_idle, ssl_context
        self._lock = threading.Lock()
        self._idle: dict[Key, list[http.client.HTTPConnection]] = {}
        self._closed = False

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.idle()} idle"
        return f"<ConnectionPool: {state}>"

    @property
    def closed(self) -> bool:
        return self._closed

    def idle(self) -> int:
        """How many kept-alive connections wait to be reused."""
        with self._lock:
            return sum(len(conns) for conns in self._idle.values())

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when given back.
        The pool opens no connection after this."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _take(self, key: Key) -> http.client.HTTPConnection | None:
        """An idle connection to ``key`` that the server has not closed, if there is one."""
        while True:
            with self._lock:
                if self._closed:
                    raise RuntimeError("this connection pool is closed")
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()  # the latest: the likeliest to be alive
            if not _dropped(conn):
                return conn
            conn.close()  # (a server closes idle connections after a while, or restarts)

    def _give_back(self, key: Key, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed:
                conns = self._idle.setdefault(key, [])
                if len(conns) < self.max_idle:
                    conns.append(conn)
                    return
        conn.close()

    @contextlib.contextmanager
    def get(self, url: str, params: dict[str, str] | None = None,
            timeout: tuple[float, float] | None = None,
            headers: dict[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
        """GET ``url`` (with ``headers`` too); the response (any status) is read inside the
        ``with`` block.

        ``timeout`` overrides the pool's (seconds to connect, seconds per piece).
        A connection left half-read (an exception in the block) is closed, never reused.
        """
        parts = urllib.parse.urlsplit(url)
        target = (parts.path or "/") + (f"?{urllib.parse.urlencode(params)}" if params else "")
        key = (parts.scheme, parts.netloc)
        timeout = timeout or self.timeout

        def request() -> httpx.Request:  # what errors carry; built only then (~0.2 ms)
            return httpx.Request("GET", url, params=params)

        for attempt in range(2):
            taken = self._take(key) if attempt == 0 else None  # a retry opens a new one
            reused = taken is not None
            if taken is not None:
                conn = taken
            else:
                try:
                    conn = _connect(key, timeout, self.ssl_context)
                except TimeoutError:
                    raise httpx.ConnectTimeout(f"cannot connect to {parts.netloc} in time",
                                               request=request()) from None
                except OSError as e:
                    raise httpx.ConnectError(f"cannot connect to {parts.netloc}: {e}",
                                             request=request()) from None
            try:
                conn.request("GET", target, headers={"Accept-Encoding": "identity",
                                                     **(headers or {})})
                response = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError,
                    BrokenPipeError) as e:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed a kept-alive connection: open a new one
                raise httpx.ReadError(f"connection to {parts.netloc} lost: {e}",
                                      request=request()) from None
            except TimeoutError:
                conn.close()
                raise httpx.ReadTimeout(f"no answer from {parts.netloc} in time",
                                        request=request()) from None
            except (http.client.HTTPException, OSError) as e:
                conn.close()
                raise httpx.ReadError(f"bad answer from {parts.netloc}: {e}",
                                      request=request()) from None
        try:
            yield response
        except TimeoutError:
            conn.close()
            raise httpx.ReadTimeout(f"{parts.netloc} stopped sending",
                                    request=request()) from None
        except (http.client.HTTPException, ConnectionError) as e:
            conn.close()
            raise httpx.ReadError(f"answer from {parts.netloc} cut short: {e}",
                                  request=request()) from None
        except BaseException:
            conn.close()
            raise
        if response.isclosed() and not response.will_close:
            self._give_back(key, conn)  # fully read: it can serve the next request
        else:
            conn.close()


def as_httpx(response: http.client.HTTPResponse, url: str) -> httpx.Response:
    """An error answer, read whole, as an httpx.Response (for ServerError)."""
    return httpx.Response(response.status, headers=response.getheaders(),
                          content=response.read(), request=httpx.Request("GET", url))


def records(response: http.client.HTTPResponse, max_length: int,
            keep: Callable[[int], bool] | None = None) -> Iterator[tuple[int, memoryview]]:
    """The ``(nchunk, chunk)`` records of a chunk stream: :func:`caterva2.wire.read_records`
    with a stream cut short (or a record larger than ``max_length``) raised as
    httpx.RemoteProtocolError, like any other broken answer.  An error record still raises
    :class:`caterva2.wire.AnswerCut` with the sender's reason."""
    try:
        yield from wire.read_records(response, max_length, keep)
    except wire.StreamCut as e:
        raise httpx.RemoteProtocolError(str(e)) from None


def save(response: http.client.HTTPResponse, out: BinaryIO,
         progress: Callable[[int, int | None], None] | None = None) -> int:
    """Write the whole body to ``out``; returns its size.  ``progress(done, total)`` is
    told the bytes written so far after each read (``total``: the Content-Length, if
    any; see :mod:`caterva2.progress`)."""
    buffer = bytearray(READ_BUFFER)
    view, total = memoryview(buffer), 0
    length = response.getheader("content-length")
    expected = int(length) if length is not None and length.isdigit() else None
    while n := response.readinto(buffer):
        out.write(view[:n])
        total += n
        if progress is not None:
            progress(total, expected)
    if length is not None and total != int(length):
        raise httpx.RemoteProtocolError(f"download cut short ({total} of {length} bytes)")
    return total
