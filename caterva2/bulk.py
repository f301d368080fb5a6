"""Reading data answers (selections, chunk streams, downloads) fast, on the client side.

API calls go through httpx; answers that carry data are read with the standard library's
:mod:`http.client` instead, because its ``readinto`` fills our own buffers with no
intermediate copies.  On loopback it moves 100 MB in about 0.02 s where httpx needs 0.07
to 0.14 s (``bench/http_read.py``), which is most of what a cached full read costs.

Connections are kept alive, one per server and thread.  Failures are raised as the httpx
exceptions the rest of the library uses (``httpx.ConnectError``, ``httpx.ReadError``...),
so callers see one vocabulary of errors.
"""
from __future__ import annotations

import contextlib
import http.client
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from typing import BinaryIO

import httpx

from caterva2 import b2

READ_BUFFER = 4 << 20
_local = threading.local()


class _Connections(dict):
    """A thread's kept-alive connections, closed when the thread ends (not left to the
    garbage collector, which warns about unclosed sockets)."""

    def __del__(self) -> None:
        for conn in self.values():
            conn.close()


def _pool() -> dict[tuple[str, str], http.client.HTTPConnection]:
    if not hasattr(_local, "connections"):
        _local.connections = _Connections()
    return _local.connections


def _connect(scheme: str, netloc: str,
             timeout: tuple[float, float]) -> http.client.HTTPConnection:
    cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
    conn = cls(netloc, timeout=timeout[0])
    conn.connect()
    conn.sock.settimeout(timeout[1])
    return conn


@contextlib.contextmanager
def get(url: str, params: dict[str, str] | None = None,
        timeout: tuple[float, float] = (5, 300)) -> Iterator[http.client.HTTPResponse]:
    """GET ``url``; the response (any status) is read inside the ``with`` block.

    ``timeout`` is (seconds to connect, seconds to wait for each piece of the answer).
    A connection left half-read (an exception in the block) is closed, never reused.
    """
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{urllib.parse.urlencode(params)}" if params else "")
    key = (parts.scheme, parts.netloc)
    pool = _pool()

    def request() -> httpx.Request:  # what errors carry; built only then (it costs ~0.2 ms)
        return httpx.Request("GET", url, params=params)

    for attempt in range(2):
        conn = pool.pop(key, None)
        reused = conn is not None
        if conn is None:
            try:
                conn = _connect(*key, timeout)
            except TimeoutError:
                raise httpx.ConnectTimeout(f"cannot connect to {parts.netloc} in time",
                                           request=request()) from None
            except OSError as e:
                raise httpx.ConnectError(f"cannot connect to {parts.netloc}: {e}",
                                         request=request()) from None
        try:
            conn.request("GET", target, headers={"Accept-Encoding": "identity"})
            response = conn.getresponse()
            break
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
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
        raise httpx.ReadTimeout(f"{parts.netloc} stopped sending", request=request()) from None
    except (http.client.HTTPException, ConnectionError) as e:
        conn.close()
        raise httpx.ReadError(f"answer from {parts.netloc} cut short: {e}",
                              request=request()) from None
    except BaseException:
        conn.close()
        raise
    if response.isclosed() and not response.will_close:
        pool[key] = conn  # fully read: the connection can serve the next request
    else:
        conn.close()


def as_httpx(response: http.client.HTTPResponse, url: str) -> httpx.Response:
    """An error answer, read whole, as an httpx.Response (for ServerError)."""
    return httpx.Response(response.status, headers=response.getheaders(),
                          content=response.read(), request=httpx.Request("GET", url))


def read_exactly(response: http.client.HTTPResponse, buffer) -> int:
    """Fill ``buffer`` from the body; returns how many bytes came (fewer only at the end)."""
    view, got = memoryview(buffer).cast("B"), 0
    while got < len(view):
        n = response.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def records(response: http.client.HTTPResponse, max_length: int,
            keep: Callable[[int], bool] | None = None) -> Iterator[tuple[int, memoryview]]:
    """The ``(nchunk, chunk)`` records of a chunk stream (see :mod:`caterva2.b2`).

    Each chunk is a view of one buffer that the next record overwrites: use it (decompress
    or store it) before asking for the next.  Reusing the buffer spares a fresh allocation,
    and the page faults of filling it, per chunk.  Chunks for which ``keep(nchunk)`` is
    true come in a buffer of their own instead, which the caller may keep.

    Raises httpx.RemoteProtocolError if the stream is cut short or a record is larger than
    ``max_length`` (a chunk can never be: no buffer is sized from untrusted input), and
    b2.AnswerCut with the sender's reason if it ends with an error record.
    """
    header = bytearray(b2.RECORD_HEADER_SIZE)
    buffer = memoryview(bytearray(0))
    while True:
        got = read_exactly(response, header)
        if got == 0:
            return
        if got < len(header):
            raise httpx.RemoteProtocolError("chunk stream cut short")
        nchunk, length = b2.parse_record_header(header)
        if nchunk == b2.STREAM_ERROR and length <= b2.MAX_REASON:
            reason = bytearray(length)
            got = read_exactly(response, reason)
            raise b2.AnswerCut(reason[:got].decode(errors="replace"))
        if length > max_length:
            raise httpx.RemoteProtocolError(f"chunk of {length} bytes in the stream; "
                                            f"at most {max_length} expected")
        if keep is not None and keep(nchunk):
            chunk = memoryview(bytearray(length))
        else:
            if length > len(buffer):
                buffer = memoryview(bytearray(length))
            chunk = buffer[:length]
        if read_exactly(response, chunk) < length:
            raise httpx.RemoteProtocolError("chunk stream cut short")
        yield nchunk, chunk


def save(response: http.client.HTTPResponse, out: BinaryIO) -> int:
    """Write the whole body to ``out``; returns its size."""
    buffer = bytearray(READ_BUFFER)
    view, total = memoryview(buffer), 0
    while n := response.readinto(buffer):
        out.write(view[:n])
        total += n
    length = response.getheader("content-length")
    if length is not None and total != int(length):
        raise httpx.RemoteProtocolError(f"download cut short ({total} of {length} bytes)")
    return total
