"""Where a subscriber takes its events from: its broker's WebSocket, or NATS JetStream.

Which one is decided at start, and again whenever the events stop: ``nats`` in the
subscriber's own section (with ``nats_deployment``) says NATS; else the broker says (the
``Caterva2-Notifications`` header of its listing of roots, remembered in
``STATEDIR/notifications.json`` for starts while the broker is down).  A subscriber that
has never heard of NATS uses the broker's WebSocket (:mod:`.broker_link`), as without
NATS, and moves to NATS when the listing it asks for on each connection says that its
broker did.  On NATS, see
:mod:`.nats_link`.
"""
from __future__ import annotations

import asyncio
import logging
import pathlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from caterva2.models import ChangeEvent, Notifications, RootEvent
from caterva2.services import nats_bus
from caterva2.services.subscriber.broker_link import BrokerLink
from caterva2.services.subscriber.nats_link import NatsLink

log = logging.getLogger("caterva2.subscriber")

OnCatchUp = Callable[[], Awaitable[None]]
OnEvent = Callable[[RootEvent | ChangeEvent], Awaitable[None]]


@dataclass(frozen=True)
class SubscriberNats:
    """A subscriber's own NATS settings: servers and deployment (None: as its broker
    says) and credentials (None: NATS's anonymous reader, if it has one)."""

    servers: tuple[str, ...] | None = None
    deployment: str | None = None
    credentials: tuple[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> SubscriberNats:
        servers, deployment = settings.get("nats"), settings.get("nats_deployment")
        return cls(tuple(nats_bus.parse_servers(servers)) if servers else None,
                   nats_bus.check_deployment(deployment) if deployment else None,
                   nats_bus.credentials(settings.get("nats_credentials")))


class EngineChanged(Exception):
    """The broker moved its notifications to NATS: listen there."""


class Notifier:
    """The subscriber's events, from whichever engine carries them; ``connected`` is set
    while events reach it (else reads check datasets with their publishers)."""

    def __init__(self, broker: BrokerLink, own: SubscriberNats, statedir: pathlib.Path,
                 on_resync: Callable[[], None] | None = None):
        self.broker, self.own, self.statedir = broker, own, pathlib.Path(statedir)
        self.connected = broker.connected
        self.engine = "broker"
        self.on_resync = on_resync

    async def listen(self, on_catch_up: OnCatchUp, on_event: OnEvent) -> None:
        """Events forever, from the engine that carries them."""
        while True:
            plan = await self._plan()
            self.engine = plan.engine
            if plan.engine == "nats":
                link = NatsLink(plan, self.own.credentials, self.statedir, self.broker,
                                self.connected, self.on_resync)
                await link.listen(on_catch_up, on_event)
                continue

            async def catch_up_unless_moved() -> None:
                # (the listing asked for on each connection says where notifications go)
                told = self._told()
                if told is not None and told.engine == "nats":
                    nats_bus.remember(self.statedir, told)
                    raise EngineChanged()
                await on_catch_up()

            try:
                await self.broker.listen(catch_up_unless_moved, on_event)
            except EngineChanged:
                self.connected.clear()
                log.warning("the broker's notifications are now on NATS")

    async def _plan(self) -> Notifications:
        """Where events come from now: the subscriber's own ``nats``; else, if it knows
        of NATS, what the broker says (what it said last, while it is down); else the
        broker's WebSocket (which asks nothing more: the listing it asks for on each
        connection says whether the broker moved to NATS)."""
        known = nats_bus.remembered(self.statedir)
        if self.own.servers is None and (known is None or known.engine != "nats"):
            return Notifications()
        try:
            await self.broker.refresh_roots()
            told = self._told()
        except httpx.HTTPError:
            told = None
        if told is not None:
            nats_bus.remember(self.statedir, told)
            known = told
        if self.own.servers is not None:
            deployment = self.own.deployment or (known.deployment if known is not None and
                                                 known.deployment else
                                                 nats_bus.DEFAULT_DEPLOYMENT)
            return nats_bus.plan(list(self.own.servers), deployment)
        return known or Notifications()

    def _told(self) -> Notifications | None:
        """What the broker's last listing said (without the header: through the broker;
        None if it was malformed)."""
        if self.broker.notifications is None:
            return Notifications()
        try:
            return Notifications.model_validate_json(self.broker.notifications)
        except ValidationError:
            log.warning("ignoring a malformed notifications header from the broker")
            return None

    async def wait_connected(self, timeout: float) -> None:
        """Until events reach the subscriber, at most ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except asyncio.TimeoutError:
            pass
