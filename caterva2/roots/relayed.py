"""A root re-published from a subscriber of another site: ``cat2pub NAME http://HOST:PORT/ROOT``.

The publisher serves root ROOT as the subscriber at HOST:PORT sees it, through that
subscriber's relay endpoints (:mod:`caterva2.services.subscriber.relay_api`):

- at start it subscribes there to ROOT (if it has not), learns where ROOT comes from and
  refuses a loop (:mod:`caterva2.provenance`), and fetches ROOT's index;
- :meth:`RelayedRoot.changes` waits on that index (a held request, answered as soon as it
  changes) and yields on every change, which the publisher announces to its own broker;
- chunks are asked of the subscriber, which serves them from its cache or fetches them
  from its source once; they pass on as stored, each checked against its digest here.

Versions are the origin's version tags, unchanged, so no site ever mixes versions.  The
last index is kept in ``STATEDIR/relay-index.json`` (and the hops to the origin in
``relay-hops.json``): a relay restarted while the subscriber is out of reach serves (and
announces) what it knew.  It presents its own key
upstream (``CATERVA2_API_KEY``, or ``api_key`` in ``[publisher]``) as
``Authorization: Bearer KEY``, and checks certificates with ``CATERVA2_CA_BUNDLE`` (or
``ca_bundle``).
"""
from __future__ import annotations

import asyncio
import logging
import pathlib
import urllib.parse
from collections.abc import AsyncIterator
from typing import cast

import blosc2
import httpx
from pydantic import TypeAdapter, ValidationError

from caterva2 import http_data, paths, provenance, tls, wire
from caterva2.models import DatasetEntry, RootIndex
from caterva2.statefiles import atomic_write

from .base import (
    BlockPieces,
    DatasetNotFound,
    DatasetUnavailable,
    PublishedRoot,
    SourceUnreachable,
    VersionMismatch,
)

log = logging.getLogger("caterva2.publisher")
INDEX_FILE = "relay-index.json"
HOPS_FILE = "relay-hops.json"  # the hops to the origin, as learnt at the last start
WAIT_S = 30  # how long each index request may be held upstream (the subscriber may cut)
CHUNK_TIMEOUT = (3.0, 60.0)  # seconds to connect upstream, and to wait for each piece
API_TIMEOUT = httpx.Timeout(10, connect=3)
# How often the chain to the origin is asked again: it may change upstream after the start
# (a root re-published elsewhere, an origin replaced), even into a loop.
CHAIN_CHECK_S = 5.0
_HOPS = TypeAdapter(list[provenance.Hop])


def split_url(url: str) -> tuple[str, str]:
    """``(subscriber base URL, root)`` of ``http(s)://HOST:PORT[/PREFIX]/ROOT``;
    ValueError for anything else."""
    parts = urllib.parse.urlsplit(url)
    prefix, _, root = parts.path.rstrip("/").rpartition("/")
    if parts.scheme not in ("http", "https") or not parts.netloc or not root \
            or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not a root at a subscriber: give "
                         "http://HOST:PORT/ROOT (or https://)")
    paths.check_root_name(urllib.parse.unquote(root))
    return f"{parts.scheme}://{parts.netloc}{prefix}", urllib.parse.unquote(root)


def _every(nchunk: int) -> bool:
    return True


class RelayedRoot(PublishedRoot):
    """Root ``url`` (``http://HOST:PORT/ROOT``) of another site's subscriber, re-published
    as ``name`` by the publisher whose id is ``own_id``
    (:func:`caterva2.provenance.publisher_id`)."""

    def __init__(self, url: str, name: str, statedir: str | pathlib.Path, own_id: str,
                 api_key: str | None = None):
        self.subscriber, self.upstream_root = split_url(url)
        self.url = f"{self.subscriber}/{urllib.parse.quote(self.upstream_root)}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.upstream_headers = self.headers
        self.state_file = pathlib.Path(statedir) / INDEX_FILE
        self.hops_file = pathlib.Path(statedir) / HOPS_FILE
        self.pool = http_data.ConnectionPool(timeout=CHUNK_TIMEOUT,
                                             ssl_context=tls.client_context())
        self._relay = f"{self.subscriber}/api/relay/{urllib.parse.quote(self.upstream_root)}"
        self._index: dict[str, DatasetEntry] = {}
        self._etag: str | None = None
        self._hops: list[provenance.Hop] = []
        self.name, self.own_id = name, own_id
        self._loop: str | None = None  # why none of the root is served (a loop upstream)
        self._start(name, own_id)

    # -- start ------------------------------------------------------------------------
    def _start(self, name: str, own_id: str) -> None:
        """Subscribe upstream, check the chain for loops, fetch the index; with the
        subscriber out of reach, the index kept from the last run (ValueError if none)."""
        try:
            with httpx.Client(timeout=API_TIMEOUT, verify=tls.client_context(),
                              headers=self.headers) as client:
                self._subscribe(client)
                self._hops = self._chain(client)
                provenance.check_chain(own_id, name, self._hops)
                atomic_write(self.hops_file, _HOPS.dump_json(self._hops))
                r = client.get(f"{self._relay}/index")
                self._refused(r, "read its index")
                self._set_index(r.content, r.headers.get("etag"))
        except httpx.HTTPError as e:
            if "CERTIFICATE_VERIFY_FAILED" in str(e):  # (no use waiting: say why now)
                raise ValueError(f"the certificate of the subscriber at {self.subscriber} "
                                 f"cannot be trusted ({tls.verify_failure(e)}); give its CA "
                                 "in CATERVA2_CA_BUNDLE, or ca_bundle in [publisher]") from None
            if not self._load_kept():
                raise ValueError(f"cannot reach the subscriber at {self.subscriber} to "
                                 f"re-publish its root {self.upstream_root!r}: {e}") from None
            log.warning("the subscriber at %s is unreachable (%s); serving the index of "
                        "%s kept from the last run", self.subscriber, e, self.upstream_root)

    def _subscribe(self, client: httpx.Client) -> None:
        r = client.post(f"{self.subscriber}/api/subscribe/"
                        f"{urllib.parse.quote(self.upstream_root)}")
        self._refused(r, "subscribe to it")

    def _refused(self, r: httpx.Response, doing: str) -> None:
        """ValueError (a clear error at start) for an answer that is not a 200."""
        if r.status_code == 200:
            return
        if r.status_code >= 500:
            r.raise_for_status()  # (httpx.HTTPError: out of reach for now)
        try:
            detail = r.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = r.text[:200]
        hint = ""
        if r.status_code in (401, 403):
            hint = (" [this publisher presents the key in CATERVA2_API_KEY, or api_key in "
                    "[publisher]: " + ("given" if self.headers else "none given") + "]")
        raise ValueError(f"the subscriber at {self.subscriber} refused to let this "
                         f"publisher {doing} (root {self.upstream_root!r}, "
                         f"{r.status_code}): {detail}{hint}")

    def _chain(self, client: httpx.Client) -> list[provenance.Hop]:
        r = client.get(f"{self.subscriber}/api/source/"
                       f"{urllib.parse.quote(self.upstream_root)}")
        self._refused(r, "ask where it comes from")
        try:
            source = provenance.Source.model_validate_json(r.content)
        except ValidationError as e:
            raise ValueError(f"the subscriber at {self.subscriber} said something "
                             f"unexpected of its root {self.upstream_root!r}: {e}") from None
        if source.hops is None:
            log.warning("the publisher of %s at %s could not be asked where it comes from",
                        self.upstream_root, self.subscriber)
        return provenance.chain_through(self.subscriber, source)

    def _load_kept(self) -> bool:
        try:
            self._set_index(self.state_file.read_bytes(), None, keep=False)
            self._hops = _HOPS.validate_json(self.hops_file.read_bytes())
        except (OSError, ValueError):
            return False
        return True

    # -- the index --------------------------------------------------------------------
    def _set_index(self, body: bytes, etag: str | None, keep: bool = True) -> None:
        """Take ``body`` (a RootIndex) as the current index (ValueError if malformed)."""
        index = RootIndex.model_validate_json(body)
        self._index, self._etag = dict(index.datasets), etag
        if keep:
            atomic_write(self.state_file, body)

    def hops(self) -> list[provenance.Hop]:
        return list(self._hops)

    def versions(self) -> dict[str, str]:
        return {path: entry.version for path, entry in self._index.items()}

    def entry(self, path: str) -> DatasetEntry:
        entry = self._index.get(path)
        if entry is None:
            raise DatasetNotFound(path)
        if self._loop is not None:
            raise DatasetUnavailable(self._loop, entry.version)
        if entry.meta is None:
            raise DatasetUnavailable(entry.error or "not readable at its source", entry.version)
        return entry

    async def changes(self) -> AsyncIterator[None]:
        """Yield on every change of the upstream index (asked again at once, or after a
        growing pause while the subscriber is out of reach); every CHAIN_CHECK_S, ask
        again where the root comes from."""
        delay = 0.2
        loop = asyncio.get_running_loop()
        chain_checked = loop.time()
        async with httpx.AsyncClient(timeout=httpx.Timeout(WAIT_S + 10, connect=3),
                                     verify=tls.client_context(),
                                     headers=self.headers) as client:
            while True:
                try:
                    if loop.time() - chain_checked >= CHAIN_CHECK_S:
                        chain_checked = loop.time()
                        await self._check_chain_again(client)
                    changed = await self._next_index(client)
                    delay = 0.2
                except (httpx.HTTPError, ValueError) as e:
                    log.warning("index of %s at %s: %s; asking again in %.1f s",
                                self.upstream_root, self.subscriber, e, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
                    continue
                if changed:
                    yield None

    async def _check_chain_again(self, client: httpx.AsyncClient) -> None:
        """Learn the chain to the origin anew (``cat2cli url`` shows it); if it has
        become a loop, serve none of the root's data, saying why, until it is not one."""
        r = await client.get(f"{self.subscriber}/api/source/"
                             f"{urllib.parse.quote(self.upstream_root)}", timeout=API_TIMEOUT)
        r.raise_for_status()
        hops = provenance.chain_through(self.subscriber,
                                        provenance.Source.model_validate_json(r.content))
        try:
            provenance.check_chain(self.own_id, self.name, hops)
        except provenance.LoopError as e:
            if self._loop is None:
                log.error("%s; serving none of its data until the chain changes", e)
            self._loop = str(e)
            return
        if self._loop is not None:
            log.warning("the chain of %s is no longer a loop: serving it again", self.name)
            self._loop = None
        if hops != self._hops:
            self._hops = hops
            await asyncio.to_thread(atomic_write, self.hops_file, _HOPS.dump_json(hops))

    async def _next_index(self, client: httpx.AsyncClient) -> bool:
        """Wait for the next index upstream; whether it differs from the one held."""
        headers = {"If-None-Match": self._etag} if self._etag else {}
        r = await client.get(f"{self._relay}/index", params={"wait": str(WAIT_S)},
                             headers=headers)
        if r.status_code == 304:
            return False
        if r.status_code == 404:  # (the subscriber lost its subscription: take it again)
            await client.post(f"{self.subscriber}/api/subscribe/"
                              f"{urllib.parse.quote(self.upstream_root)}")
        r.raise_for_status()
        before = self._index
        await asyncio.to_thread(self._set_index, r.content, r.headers.get("etag"))
        return self._index != before

    # -- data -------------------------------------------------------------------------
    def read_chunk(self, path: str, nchunk: int, version: str | None = None) -> bytes:
        return self.read_chunks(path, [nchunk], version)[0]

    def read_chunks(self, path: str, nchunks: list[int],
                    version: str | None = None) -> list[bytes]:
        entry = self.entry(path)
        version = version or entry.version
        assert entry.meta is not None
        max_length = entry.meta.schunk.chunksize + blosc2.MAX_OVERHEAD
        params = {"nchunks": wire.format_chunk_list(nchunks), "version": version}
        got: dict[int, bytes] = {}
        try:
            with self.pool.get(f"{self._relay}/chunks/{urllib.parse.quote(path)}", params,
                               headers=self.headers) as r:
                if r.status != 200:
                    self._data_error(r, path, version)
                # Each chunk read into a buffer of its own (keep), passed on as it is: no
                # copy (it was checked against its digest on the way in).  A memoryview,
                # which everything that takes a chunk's bytes takes too.
                for n, chunk, _ in wire.read_digested_records(r, max_length, _every):
                    got[n] = cast(bytes, chunk)
        except httpx.HTTPError as e:
            raise SourceUnreachable(f"the subscriber at {self.subscriber} is unreachable "
                                    f"({e})", version) from None
        except wire.AnswerCut as e:
            raise SourceUnreachable(f"the subscriber at {self.subscriber} could not send "
                                    f"{path}: {e}", version) from None
        except wire.StreamCut as e:
            raise SourceUnreachable(f"from the subscriber at {self.subscriber}: {e}",
                                    version) from None
        if any(n not in got for n in nchunks):
            raise VersionMismatch(path)  # cut short upstream: the dataset changed there
        return [got[n] for n in nchunks]

    reads_blocks = True

    def read_blocks(self, path: str, nchunk: int, blocks: list[int],
                    version: str) -> BlockPieces:
        """Blocks of one chunk, asked upstream for just those (the subscriber there
        fetches only them from its source, if it does not hold the chunk)."""
        entry = self.entry(path)
        assert entry.meta is not None
        params = {"nchunk": str(nchunk), "blocks": wire.format_chunk_list(blocks),
                  "version": version}
        max_length = entry.meta.schunk.chunksize + blosc2.MAX_OVERHEAD
        try:
            with self.pool.get(f"{self._relay}/blocks/{urllib.parse.quote(path)}", params,
                               headers=self.headers) as r:
                if r.status != 200:
                    self._data_error(r, path, version)
                chunk_digest = int(r.getheader(wire.CHUNK_DIGEST_HEADER) or "")
                pieces = [(offset, bytes(piece)) for offset, piece, _ in
                          wire.read_digested_records(r, max_length)]
        except httpx.HTTPError as e:
            raise SourceUnreachable(f"the subscriber at {self.subscriber} is unreachable "
                                    f"({e})", version) from None
        except (wire.StreamCut, wire.AnswerCut, ValueError) as e:
            raise SourceUnreachable(f"blocks of {path} from the subscriber at "
                                    f"{self.subscriber}: {e}", version) from None
        if not pieces:
            raise VersionMismatch(path)  # cut short upstream: the dataset changed there
        return pieces, chunk_digest

    def download_url(self, path: str) -> str:
        """The upstream subscriber's complete file of the dataset (ordinary files as their
        ``.b2`` SChunk, as a publisher serves them)."""
        self.entry(path)
        stored = f"{path}.b2" if paths.dataset_kind(path) == "file" else path
        return (f"{self.subscriber}/files/{urllib.parse.quote(self.upstream_root)}/"
                f"{urllib.parse.quote(stored)}")

    def _data_error(self, r, path: str, version: str) -> None:
        """Raise what an upstream answer other than 200 means for a read."""
        text = r.read(2000).decode(errors="replace")
        if r.status == 412:
            raise VersionMismatch(path)
        if r.status == 404:
            raise DatasetNotFound(path)
        raise SourceUnreachable(f"the subscriber at {self.subscriber} answered {r.status} "
                                f"for {self.upstream_root}/{path}: {text[:300]}", version)

    def known_digests(self, path: str, version: str) -> bytes | None:
        """The digests of ``version``'s chunks, asked upstream (never read from chunks)."""
        try:
            with self.pool.get(f"{self._relay}/digests/{urllib.parse.quote(path)}",
                               {"version": version}, headers=self.headers) as r:
                if r.status != 200:
                    self._data_error(r, path, version)
                return r.read()
        except httpx.HTTPError as e:
            raise SourceUnreachable(f"the subscriber at {self.subscriber} is unreachable "
                                    f"({e})", version) from None

    def close(self) -> None:
        self.pool.close()
