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

**Which subscriber.**  Wherever a ``host`` may be given, leaving it out (or None) means:
the environment variable ``CATERVA2_SUBSCRIBER`` if set, else ``[subscriber] url`` or
``http`` of ``caterva2.toml`` in the current directory, else ``localhost:8002``
(:func:`caterva2.config.subscriber_address` decides, for ``cat2cli`` too).  When the
subscriber cannot be reached, :class:`ConnectionFailed` says which address was tried and
where it came from.

**Sessions.**  A :class:`Client` holds the connections to one subscriber: an
``httpx.Client`` for API calls, and a :class:`caterva2.http_data.ConnectionPool` of
kept-alive connections for data.  Close it when done, or use it as a context manager::

    >>> with cat2.Client("localhost:8002") as client:
    ...     client.roots()["foo"]["subscribed"]
    ...     client.get_root("foo")["ds-1d.b2nd"][:3]
    True
    array([0, 1, 2])

The module functions (:func:`get_roots`, :func:`fetch`...) and ``Root``/``File``/
``Dataset`` made without ``client=`` use a client shared per subscriber address, made when
first needed and closed at exit (or by :func:`close_default_clients`).  A client may be
used from several threads at once.

**Answers that may be out of date.**  A subscriber that can reach neither its broker nor a
dataset's publisher serves what it has cached and says so: the data is returned as usual,
with an :class:`UnverifiedWarning`.
"""
from __future__ import annotations

import functools
import http.client
import math
import os
import pathlib
from typing import Any

import httpx
import numpy as np

from caterva2 import http_data, paths, slicing, wire
from caterva2.assembly import ChunkAssembler, IncompleteAnswer
from caterva2.chunks import chunks_in_region
from caterva2.progress import Progress
from caterva2.session import (
    Client,
    ConnectionFailed,
    ConnectionTimedOut,
    ServerError,
    UnverifiedWarning,
    close_default_clients,
    default_client,
)

__all__ = ["Client", "ConnectionFailed", "ConnectionTimedOut", "Dataset", "File", "Root",
           "ServerError", "UnverifiedWarning", "bro_host_default", "close_default_clients",
           "default_client", "download", "fetch", "get_info", "get_list", "get_roots",
           "pub_host_default", "sub_host_default", "subscribe"]

bro_host_default = "localhost:8000"
"""The default HTTP endpoint of the broker (host:port)."""
pub_host_default = "localhost:8001"
"""The default HTTP endpoint of a publisher (host:port)."""
sub_host_default = "localhost:8002"
"""The default HTTP endpoint of the subscriber (host:port)."""

# Selections at least this large, and covering at least 1/STREAM_COVERAGE of the chunks
# they touch, travel as stored chunks and are decompressed here, not on the subscriber.
STREAM_MIN_BYTES = 256 * 1024
STREAM_COVERAGE = 4


class _LayoutChanged(Exception):
    """An answer laid out differently from this client's metadata: the dataset changed."""


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

def get_roots(host: str | None = None) -> dict[str, dict[str, Any]]:
    """Roots known to the subscriber: ``{name: {"name", "http", "subscribed",
    "reachable"}}`` (``reachable`` false: its publisher has not answered lately)."""
    return default_client(host).roots()


def subscribe(root: str, host: str | None = None) -> str:
    """Ask the subscriber to follow ``root``; returns ``"Ok"``."""
    return default_client(host).subscribe(root)


def unsubscribe(root: str, host: str | None = None) -> str:
    """Ask the subscriber to stop following ``root`` and drop what it cached of it;
    returns ``"Ok"``.  :class:`ServerError` (404) if it does not follow ``root``."""
    return default_client(host).unsubscribe(root)


def get_list(root: str, host: str | None = None) -> list[str]:
    """Dataset paths of a subscribed root, relative to the root."""
    return default_client(host).list(root)


def get_info(dataset: str, host: str | None = None) -> dict[str, Any]:
    """Metadata of ``dataset`` (``ROOT/PATH``), as a dict."""
    return default_client(host).info(dataset)


def fetch(dataset: str, host: str | None = None, slice_: Any = None,
          prefer_schunk: bool = True) -> Any:
    """A selection of ``dataset``: a NumPy array (or scalar) for ``.b2nd``, else bytes.

    ``slice_`` is text (``"0:10, ::2"``) or a key (``3``, ``slice(0, 10)``, a tuple).
    ``prefer_schunk`` is accepted for compatibility; data always travels as Blosc2.
    """
    return default_client(host).fetch(dataset, slice_)


def download(dataset: str, host: str | None = None) -> pathlib.Path:
    """Save the complete ``dataset`` at ``./ROOT/PATH``; returns that path.

    Ordinary files are decompressed back to their original bytes.
    """
    return default_client(host).download(dataset)


# ---------------------------------------------------------------------------
# Objects
# ---------------------------------------------------------------------------

def _session(host: str | None, client: Client | None) -> Client:
    if client is None:
        return default_client(host)
    if host is not None and host != client.host:
        raise ValueError(f"host {host!r} differs from the client's {client.host!r}: "
                         "give one or the other")
    return client


def dataset_object(path: str, root: str, client: Client) -> File:
    """A :class:`Dataset` for Blosc2 datasets, a :class:`File` for ordinary files."""
    cls = File if paths.dataset_kind(path) == "file" else Dataset
    return cls(path, root=root, client=client)


class Root:
    """A root followed through a subscriber; creating it subscribes.

    ``root[path]`` gives a :class:`Dataset` for ``.b2nd``/``.b2frame`` paths and a
    :class:`File` for anything else.  ``host`` names the subscriber (None: found as the
    module docstring says); ``client`` is a :class:`Client` to use instead.
    """

    def __init__(self, name: str, host: str | None = None, *, client: Client | None = None):
        self.client = _session(host, client)
        self.name, self.host = name, self.client.host
        if self.client.subscribe(name) != "Ok":
            raise ValueError(f"could not subscribe to root {name!r}")
        self.node_list: list[str] = self.client.list(name)

    def __repr__(self) -> str:
        return f"<Root: {self.name}>"

    def __getitem__(self, node: str) -> File:
        return self.client.get_dataset(f"{self.name}/{node}")


class File:
    """A dataset of a root, with its metadata; index it (``file[0:10]``) to get data.

    Ordinary files and ``.b2frame`` datasets give ``bytes``; ``.b2nd`` datasets give
    NumPy arrays.  ``host`` and ``client`` are as for :class:`Root`.
    """

    def __init__(self, name: str, root: str, host: str | None = None, *,
                 client: Client | None = None):
        self.client = _session(host, client)
        self.name, self.root, self.host = name, root, self.client.host
        self.path = pathlib.Path(f"{root}/{name}")
        paths.split_dataset(f"{root}/{name}")  # ValueError for unsafe names
        self.meta: dict[str, Any] = self.client._info(self._dataset)  # (as named: its kind)

    @property
    def _dataset(self) -> str:
        return f"{self.root}/{self.name}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.path}>"

    @functools.cached_property
    def vlmeta(self) -> dict[str, Any]:
        """User attributes of the dataset."""
        return self.meta.get("schunk", self.meta).get("vlmeta", {})

    def __getitem__(self, key: Any) -> Any:
        if key is None:  # (fetch(None) is everything; NumPy's a[None] adds an axis)
            key = (None,)  # refused as such
        return self.fetch(key)

    def fetch(self, slice_: Any = None, prefer_schunk: bool = True) -> Any:
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
                return self._fetch(key)
            except IncompleteAnswer:
                if attempt == 2:
                    raise
                continue
            except ServerError as e:
                if e.response.status_code != 409:  # 409: the layout changed while being read
                    raise
            except _LayoutChanged:
                pass
            self.meta = self.client.info(self._dataset)
            self.__dict__.pop("vlmeta", None)
        raise ValueError(f"{self._dataset} keeps changing while being read; read it again")

    def _check_layout(self, response: http.client.HTTPResponse) -> None:
        sent = response.getheader(wire.LAYOUT_HEADER)
        meta = self.meta
        if sent is not None and sent != wire.layout(meta["shape"], meta["dtype"],
                                                    meta["chunks"], meta["blocks"]):
            raise _LayoutChanged

    def _fetch(self, key: Any) -> Any:
        meta = self.meta
        try:
            dtype = np.dtype(meta["dtype"]) if meta.get("shape") is not None else None
        except TypeError:
            dtype = None  # a structured dtype: the subscriber builds the array (a cframe)
        if dtype is None:
            return self.client.fetch(self._dataset, slicing.format_slice(key))
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        plan = slicing.plan(key, shape)
        selected = math.prod(plan.result_shape) * dtype.itemsize
        if selected >= STREAM_MIN_BYTES:
            nchunks = chunks_in_region(shape, chunks, plan.region, plan.within)
            if selected * STREAM_COVERAGE >= len(nchunks) * math.prod(chunks) * dtype.itemsize:
                return self._fetch_streamed(key, plan, dtype, nchunks)
        if selected > wire.MAX_BUFFER_BYTES:
            return self.client.fetch(self._dataset, slicing.format_slice(key))
        url = self.client._url(f"api/fetch/{self._dataset}")
        with self.client._data(url, {"slice_": slicing.format_slice(key),
                                     "buffer": "true"}, dataset=self._dataset) as r:
            self._check_layout(r)
            out = wire.decompress_items(r.read(), dtype, plan.result_shape)
        return out[()] if out.ndim == 0 else out

    def _fetch_streamed(self, key: Any, plan: slicing.Plan, dtype: np.dtype,
                        nchunks: list[int]) -> np.ndarray:
        """Large array selections: get the stored chunks and decompress them here."""
        meta = self.meta
        shape, chunks = tuple(meta["shape"]), tuple(meta["chunks"])
        url = self.client._url(f"api/fetch/{self._dataset}")
        with self.client._data(url, {"slice_": slicing.format_slice(key),
                                     "chunks": "true"}, dataset=self._dataset) as r:
            self._check_layout(r)
            # A stream of known length is all cached at the subscriber and comes as fast as
            # it is read: one decompressing thread keeps up, and leaves the other cores to
            # the sender (cached 128 MB read: 0.128 -> 0.100 s).  Chunks still coming from
            # the publisher arrive in bursts, which all threads clear sooner (a first read
            # took 0.270 s with one thread, 0.236 with all).  Medians, bench/ab.py.
            cached = r.getheader("Content-Length") is not None
            assembler = ChunkAssembler(shape, chunks, tuple(meta["blocks"]), dtype,
                                       plan.region, threads=1 if cached else None)
            try:
                for n, chunk in http_data.records(r, assembler.max_chunk_bytes):
                    assembler.add(n, chunk)
            except httpx.RemoteProtocolError as e:  # (cut short, or a chunk damaged on the way)
                raise IncompleteAnswer(f"the answer was cut short ({e}); read again") from None
        assembler.check_complete(nchunks)
        return assembler.out[plan.within]

    def get_download_url(self) -> str:
        """Where the subscriber serves the complete dataset."""
        suffix = ".b2" if paths.dataset_kind(self.name) == "file" else ""
        return self.client._url(f"files/{self.path.as_posix()}{suffix}")

    def download(self, directory: str | os.PathLike[str] | None = None, *,
                 progress: Progress | None = None) -> pathlib.Path:
        """Save the complete dataset at ``ROOT/PATH`` under ``directory`` (default: the
        current one) and return that path; ``progress(done, total)`` is told the bytes
        received as they come (see :mod:`caterva2.progress`)."""
        return self.client.download(self._dataset, directory, progress=progress)


class Dataset(File):
    """A ``.b2nd`` (NDArray) or ``.b2frame`` (SChunk) dataset."""

    @property
    def shape(self) -> tuple[int, ...] | None:
        shape = self.meta.get("shape")
        return tuple(shape) if shape is not None else None

    @property
    def dtype(self) -> str | None:
        return self.meta.get("dtype")
