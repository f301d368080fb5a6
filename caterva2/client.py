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
"""
from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import math
import os
import pathlib
import threading
import urllib.parse
import uuid
from collections.abc import Iterator
from typing import Any

import blosc2
import httpx
import numpy as np

from caterva2 import config, http_data, paths, slicing, wire
from caterva2.assembly import ChunkAssembler, IncompleteAnswer
from caterva2.chunks import chunks_in_region

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

_EXPLICIT = "argument"  # the source of an address given by the caller


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


class ConnectionFailed(httpx.ConnectError):
    """The subscriber cannot be reached; the message names the address tried and where
    it came from (an httpx.ConnectError, so code catching that keeps working)."""


class ConnectionTimedOut(ConnectionFailed, httpx.ConnectTimeout):
    """The subscriber did not accept a connection in time (also an httpx.ConnectTimeout)."""


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ServerError(response)
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return _checked(response).json()
    except ValueError:
        raise ValueError(f"{response.request.url.netloc.decode()} answered "
                         f"{response.request.url.path} with something that is not JSON: "
                         "is it a Caterva2 subscriber?") from None


# ---------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------

class Client:
    """A session with one subscriber, owning its connections.

    ``host`` is ``HOST:PORT`` or an ``http(s)://`` URL; None finds it as the module
    docstring says (``CATERVA2_SUBSCRIBER``, then ``conf``, then ``localhost:8002``).
    ``http`` is an ``httpx.Client`` for API calls and ``pool`` a
    :class:`~caterva2.http_data.ConnectionPool` for data answers; the client makes its own
    when they are not given, and :meth:`close` closes only those it made.

    Raises :class:`caterva2.config.ConfigError` for an address that is not ``HOST:PORT``
    or a URL (naming where it came from), or a configuration file that cannot be read.
    """

    host: str
    """The subscriber's address, as given or found."""
    host_source: str
    """Where :attr:`host` came from: ``"argument"``, ``"CATERVA2_SUBSCRIBER"``, the
    configuration file's name, or ``"the default"``."""

    def __init__(self, host: str | None = None, *,
                 conf: str | os.PathLike[str] | None = config.CONF_DEFAULT,
                 http: httpx.Client | None = None,
                 pool: http_data.ConnectionPool | None = None):
        self.host, self.host_source = config.subscriber_address(host, conf)
        self.conf = conf
        try:
            config.check_client_host(self.host)
        except config.ConfigError as e:
            if self.host_source == _EXPLICIT:
                raise
            raise config.ConfigError(f"{e} (from {self.host_source})") from None
        base = self.host if self.host.startswith(("http://", "https://")) \
            else f"http://{self.host}"
        self.base_url = base.rstrip("/")
        self._owns_http, self._owns_pool = http is None, pool is None
        self.http = http if http is not None else httpx.Client(timeout=TIMEOUT)
        self.pool = pool if pool is not None else http_data.ConnectionPool()

    def __repr__(self) -> str:
        return f"<Client: {self.host} (from {self.host_source})>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this client made (not an injected ``http`` or ``pool``)."""
        if self._owns_http:
            self.http.close()
        if self._owns_pool:
            self.pool.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return (self._owns_http and self.http.is_closed) or \
            (self._owns_pool and self.pool.closed)

    # -- the subscriber's API --------------------------------------------------------
    def roots(self) -> dict[str, dict[str, Any]]:
        """Roots known to the subscriber: ``{name: {"name", "http", "subscribed"}}``."""
        return self._get("api/roots")

    def subscribe(self, root: str) -> str:
        """Ask the subscriber to follow ``root``; returns ``"Ok"``."""
        return self._post(f"api/subscribe/{paths.check_root_name(root)}")

    def url(self, name: str) -> list[str]:
        """Where the publisher serves a root (``ROOT``) or a dataset (``ROOT/PATH``)."""
        return self._get(f"api/url/{paths.check_name(name)}")

    def list(self, root: str) -> list[str]:
        """Dataset paths of a subscribed root, relative to the root."""
        return self._get(f"api/list/{paths.check_root_name(root)}")

    def info(self, dataset: str) -> dict[str, Any]:
        """Metadata of ``dataset`` (``ROOT/PATH``), as a dict."""
        paths.split_dataset(dataset)
        return self._get(f"api/info/{dataset}")

    def fetch(self, dataset: str, slice_: Any = None) -> Any:
        """A selection of ``dataset`` (``ROOT/PATH``), cut by the subscriber: a NumPy array
        (or scalar) for ``.b2nd``, else bytes.

        ``slice_`` is text (``"0:10, ::2"``) or a key (``3``, ``slice(0, 10)``, a tuple).
        For large selections, :meth:`get_dataset` gives an object that reads them faster
        (as stored chunks, decompressed here).
        """
        paths.split_dataset(dataset)
        text = slice_ if isinstance(slice_, str) else slicing.format_slice(slice_)
        with self._data(self._url(f"api/fetch/{dataset}"), {"slice_": text}) as r:
            content = r.read()
        return wire.decode_selection(content, paths.dataset_kind(str(dataset)) == "ndarray")

    def download(self, dataset: str,
                 directory: str | os.PathLike[str] | None = None) -> pathlib.Path:
        """Save the complete ``dataset`` at ``ROOT/PATH`` under ``directory`` (default: the
        current one); returns that path.  Ordinary files are decompressed back to their
        original bytes."""
        paths.split_dataset(dataset)
        url = self._get(f"api/download/{dataset}")
        return self._download_url(url, pathlib.Path(directory or "") / dataset)

    def get_root(self, name: str) -> Root:
        """The root ``name``, subscribed to (see :class:`Root`)."""
        return Root(name, client=self)

    def get_dataset(self, dataset: str) -> File:
        """The dataset ``ROOT/PATH`` with its metadata: a :class:`Dataset` for ``.b2nd`` and
        ``.b2frame`` paths, a :class:`File` otherwise.  Its root must be subscribed."""
        root, path = paths.split_dataset(dataset)
        return _node(path, root, self)

    # -- internals (used by File too) --------------------------------------------------
    def _url(self, path: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(path)}"

    def _unreachable(self) -> str:
        if self.host_source == _EXPLICIT:  # (cat2cli --host says exactly this)
            return f"cannot reach the subscriber at {self.host} (is cat2sub running?)"
        if self.host_source == "the default":
            where = (f"the default: neither an argument, {config.SUBSCRIBER_ENV} nor "
                     f"{self.conf or 'a configuration file'} named another")
        else:
            where = f"from {self.host_source}"
        return f"cannot reach the subscriber at {self.host} ({where}; is cat2sub running?)"

    @contextlib.contextmanager
    def _reaching(self) -> Iterator[None]:
        """Connection errors raised as ConnectionFailed, saying where the address came from."""
        try:
            yield
        except ConnectionFailed:
            raise
        except httpx.ConnectTimeout as e:
            raise ConnectionTimedOut(self._unreachable(), request=e.request) from e
        except httpx.ConnectError as e:
            raise ConnectionFailed(self._unreachable(), request=e.request) from e

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        with self._reaching():
            response = self.http.get(self._url(path), params=params)
        return _json(response)

    def _post(self, path: str) -> Any:
        with self._reaching():
            response = self.http.post(self._url(path))
        return _json(response)

    @contextlib.contextmanager
    def _data(self, url: str,
              params: dict[str, str] | None = None) -> Iterator[http.client.HTTPResponse]:
        """A data answer (read fast, see :mod:`caterva2.http_data`); ServerError if refused.

        Only URLs at the subscriber say it cannot be reached: a download link may point
        elsewhere (a subscriber behind a proxy), and its errors name that place.
        """
        reaching = self._reaching() if url.startswith(self.base_url + "/") \
            else contextlib.nullcontext()
        with reaching, self.pool.get(url, params) as r:
            if r.status >= 400:
                raise ServerError(http_data.as_httpx(r, url))
            yield r

    def _download_url(self, url: str, local: pathlib.Path) -> pathlib.Path:
        """Stream ``url`` to ``local`` (atomically); unpack ``.b2`` files to their original
        bytes."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(local.parent / f".{local.name}.{uuid.uuid4().hex[:12]}.part")
        # (not tempfile.mkstemp: its files are private, 0600; a download gets the usual mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f, self._data(url) as r:
                http_data.save(r, f)
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
# Shared clients, for the module functions and objects made without a client
# ---------------------------------------------------------------------------
_default_clients: dict[tuple[str, str], Client] = {}
_default_clients_lock = threading.Lock()


def default_client(host: str | None = None) -> Client:
    """The client shared by everything that names its subscriber ``host`` (None: found as
    the module docstring says), made when first needed."""
    address = config.subscriber_address(host)
    with _default_clients_lock:
        client = _default_clients.get(address)
        if client is None:
            client = Client(host)  # (finds the same address: it is made at once)
            _default_clients[client.host, client.host_source] = client
        return client


def close_default_clients() -> None:
    """Close the shared clients (also done at exit); later calls make new ones."""
    with _default_clients_lock:
        clients = list(_default_clients.values())
        _default_clients.clear()
    for client in clients:
        client.close()


atexit.register(close_default_clients)


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------

def get_roots(host: str | None = None) -> dict[str, dict[str, Any]]:
    """Roots known to the subscriber: ``{name: {"name", "http", "subscribed"}}``."""
    return default_client(host).roots()


def subscribe(root: str, host: str | None = None) -> str:
    """Ask the subscriber to follow ``root``; returns ``"Ok"``."""
    return default_client(host).subscribe(root)


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


def _node(path: str, root: str, client: Client) -> File:
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
        return _node(node, self.name, self.client)


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
        self.meta: dict[str, Any] = self.client.info(self._dataset)

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
                                     "buffer": "true"}) as r:
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
                                     "chunks": "true"}) as r:
            self._check_layout(r)
            # A stream of known length is all cached at the subscriber and comes as fast as
            # it is read: one decompressing thread keeps up, and leaves the other cores to
            # the sender (cached 128 MB read: 0.128 -> 0.100 s).  Chunks still coming from
            # the publisher arrive in bursts, which all threads clear sooner (a first read
            # took 0.270 s with one thread, 0.236 with all).  Medians, bench/ab.py.
            cached = r.getheader("Content-Length") is not None
            assembler = ChunkAssembler(shape, chunks, tuple(meta["blocks"]), dtype,
                                       plan.region, threads=1 if cached else None)
            for n, chunk in http_data.records(r, assembler.max_chunk_bytes):
                assembler.add(n, chunk)
        assembler.check_complete(nchunks)
        return assembler.out[plan.within]

    def get_download_url(self) -> str:
        """Where the subscriber serves the complete dataset."""
        suffix = ".b2" if paths.dataset_kind(self.name) == "file" else ""
        return self.client._url(f"files/{self.path.as_posix()}{suffix}")

    def download(self, directory: str | os.PathLike[str] | None = None) -> pathlib.Path:
        """Save the complete dataset at ``ROOT/PATH`` under ``directory`` (default: the
        current one) and return that path."""
        return self.client.download(self._dataset, directory)


class Dataset(File):
    """A ``.b2nd`` (NDArray) or ``.b2frame`` (SChunk) dataset."""

    @property
    def shape(self) -> tuple[int, ...] | None:
        shape = self.meta.get("shape")
        return tuple(shape) if shape is not None else None

    @property
    def dtype(self) -> str | None:
        return self.meta.get("dtype")
