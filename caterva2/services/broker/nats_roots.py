"""The broker on NATS: it keeps the deployment's stream and announces roots there.

With ``--nats``, publishers announce their changes on NATS themselves and subscribers read
them there (see :mod:`caterva2.services.nats_bus`); the broker keeps the registry and the
authority over names, and announces on ``caterva2.<DEPLOYMENT>.root.<ROOT>`` every root
registered anew or moved to another address (not the renewals publishers send every 30 s:
the stream keeps what it is given, and subscribers replay it).

Announcements wait, and are tried again, while NATS cannot be reached; for one root only
the latest is kept.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from caterva2.models import Notifications, RootEvent, RootInfo
from caterva2.services import nats_bus

log = logging.getLogger("caterva2.broker")
RETRY_S = 1.0


@dataclass(frozen=True)
class NatsOptions:
    """Where the broker's NATS is, the deployment's name, and the broker's credentials."""

    servers: tuple[str, ...]
    deployment: str = nats_bus.DEFAULT_DEPLOYMENT
    credentials: tuple[str, str] | None = None

    @property
    def replicas(self) -> int:
        """Copies of the stream: 3 in a cluster of 3 servers or more (one may fail)."""
        return 3 if len(self.servers) >= 3 else 1

    def notifications(self) -> Notifications:
        return nats_bus.plan(list(self.servers), self.deployment)


class NatsRoots:
    """The broker's NATS connection, its stream, and root announcements waiting to go."""

    def __init__(self, options: NatsOptions):
        self.options = options
        self.connected = asyncio.Event()
        self.pending: dict[str, RootEvent] = {}
        self._wake = asyncio.Event()
        self._nc: Any = None

    def announce(self, root: RootInfo) -> None:
        """Announce ``root`` (registered or moved) as soon as NATS takes it."""
        self.pending[root.name] = RootEvent(root=root)
        self._wake.set()

    async def run(self) -> None:
        """Connect, keep the stream, and send announcements, until cancelled."""
        self._nc = await nats_bus.connect(
            list(self.options.servers), self.options.credentials, "caterva2 broker",
            on_disconnect=self._disconnected, on_reconnect=self._reconnected)
        try:
            js = self._nc.jetstream()
            await self._keep_stream(js)
            self.connected.set()
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.pending:
                    await self._send_one(js)
        finally:
            self.connected.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._nc.close(), 3)

    async def _keep_stream(self, js: Any) -> None:
        while True:
            try:
                await nats_bus.keep_stream(js, self.options.deployment, self.options.replicas)
                return
            except nats_bus.nats_errors() as e:
                log.warning("cannot set up stream %s on NATS (%s: %s); trying again in %ss",
                            nats_bus.stream_name(self.options.deployment),
                            type(e).__name__, e, RETRY_S)
                await asyncio.sleep(RETRY_S)

    async def _send_one(self, js: Any) -> None:
        name, event = next(iter(self.pending.items()))
        try:
            await nats_bus.publish(js, nats_bus.root_subject(self.options.deployment, name),
                                   event.model_dump_json(),
                                   nats_bus.stream_name(self.options.deployment))
        except nats_bus.nats_errors() as e:
            log.warning("root %s not announced on NATS yet (%s: %s); trying again in %ss",
                        name, type(e).__name__, e, RETRY_S)
            await asyncio.sleep(RETRY_S)
            return
        if self.pending.get(name) is event:
            del self.pending[name]

    async def _disconnected(self) -> None:
        self.connected.clear()
        log.warning("NATS connection lost; reconnecting")

    async def _reconnected(self) -> None:
        self.connected.set()
        log.warning("NATS connection back")
