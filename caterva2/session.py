"""A session with a subscriber: :class:`Client`, which owns its connections.

**Which subscriber.**  Wherever a ``host`` may be given, leaving it out (or None) means:
the environment variable ``CATERVA2_SUBSCRIBER`` if set, else ``[subscriber] url`` or
``http`` of ``caterva2.toml`` in the current directory, else ``localhost:8002``
(:func:`caterva2.config.subscriber_address` decides, for ``cat2cli`` too).  When the
subscriber cannot be reached, :class:`ConnectionFailed` says which address was tried and
where it came from.

A :class:`Client` holds an ``httpx.Client`` for API calls, and a
:class:`caterva2.http_data.ConnectionPool` of kept-alive connections for data.  Close it
when done, or use it as a context manager.  The module functions of
:mod:`caterva2.client` and ``Root``/``File``/``Dataset`` made without ``client=`` use a
client shared per subscriber address (:func:`default_client`), made when first needed and
closed at exit (or by :func:`close_default_clients`).  A client may be used from several
threads at once.

**Logins.**  A subscriber started with ``--require-login`` answers only its users: a
client sends its ``api_key`` (given, or the environment variable ``CATERVA2_API_KEY``) as
``Authorization: Bearer KEY`` with every request; without a valid one, every call raises
a :class:`ServerError` with status 401 that says what to do.

**Answers that may be out of date.**  A subscriber that can reach neither its broker nor a
dataset's publisher still serves what it has cached, and says so in the answer; the client
then warns with an :class:`UnverifiedWarning` (once per place in your code, as Python does
by default), and returns the data as usual.
"""
from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import pathlib
import sys
import threading
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import blosc2
import httpx

from caterva2 import config, http_data, paths, slicing, tls, wire
from caterva2.progress import Progress

if TYPE_CHECKING:
    from caterva2.client import File, Root

T = TypeVar("T")
TIMEOUT = httpx.Timeout(300, connect=5)
_EXPLICIT = "argument"  # the source of an address given by the caller


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


class UnverifiedWarning(UserWarning):
    """Data or metadata served by the subscriber from its cache without being checked with
    its source, because neither the broker nor the dataset's publisher could be reached: it
    may be out of date.  The message names the dataset and the subscriber's reason.

    ``warnings.simplefilter("error", caterva2.UnverifiedWarning)`` makes such an answer an
    error; ``"ignore"`` silences it.
    """


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_TESTS_DIR = os.path.join(_PACKAGE_DIR, "tests") + os.sep
_CONTEXTLIB = contextlib.__file__


def _warn_unverified(reason: str | None, dataset: str) -> None:
    """Warn (UnverifiedWarning) if an answer about ``dataset`` carried the subscriber's
    ``reason`` why it could not be checked with its source; the warning names the first
    caller outside this package."""
    if reason is None:
        return
    level, frame = 1, sys._getframe(0)
    while frame.f_back is not None and (
            frame.f_code.co_filename == _CONTEXTLIB or
            (frame.f_code.co_filename.startswith(_PACKAGE_DIR)
             and not frame.f_code.co_filename.startswith(_TESTS_DIR))):
        frame, level = frame.f_back, level + 1
    warnings.warn(UnverifiedWarning(f"{dataset}: {reason}"), stacklevel=level)


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
    docstring says (``CATERVA2_SUBSCRIBER``, then ``conf``, then ``localhost:8002``);
    ``conf`` None is ``./caterva2.toml`` if there is one, a named file must exist.
    ``http`` is an ``httpx.Client`` for API calls and ``pool`` a
    :class:`~caterva2.http_data.ConnectionPool` for data answers; the client makes its own
    when they are not given, and :meth:`close` closes only those it made.

    ``api_key`` is a user's key for a subscriber that requires a login (None: the
    environment variable ``CATERVA2_API_KEY``, if set).  ``ca_bundle`` names the CAs to
    check an ``https://`` subscriber's certificate with (None: ``CATERVA2_CA_BUNDLE``, else
    the system's; see :mod:`caterva2.tls`).

    Raises :class:`caterva2.config.ConfigError` for an address that is not ``HOST:PORT``
    or a URL (naming where it came from), or a configuration file that cannot be read
    (or was named and does not exist).
    """

    host: str
    """The subscriber's address, as given or found."""
    host_source: str
    """Where :attr:`host` came from: ``"argument"``, ``"CATERVA2_SUBSCRIBER"``, the
    configuration file's name, or ``"the default"``."""

    def __init__(self, host: str | None = None, *,
                 conf: str | os.PathLike[str] | None = None,
                 http: httpx.Client | None = None,
                 pool: http_data.ConnectionPool | None = None,
                 api_key: str | None = None, ca_bundle: str | None = None):
        if conf is not None:
            config.load(conf)  # (a file named must exist, even if an argument comes first)
        self.host, self.host_source = config.subscriber_address(host, conf)
        api_key = api_key or os.environ.get(config.API_KEY_ENV) or None
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
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
        context = tls.client_context(ca_bundle)
        self.http = http if http is not None else httpx.Client(timeout=TIMEOUT, verify=context)
        self.pool = pool if pool is not None else http_data.ConnectionPool(ssl_context=context)

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
        """Roots known to the subscriber: ``{name: {"name", "http", "subscribed",
        "reachable"}}`` (``reachable`` false: its publisher has not answered lately)."""
        return self._get("api/roots")

    def subscribe(self, root: str) -> str:
        """Ask the subscriber to follow ``root``; returns ``"Ok"``."""
        return self._post(f"api/subscribe/{paths.check_root_name(root)}")

    def unsubscribe(self, root: str) -> str:
        """Ask the subscriber to stop following ``root`` and drop what it cached of it;
        returns ``"Ok"``.  Reading it afterwards is refused (not subscribed)."""
        return self._post(f"api/unsubscribe/{paths.check_root_name(root)}")

    def url(self, name: str) -> list[str]:
        """Where the publisher serves a root (``ROOT``) or a dataset (``ROOT/PATH``)."""
        return self._get(f"api/url/{paths.check_name(name)}")

    def source(self, root: str) -> dict[str, Any]:
        """Where ``root`` comes from: ``{"root", "publisher", "publisher_id", "hops"}``.
        ``hops`` lists, nearest first, the sites a re-published root passes through to its
        origin (each ``{"root", "subscriber", "publisher", "publisher_id"}``: root
        ``root`` of the subscriber at ``subscriber``, which gets it from ``publisher``);
        it is empty for a root served by its origin, and null if the publisher could not
        be asked."""
        return self._get(f"api/source/{paths.check_root_name(root)}")

    def list(self, root: str) -> list[str]:
        """Dataset paths of a subscribed root, relative to the root."""
        return self._get(f"api/list/{paths.check_root_name(root)}")

    def info(self, dataset: str) -> dict[str, Any]:
        """Metadata of ``dataset`` (``ROOT/PATH``), as a dict.

        Here and in :meth:`fetch`, :meth:`download` and :meth:`get_dataset`, a dataset of
        an HDF5 root may be named as in its file, without the ``.b2nd`` its listing shows
        (``h5/images/frames`` for ``h5/images/frames.b2nd``)."""
        paths.split_dataset(dataset)
        return self._or_b2nd(dataset, self._info)

    def fetch(self, dataset: str, slice_: Any = None) -> Any:
        """A selection of ``dataset`` (``ROOT/PATH``), cut by the subscriber: a NumPy array
        (or scalar) for ``.b2nd``, else bytes.

        ``slice_`` is text (``"0:10, ::2"``) or a key (``3``, ``slice(0, 10)``, a tuple).
        For large selections, :meth:`get_dataset` gives an object that reads them faster
        (as stored chunks, decompressed here).
        """
        paths.split_dataset(dataset)
        text = slice_ if isinstance(slice_, str) else slicing.format_slice(slice_)

        def fetch(name: str) -> Any:
            is_array = paths.dataset_kind(name) == "ndarray"
            # (bytes as one compressed buffer: cheaper to make and read than a frame)
            params = {"slice_": text} if is_array else {"slice_": text, "buffer": "true"}
            with self._data(self._url(f"api/fetch/{name}"), params, dataset=name) as r:
                content = r.read()
            return wire.decode_selection(content, is_array)

        return self._or_b2nd(str(dataset), fetch)

    def download(self, dataset: str, directory: str | os.PathLike[str] | None = None, *,
                 progress: Progress | None = None) -> pathlib.Path:
        """Save the complete ``dataset`` at ``ROOT/PATH`` under ``directory`` (default: the
        current one); returns that path.  Ordinary files are decompressed back to their
        original bytes.

        ``progress(done, total)`` is told the bytes received as they come (``total``:
        the size of what is sent, a Blosc2 file); see :mod:`caterva2.progress`.
        """
        paths.split_dataset(dataset)
        dataset, url = self._or_b2nd(dataset, lambda name: (
            name, self._get(f"api/download/{name}", warn=False)))  # (the file's answer warns)
        return self._download_url(url, pathlib.Path(directory or "") / dataset, dataset,
                                  progress)

    def cache(self) -> dict[str, Any]:
        """The subscriber's cache figures since it started: ``usage`` and ``limit`` in
        bytes (``limit`` None: unlimited), chunk ``hits`` and ``misses``, ``evictions``
        (``evicted_bytes``), ``digest_mismatches``, ``bytes_in`` from publishers,
        ``bytes_out`` to clients, and the same per root in ``roots``."""
        return self._get("api/cache")

    def get_root(self, name: str) -> Root:
        """The root ``name``, subscribed to (see :class:`caterva2.Root`)."""
        from caterva2.client import Root  # (those objects are made of sessions)

        return Root(name, client=self)

    def get_dataset(self, dataset: str) -> File:
        """The dataset ``ROOT/PATH`` with its metadata: a :class:`Dataset` for ``.b2nd`` and
        ``.b2frame`` paths, a :class:`File` otherwise.  Its root must be subscribed."""
        from caterva2.client import dataset_object

        root, _ = paths.split_dataset(dataset)
        return self._or_b2nd(dataset, lambda name: dataset_object(name[len(root) + 1:],
                                                                  root, self))

    # -- internals (used by File too) --------------------------------------------------
    def _info(self, dataset: str) -> dict[str, Any]:
        """The metadata of ``dataset`` named exactly so (see :meth:`info`)."""
        return self._get(f"api/info/{dataset}", dataset=dataset)

    def _or_b2nd(self, dataset: str, call: Callable[[str], T]) -> T:
        """``call(dataset)``, or, if the subscriber has no such dataset and its name has no
        Blosc2 suffix, ``call(dataset + ".b2nd")``: datasets of HDF5 roots are listed as
        ``GROUP/NAME.b2nd`` and may be named as in the file, ``GROUP/NAME``.  A name that
        exists as given always wins; if neither does, the error is the one for the name
        as given."""
        try:
            return call(dataset)
        except ServerError as e:
            if e.status_code != 404 or paths.dataset_kind(dataset) != "file":
                raise
            try:
                return call(dataset + ".b2nd")
            except ServerError:
                raise e from None

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{urllib.parse.quote(path)}"

    def _unreachable(self) -> str:
        if self.host_source == _EXPLICIT:  # (cat2cli --host says exactly this)
            return f"cannot reach the subscriber at {self.host} (is cat2sub running?)"
        if self.host_source == "the default":
            where = (f"the default: neither an argument, {config.SUBSCRIBER_ENV} nor "
                     f"{config.conf_name(self.conf)} named another")
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
            if "CERTIFICATE_VERIFY_FAILED" in str(e):
                raise ConnectionFailed(
                    f"the certificate of the subscriber at {self.host} cannot be trusted "
                    f"({tls.verify_failure(e)}); if it comes from a private CA, name its "
                    f"bundle in {tls.CA_BUNDLE_ENV}", request=e.request) from e
            raise ConnectionFailed(self._unreachable(), request=e.request) from e

    def _get(self, path: str, params: dict[str, str] | None = None, *,
             dataset: str | None = None, warn: bool = True) -> Any:
        """The JSON answer to ``GET path``; an UnverifiedWarning (about ``dataset``) if the
        subscriber could not check it with the source, unless not ``warn``."""
        with self._reaching():
            response = self.http.get(self._url(path), params=params, headers=self._headers)
        result = _json(response)
        if warn:
            _warn_unverified(response.headers.get(wire.UNVERIFIED_HEADER), dataset or path)
        return result

    def _post(self, path: str) -> Any:
        with self._reaching():
            response = self.http.post(self._url(path), headers=self._headers)
        return _json(response)

    @contextlib.contextmanager
    def _data(self, url: str, params: dict[str, str] | None = None, *,
              dataset: str | None = None) -> Iterator[http.client.HTTPResponse]:
        """A data answer (read fast, see :mod:`caterva2.http_data`); ServerError if refused,
        an UnverifiedWarning (about ``dataset``) if not checked with the source.

        Only URLs at the subscriber say it cannot be reached: a download link may point
        elsewhere (a subscriber behind a proxy), and its errors name that place.
        """
        reaching = self._reaching() if url.startswith(self.base_url + "/") \
            else contextlib.nullcontext()
        with reaching, self.pool.get(url, params, headers=self._headers) as r:
            if r.status >= 400:
                raise ServerError(http_data.as_httpx(r, url))
            _warn_unverified(r.getheader(wire.UNVERIFIED_HEADER),
                             dataset or urllib.parse.urlsplit(url).path)
            yield r

    def _download_url(self, url: str, local: pathlib.Path, dataset: str | None = None,
                      progress: Progress | None = None) -> pathlib.Path:
        """Stream ``url`` (of ``dataset``) to ``local`` (atomically); unpack ``.b2`` files to
        their original bytes."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = str(local.parent / f".{local.name}.{uuid.uuid4().hex[:12]}.part")
        # (not tempfile.mkstemp: its files are private, 0600; a download gets the usual mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f, self._data(url, dataset=dataset) as r:
                http_data.save(r, f, progress)
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
