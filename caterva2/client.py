"""The Caterva2 client library: talk to a subscriber, get roots, metadata and data.

Everything here needs only ``httpx``, ``numpy`` and ``blosc2``.  Data arrives as Blosc2
(never pickle) and is decoded locally::

    >>> import caterva2 as cat2
    >>> root = cat2.Root("foo")               # subscribes to root foo
    >>> root.node_list[:2]
    ['README.md', 'dir1/ds-2d.b2nd']
    >>> ds = root["dir1/ds-2d.b2nd"]
    >>> ds[1, ::5]                            # a NumPy array
    array([20, 25, 30, 35], dtype=uint16)
    >>> root["ds-hello.b2frame"][:12]         # bytes
    b'Hello world!'
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import math
import os
import pathlib
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import blosc2
import httpx
import numpy as np

from caterva2 import b2, bulk, paths, slicing

bro_host_default = "localhost:8000"
"""The default HTTP endpoint of the broker (host:port)."""
pub_host_default = "localhost:8001"
"""The default HTTP endpoint of a publisher (host:port)."""
sub_host_default = "localhost:8002"
"""The default HTTP endpoint of the subscriber (host:port)."""

TIMEOUT = httpx.Timeout(300, connect=5)
# Selections at least this large, and covering at least 1/STREAM_COVERAGE of the chunks
# they touch, travel as stored chunks and are decompressed here, not on the subscriber.
STREAM_MIN_BYTES = 256 * 1024
STREAM_COVERAGE = 4


class _LayoutChanged(Exception):
    """An answer laid out differently from this client's metadata: the dataset changed."""


class ServerError(httpx.HTTPStatusError):
    """The subscriber refused a request; ``str(error)`` is its explanation."""

    def __init__(self, response: httpx.Response):
        try:
            detail = response.json().get("detail", response.text)
        except (ValueError, AttributeError):  # not one of our services' JSON errors
            detail = f"{response.reason_phrase} (not an answer of a Caterva2 service)"
        super().__init__(f"{detail} (HTTP {response.status_code})",
                         request=response.request, response=response)
        self.status_code, self.detail = response.status_code, detail


@functools.lru_cache(maxsize=1)
def _http() -> httpx.Client:
    """One pooled HTTP client for the whole program: connections are reused."""
    return httpx.Client(timeout=TIMEOUT)


def _url(host: str, path: str) -> str:
    base = host if host.startswith(("http://", "https://")) else f"http://{host}"
    return f"{base.rstrip('/')}/{urllib.parse.quote(path)}"


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ServerError(response)
    return response


@contextlib.contextmanager
def _data(url: str, params: dict | None = None) -> Iterator[http.client.HTTPResponse]:
    """A data answer (read fast, see :mod:`caterva2.bulk`); ServerError if refused."""
    with bulk.get(url, params) as r:
        if r.status >= 400:
            raise ServerError(bulk.as_httpx(r, url))
        yield r


def _json(response: httpx.Response) -> Any:
    try:
        return _checked(response).json()
    except ValueError:
        raise ValueError(f"{response.request.url.netloc.decode()} answered "
                         f"{response.request.url.path} with something that is not JSON: "
                         "is it a Caterva2 subscriber?") from None


def _get(host: str, path: str, params: dict | None = None) -> Any:
    return _json(_http().get(_url(host, path), params=params))


def _post(host: str, path: str) -> Any:
    return _json(_http().post(_url(host, path)))


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

def get_roots(host: str = sub_host_default) -> dict[str, dict[str, Any]]:
    """Roots known to the subscriber: ``{name: {"name", "http", "subscribed"}}``."""
    return _get(host, "api/roots")


def subscribe(root: str, host: str = sub_host_default) -> str:
    """Ask the subscriber to follow ``root``; returns ``"Ok"``."""
    return _post(host, f"api/subscribe/{paths.check_root_name(root)}")


def get_list(root: str, host: str = sub_host_default) -> list[str]:
    """Dataset paths of a subscribed root, relative to the root."""
    return _get(host, f"api/list/{paths.check_root_name(root)}")


def get_info(dataset: str, host: str = sub_host_default) -> dict[str, Any]:
    """Metadata of ``dataset`` (``ROOT/PATH``), as a dict."""
    paths.split_dataset(dataset)
    return _get(host, f"api/info/{dataset}")


def _decode(content: bytes, is_array: bool):
    if is_array:
        array = blosc2.ndarray_from_cframe(content)
        return np.asarray(array[()])[()] if array.ndim == 0 else array[:]
    return blosc2.decompress2(content)


def fetch(dataset: str, host: str = sub_host_default, slice_=None, prefer_schunk: bool = True):
    """A selection of ``dataset``: a NumPy array (or scalar) for ``.b2nd``, else bytes.

    ``slice_`` is text (``"0:10, ::2"``) or a key (``3``, ``slice(0, 10)``, a tuple).
    ``prefer_schunk`` is accepted for compatibility; data always travels as Blosc2.
    """
    paths.split_dataset(dataset)
    text = slice_ if isinstance(slice_, str) else slicing.format_slice(slice_)
    url = _url(host, f"api/fetch/{dataset}")
    with _data(url, {"slice_": text}) as r:
        content = r.read()
    return _decode(content, str(dataset).endswith(".b2nd"))


def download(dataset: str, host: str = sub_host_default) -> pathlib.Path:
    """Save the complete ``dataset`` at ``./ROOT/PATH``; returns that path.

    Ordinary files are decompressed back to their original bytes.
    """
    paths.split_dataset(dataset)
    url = _get(host, f"api/download/{dataset}")
    return _download_url(url, pathlib.Path(dataset))


def _download_url(url: str, local: pathlib.Path) -> pathlib.Path:
    """Stream ``url`` to ``local`` (atomically); unpack ``.b2`` files to their original bytes."""
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(local.parent / f".{local.name}.{uuid.uuid4().hex[:12]}.part")
    # (not tempfile.mkstemp: its files are private, 0600; a download gets the usual mode)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f, _data(url) as r:
            bulk.save(r, f)
        if url.endswith(".b2"):
            packed, tmp = tmp, tmp + ".unpacked"
            schunk = blosc2.open(packed)
            with open(tmp, "wb") as out:
                for n in range(schunk.nchunks):  # one chunk at a time: bounded memory
                    out.write(schunk.decompress_chunk(n))
            del schunk
            os.unlink(packed)
        os.replace(tmp, local)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return local


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------

class Root:
    """A root followed through a subscriber; creating it subscribes.

    ``root[path]`` gives a :class:`Dataset` for ``.b2nd``/``.b2frame`` paths and a
    :class:`File` for anything else.
    """

    def __init__(self, name: str, host: str = sub_host_default):
        self.name, self.host = name, host
        if subscribe(name, host) != "Ok":
            raise ValueError(f"could not subscribe to root {name!r}")
        self.node_list: list[str] = get_list(name, host)

    def __repr__(self) -> str:
        return f"<Root: {self.name}>"

    def __getitem__(self, node: str) -> File:
        if node.endswith((".b2nd", ".b2frame")):
            return Dataset(node, root=self.name, host=self.host)
        return File(node, root=self.name, host=self.host)


class File:
    """A dataset of a root, with its metadata; index it (``file[0:10]``) to get data.

    Ordinary files and ``.b2frame`` datasets give ``bytes``; ``.b2nd`` datasets give
    NumPy arrays.
    """

    def __init__(self, name: str, root: str, host: str = sub_host_default):
        self.name, self.root, self.host = name, root, host
        self.path = pathlib.Path(f"{root}/{name}")
        paths.split_dataset(f"{root}/{name}")  # ValueError for unsafe names
        self.meta: dict[str, Any] = get_info(self._dataset, host)

    @property
    def _dataset(self) -> str:
        return f"{self.root}/{self.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.path}>"

    @functools.cached_property
    def vlmeta(self) -> dict[str, Any]:
        """User attributes of the dataset."""
        return self.meta.get("schunk", self.meta).get("vlmeta", {})

    def __getitem__(self, key):
        if key is None:  # (fetch(None) is everything; NumPy's a[None] adds an axis)
            key = (None,)  # refused as such
        return self.fetch(key)

    def fetch(self, slice_=None, prefer_schunk: bool = True):
        """The selection ``slice_`` (text or key) of the dataset.

        If the dataset changed shape, dtype or chunking since this object got its metadata,
        the metadata is fetched again and the read redone (answers are decoded with it); an
        answer cut short by a change at the source is read again too.  Raises ServerError
        when the subscriber refuses the read, and AnswerCut (with the reason) when it could
        not finish a large answer it had started; never returns part of a selection.
        """
        key = slicing.parse_slice(slice_) if isinstance(slice_, str) else \
            slicing.as_key(slice_)
        for attempt in range(3):
            try:
                return self._fetch(key, prefer_schunk)
            except b2.IncompleteAnswer:
                if attempt == 2:
                    raise
                continue
            except ServerError as e:
                if e.response.status_code != 409:  # 409: the layout changed while being read
                    raise
            except _LayoutChanged:
                pass
            self.meta = get_info(self._dataset, self.host)
            self.__dict__.pop("vlmeta", None)
        raise ValueError(f"{self._dataset} keeps changing while being read; read it again")

    def _check_layout(self, response: http.client.HTTPResponse) -> None:
        sent = response.getheader(b2.LAYOUT_HEADER)
        if sent is not None and sent != b2.layout(self.meta):
            raise _LayoutChanged

    def _fetch(self, key, prefer_schunk: bool):
        meta = self.meta
        try:
            dtype = np.dtype(meta["dtype"]) if meta.get("shape") is not None else None
        except TypeError:
            dtype = None  # a structured dtype: the subscriber builds the array (a cframe)
        if dtype is None:
            return fetch(self._dataset, self.host, slicing.format_slice(key), prefer_schunk)
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        plan = slicing.plan(key, shape)
        selected = math.prod(plan.result_shape) * dtype.itemsize
        if selected >= STREAM_MIN_BYTES:
            nchunks = b2.chunks_in_region(shape, chunks, plan.region, plan.within)
            if selected * STREAM_COVERAGE >= len(nchunks) * math.prod(chunks) * dtype.itemsize:
                return self._fetch_streamed(key, plan, dtype, nchunks)
        if selected > b2.MAX_BUFFER_BYTES:
            return fetch(self._dataset, self.host, slicing.format_slice(key), prefer_schunk)
        url = _url(self.host, f"api/fetch/{self._dataset}")
        with _data(url, {"slice_": slicing.format_slice(key), "buffer": "true"}) as r:
            self._check_layout(r)
            out = b2.decompress_items(r.read(), dtype, plan.result_shape)
        return out[()] if out.ndim == 0 else out

    def _fetch_streamed(self, key, plan: slicing.Plan, dtype: np.dtype,
                        nchunks: list[int]) -> np.ndarray:
        """Large array selections: get the stored chunks and decompress them here."""
        meta = self.meta
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        url = _url(self.host, f"api/fetch/{self._dataset}")
        with _data(url, {"slice_": slicing.format_slice(key), "chunks": "true"}) as r:
            self._check_layout(r)
            # A stream of known length is all cached at the subscriber and comes as fast as
            # it is read: one decompressing thread keeps up, and leaves the other cores to
            # the sender (cached 128 MB read: 0.128 -> 0.100 s).  Chunks still coming from
            # the publisher arrive in bursts, which all threads clear sooner (a first read
            # took 0.270 s with one thread, 0.236 with all).  Medians, bench/ab.py.
            cached = r.getheader("Content-Length") is not None
            assembler = b2.ChunkAssembler(shape, chunks, tuple(meta["blocks"]), dtype,
                                          plan.region, threads=1 if cached else None)
            for n, chunk in bulk.records(r, assembler.max_chunk_bytes):
                assembler.add(n, chunk)
        assembler.check_complete(nchunks)
        return assembler.out[plan.within]

    def get_download_url(self) -> str:
        """Where the subscriber serves the complete dataset."""
        suffix = "" if self.name.endswith((".b2nd", ".b2frame")) else ".b2"
        return _url(self.host, f"files/{self.path.as_posix()}{suffix}")

    def download(self, directory: str | os.PathLike | None = None) -> pathlib.Path:
        """Save the complete dataset at ``ROOT/PATH`` under ``directory`` (default: the
        current one) and return that path."""
        url = _get(self.host, f"api/download/{self._dataset}")
        return _download_url(url, pathlib.Path(directory or "") / self.path)


class Dataset(File):
    """A ``.b2nd`` (NDArray) or ``.b2frame`` (SChunk) dataset."""

    @property
    def shape(self) -> tuple[int, ...] | None:
        shape = self.meta.get("shape")
        return tuple(shape) if shape is not None else None

    @property
    def dtype(self) -> str | None:
        return self.meta.get("dtype")
