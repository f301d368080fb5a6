"""A publisher's changes on NATS JetStream, for a deployment whose broker runs with ``--nats``.

The publisher learns where NATS is from its broker (the ``Caterva2-Notifications`` header
of its answer to each registration, remembered in ``STATEDIR/notifications.json``, so that it
announces on NATS even when it starts while the broker is down), or from ``nats`` (and
``nats_deployment``) in its own section, which win.  It connects with its own credentials
(``CATERVA2_NATS_CREDENTIALS``, or ``nats_credentials`` in ``[publisher]``: the user that
``cat2admin nats-publisher ROOT`` made for it, allowed to publish on its root's subject
only), and publishes each change event on ``caterva2.<DEPLOYMENT>.change.<ROOT>``, waiting
for the stream's acknowledgement.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from caterva2.models import NOTIFICATIONS_HEADER, ChangeEvent, Notifications
from caterva2.services import nats_bus

log = logging.getLogger("caterva2.publisher")


@dataclass(frozen=True)
class PublisherNats:
    """A publisher's own NATS settings: servers and deployment (None: as its broker says)
    and credentials."""

    servers: tuple[str, ...] | None = None
    deployment: str | None = None
    credentials: tuple[str, str] | None = None

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> PublisherNats:
        """From ``nats``, ``nats_deployment`` and ``nats_credentials`` (ConfigError for bad
        values)."""
        servers = settings.get("nats")
        deployment = settings.get("nats_deployment")
        return cls(tuple(nats_bus.parse_servers(servers)) if servers else None,
                   nats_bus.check_deployment(deployment) if deployment else None,
                   nats_bus.credentials(settings.get("nats_credentials")))


class NatsChanges:
    """Where this publisher's change events go when its deployment is on NATS."""

    def __init__(self, root: str, own: PublisherNats, statedir: pathlib.Path):
        self.root, self.own, self.statedir = root, own, pathlib.Path(statedir)
        self.plan = self._own_plan(nats_bus.remembered(self.statedir))
        self._nc: Any = None
        self._connected_to: Notifications | None = None

    @property
    def active(self) -> bool:
        """Whether changes go to NATS (else: to the broker, as without NATS)."""
        return self.plan is not None and self.plan.engine == "nats"

    def _own_plan(self, told: Notifications | None) -> Notifications | None:
        """What the broker said (``told``), with this publisher's own settings over it."""
        if self.own.servers is None:
            return told
        deployment = self.own.deployment or (told.deployment if told is not None and
                                             told.deployment else nats_bus.DEFAULT_DEPLOYMENT)
        return nats_bus.plan(list(self.own.servers), deployment)

    def learn(self, told: str | None) -> None:
        """Take what the broker's answer to a registration says of where notifications
        go (its ``Caterva2-Notifications`` header; None, without it: through the broker)."""
        try:
            notifications = Notifications.model_validate_json(told) if told is not None \
                else Notifications()
        except ValidationError:
            log.warning("ignoring a malformed %s header from the broker", NOTIFICATIONS_HEADER)
            return
        plan = self._own_plan(notifications)
        if plan != self.plan:
            log.info("change announcements go %s", "on NATS at " + ",".join(plan.servers)
                     if plan is not None and plan.engine == "nats" else "to the broker")
        self.plan = plan
        if notifications != nats_bus.remembered(self.statedir):
            nats_bus.remember(self.statedir, notifications)

    async def publish(self, event: ChangeEvent) -> None:
        """Publish ``event`` (in pieces that NATS takes), each acknowledged by the stream;
        raises one of :func:`caterva2.services.nats_bus.nats_errors` if NATS did not
        take it."""
        assert self.plan is not None and self.plan.deployment is not None
        js = (await self._connection()).jetstream()
        subject = nats_bus.change_subject(self.plan.deployment, self.root)
        for piece in nats_bus.split_to_fit(event):
            await nats_bus.publish(js, subject, piece.model_dump_json(),
                                   nats_bus.stream_name(self.plan.deployment))

    async def _connection(self) -> Any:
        if self._nc is not None and self._connected_to != self.plan:
            await self.close()
        if self._nc is None:
            assert self.plan is not None
            self._nc = await nats_bus.connect(self.plan.servers, self.own.credentials,
                                              f"caterva2 publisher of {self.root}",
                                              forever=False)
            self._connected_to = self.plan
        return self._nc

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
