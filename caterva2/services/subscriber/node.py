"""The subscriber's parts put together: what every endpoint reaches through ``app.state``."""
from __future__ import annotations

import asyncio
import contextlib
import pathlib
from dataclasses import dataclass, field

import httpx

from caterva2 import tls
from caterva2.models import ChangeEvent, RootEvent
from caterva2.services.metrics import SubscriberMetrics
from caterva2.services.subscriber.access import Access, AccessRules
from caterva2.services.subscriber.broker_link import BrokerLink
from caterva2.services.subscriber.cache import Cache
from caterva2.services.subscriber.chunk_fetcher import ChunkFetcher
from caterva2.services.subscriber.errors import Unavailable
from caterva2.services.subscriber.freshness import Freshness
from caterva2.services.subscriber.index_sync import IndexSync
from caterva2.services.subscriber.notifications import Notifier, SubscriberNats
from caterva2.services.subscriber.registry import RootRegistry

BROKER_HEAD_START_S = 2  # how long start-up waits for the broker before serving anyway


@dataclass(frozen=True)
class SubscriberSettings:
    """What a subscriber is told at start: its broker, state directory and addresses."""

    broker: str
    statedir: pathlib.Path
    address: str  # host:port it listens on
    url: str | None = None  # the base of the URLs it hands out (behind a proxy)
    cache_size: int | None = None  # bytes the cache may take on disk (None: no bound)
    require_login: bool = False  # every request needs a user's API key
    access_rules: AccessRules = field(default_factory=AccessRules)  # who may use which root
    nats: SubscriberNats = field(default_factory=SubscriberNats)  # its own NATS settings

    @property
    def base_url(self) -> str:
        return tls.base_url(self.url or self.address)


class Subscriber:
    """Roots, cache, broker link, index sync, freshness checks (while the broker is away)
    and chunk fetcher of one subscriber, and its figures (``metrics``, see
    :mod:`caterva2.services.metrics`)."""

    def __init__(self, settings: SubscriberSettings, client: httpx.AsyncClient,
                 metrics: SubscriberMetrics | None = None, access: Access | None = None):
        self.settings = settings
        self.access = access or Access.for_settings(settings)
        self.registry = RootRegistry(settings.statedir)
        self.metrics = metrics or SubscriberMetrics()
        self.cache = Cache(settings.statedir / "cache", limit=settings.cache_size,
                           on_evict=self.metrics.evicted)
        self.metrics.measure_cache(self.cache.directory, settings.cache_size)
        self.broker = BrokerLink(settings.broker, client, self.registry)
        self.notifier = Notifier(self.broker, settings.nats, settings.statedir,
                                 self.metrics.caught_up)
        self.indexes = IndexSync(client, self.registry, self.cache, self.metrics)
        self.freshness = Freshness(self.notifier, self.indexes)
        self.fetcher = ChunkFetcher(self.registry, self.cache, self.metrics)

    @contextlib.asynccontextmanager
    async def running(self):
        """Follow the notifications while in the block (given a head start to connect)."""
        task = asyncio.create_task(self.notifier.listen(self._caught_up, self._handle))
        await self.notifier.wait_connected(BROKER_HEAD_START_S)
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.fetcher.close()

    async def _caught_up(self) -> None:
        """After a gap in the events: bring every subscribed root up to date."""
        for name in list(self.registry.subscribed):
            await self.indexes.resync(name, quiet=True)

    async def _handle(self, event: RootEvent | ChangeEvent) -> None:
        if isinstance(event, RootEvent):
            await self.registry.learn(event.root)
            if event.root.name in self.registry.subscribed:
                await self.indexes.resync(event.root.name, quiet=True)  # its publisher (re)started
        elif event.root in self.registry.subscribed:
            await self.indexes.apply(event)

    async def subscribe(self, root: str) -> None:
        """Follow ``root``: fetch its index (metadata only, no data).  KeyError if no such
        root exists; Unavailable if it cannot be found out or fetched now."""
        if root not in self.registry.known:
            try:
                await self.broker.refresh_roots()
            except httpx.HTTPError as e:
                raise Unavailable(f"root {root!r} is not known here and the broker at "
                                  f"{self.broker.broker} is unreachable "
                                  f"({type(e).__name__})") from None
        if root not in self.registry.known:
            raise KeyError(root)
        if root not in self.registry.subscribed or \
                await asyncio.to_thread(self.cache.index, root) is None:
            await self.indexes.resync(root)
        await self.registry.add_subscription(root)

    async def unsubscribe(self, root: str) -> None:
        """Stop following ``root`` and drop what the cache holds of it.  KeyError if it is
        not subscribed."""
        if root not in self.registry.subscribed:
            raise KeyError(root)
        await self.registry.remove_subscription(root)
        await asyncio.to_thread(self.cache.drop_root, root)
