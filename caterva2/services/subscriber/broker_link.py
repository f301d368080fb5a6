"""The subscriber's link to its broker: the registry of roots and the stream of events.

Events are taken from one place only: the WebSocket ``/api/events`` of the subscriber's own
broker (``--broker``), which forwards only what the publisher of each root posted (see
:mod:`caterva2.services.broker`).  The subscriber listens on no port for events.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import websockets
from pydantic import TypeAdapter, ValidationError

from caterva2 import tls
from caterva2.models import NOTIFICATIONS_HEADER, ChangeEvent, Event, RootEvent, valid_listing
from caterva2.services.subscriber.registry import RootRegistry

log = logging.getLogger("caterva2.subscriber")
_EVENTS: TypeAdapter[RootEvent | ChangeEvent] = TypeAdapter(Event)
MAX_BACKOFF_S = 5
# A broker gone without closing the connection (its host down, the network cut) is noticed
# within PING_INTERVAL_S + PING_TIMEOUT_S: until then reads are not revalidated.
PING_INTERVAL_S, PING_TIMEOUT_S = 2, 3


class BrokerLink:
    """Asks the broker for roots, and listens to its events, reconnecting by itself."""

    def __init__(self, broker: str, client: httpx.AsyncClient, registry: RootRegistry):
        self.broker, self.client, self.registry = broker, client, registry
        self.connected = asyncio.Event()  # (shared with the NATS link, when on NATS)
        # where notifications go, as the last listing said (its Caterva2-Notifications
        # header: None from a broker that does not send it, one without NATS)
        self.notifications: str | None = None

    async def refresh_roots(self) -> None:
        """Ask the broker for every root, and whether each one's publisher answers (raises
        httpx.HTTPError if the broker is down)."""
        r = await self.client.get(tls.base_url(self.broker) + "/api/roots")
        r.raise_for_status()
        self.notifications = r.headers.get(NOTIFICATIONS_HEADER)
        try:
            listing = valid_listing(r.json())
        except ValueError:
            raise httpx.DecodingError(f"the broker at {self.broker} answered /api/roots with "
                                      "something that is not JSON", request=r.request) from None
        await self.registry.learn_listing(listing)

    async def listen(self, on_connect: Callable[[], Awaitable[None]],
                     on_event: Callable[[RootEvent | ChangeEvent], Awaitable[None]]) -> None:
        """Listen to the broker's events forever, reconnecting with backoff.

        After every (re)connection, roots are refreshed and ``on_connect()`` runs (to
        catch up with whatever happened while we were not listening); then every valid
        event goes to ``on_event``.
        """
        delay = 0.1
        url = tls.websocket_url(self.broker, "/api/events")
        while True:
            try:
                secure = tls.client_context() if url.startswith("wss:") else None
                async with websockets.connect(url, open_timeout=5, max_size=None,
                                              ping_interval=PING_INTERVAL_S,
                                              ping_timeout=PING_TIMEOUT_S, ssl=secure) as ws:
                    await self.refresh_roots()
                    await on_connect()
                    self.connected.set()
                    delay = 0.1
                    async for message in ws:
                        try:
                            event = _EVENTS.validate_json(message)
                        except ValidationError as e:
                            log.warning("ignoring malformed event: %s", e)
                            continue
                        await on_event(event)
            except (OSError, websockets.WebSocketException, httpx.HTTPError,
                    asyncio.TimeoutError) as e:
                log.warning("broker %s: %s; reconnecting in %.1fs", self.broker, e, delay)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
