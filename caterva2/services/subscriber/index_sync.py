"""Keeping each subscribed root's index (every dataset's version and metadata) current."""
from __future__ import annotations

import asyncio
import logging
import urllib.parse

import httpx
from pydantic import ValidationError

from caterva2 import tls
from caterva2.models import ChangeEvent, DatasetEntry, RootIndex
from caterva2.services.metrics import SubscriberMetrics
from caterva2.services.subscriber.cache import Cache
from caterva2.services.subscriber.errors import Gone, Unavailable
from caterva2.services.subscriber.registry import RootRegistry

log = logging.getLogger("caterva2.subscriber")
GONE_GRACE_S = 0.5  # a dataset missing at its publisher for this long is taken as deleted


class IndexSync:
    """Fetches indexes and entries from publishers into the cache."""

    def __init__(self, client: httpx.AsyncClient, registry: RootRegistry, cache: Cache,
                 metrics: SubscriberMetrics | None = None):
        self.client, self.registry, self.cache = client, registry, cache
        self.metrics = metrics

    async def resync(self, root: str, quiet: bool = False) -> None:
        """Bring a root's index up to date with its publisher (in one request).

        Raises Unavailable if the publisher cannot be reached, unless ``quiet`` (then it
        is logged, and the next event or reconnection tries again).
        """
        url = f"{tls.base_url(self.registry.publisher(root))}/api/index"
        if self.metrics is not None:
            self.metrics.index_fetched(root)
        try:
            r = await self.client.get(url)
            r.raise_for_status()
            index = await asyncio.to_thread(RootIndex.model_validate_json, r.content)
        except (httpx.HTTPError, ValidationError) as e:
            if quiet:
                log.warning("cannot resync %s from %s: %s", root, url, e)
                return
            raise Unavailable(f"publisher of root {root!r} at {self.registry.publisher(root)} "
                              f"is unreachable: {type(e).__name__}") from None
        if quiet and root not in self.registry.subscribed:
            return  # (unsubscribed meanwhile: its cache is gone, and stays so)
        await asyncio.to_thread(self.cache.set_index, root, index.datasets)

    async def apply(self, event: ChangeEvent) -> None:
        """Apply a publisher's change event to the cached index of its root."""
        index = await asyncio.to_thread(self.cache.index, event.root) or {}
        wanted = {p: v for p, v in event.changed.items()
                  if p not in index or index[p].version != v}
        entries = await asyncio.gather(*(self._changed_entry(event.root, p, v)
                                         for p, v in wanted.items()))
        if event.root not in self.registry.subscribed:
            return  # (unsubscribed meanwhile: its cache is gone, and stays so)
        await asyncio.to_thread(self.cache.update, event.root, dict(zip(wanted, entries)),
                                list(event.deleted))

    async def refresh_entry(self, root: str, path: str, entry: DatasetEntry) -> None:
        """Put a dataset's entry, as just learnt from its publisher, in the index."""
        await asyncio.to_thread(self.cache.update, root, {path: entry}, [])

    async def _changed_entry(self, root: str, path: str, version: str) -> DatasetEntry:
        """The entry of a dataset announced as changed; without metadata if it cannot be had
        now (reads ask its publisher again).  Missing now is not deleted: a file rewritten
        in place is missing for a moment, and publishers announce real deletions."""
        try:
            return await self.fetch_entry(root, path)
        except Gone:
            return DatasetEntry.unreadable(version, "missing at its source (being rewritten?)")
        except Unavailable as e:
            return DatasetEntry.unreadable(version, str(e))

    async def current_entry(self, root: str, path: str, known: DatasetEntry | None = None,
                            timeout: httpx.Timeout | None = None) -> DatasetEntry:
        """:meth:`fetch_entry`, asked again for up to GONE_GRACE_S while the publisher says
        the dataset is gone: a file rewritten in place is missing for a moment (Blosc2's
        ``mode="w"`` removes it first), and publishers announce deletions only after that."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GONE_GRACE_S
        while True:
            try:
                return await self.fetch_entry(root, path, known, timeout)
            except Gone:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(GONE_GRACE_S / 10)

    async def fetch_entry(self, root: str, path: str, known: DatasetEntry | None = None,
                          timeout: httpx.Timeout | None = None) -> DatasetEntry:
        """The dataset's entry at its publisher now; Gone or Unavailable.

        With ``known``, the publisher is asked whether that version is still current (its
        ETag): if so, it answers 304 with no body, and ``known`` itself is returned.
        ``timeout`` replaces the client's for this request.
        """
        url = f"{tls.base_url(self.registry.publisher(root))}/api/info/{urllib.parse.quote(path)}"
        headers = {"If-None-Match": known.version} if known is not None else None
        try:
            r = await self.client.get(url, headers=headers, timeout=timeout if timeout
                                      is not None else httpx.USE_CLIENT_DEFAULT)
        except httpx.HTTPError as e:
            raise Unavailable(f"publisher of {root!r} unreachable: {type(e).__name__}") from None
        if r.status_code == 304 and known is not None:
            return known
        if r.status_code == 404:
            raise Gone(path)
        if r.status_code != 200:
            raise Unavailable(f"publisher of {root!r} answered {r.status_code} for {path}")
        try:
            return DatasetEntry.model_validate_json(r.content)
        except ValidationError:
            raise Unavailable(f"publisher of {root!r} sent a malformed entry for "
                              f"{path}") from None
