"""The publisher's link to its broker: registering the root, announcing every change.

What was last announced is kept in ``STATEDIR/announced.json`` (``{path: version}``), so a
publisher that was down announces on restart what changed meanwhile.

Every request to the broker carries the publisher's own key (``STATEDIR/publisher.key``,
made at first start, readable by its owner only), to which the broker binds the root's
name, and the broker's token if one is set (``CATERVA2_BROKER_TOKEN``, or ``token`` in
``[publisher]`` or ``[broker]``).  Changes are announced in events of at most
:data:`caterva2.models.MAX_EVENT_PATHS` paths.  A broker that refuses the publisher (no or
a wrong token, a name bound to another publisher) is asked again every TAKEN_RETRY_S, its
reason logged as an error each time.

When the deployment's notifications are on NATS (the broker says so, or ``nats`` in
``[publisher]``; see :mod:`.nats_changes`), registrations still go to the broker, which
owns the names, but change events go to NATS: with the broker down they still reach
subscribers, and a change NATS did not take is tried again, with growing pauses.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time

import httpx

from caterva2 import paths, tls
from caterva2.models import (
    MAX_EVENT_PATHS,
    MAX_VERSION_LENGTH,
    NOTIFICATIONS_HEADER,
    PUBLISHER_KEY_HEADER,
    ChangeEvent,
    RootInfo,
)
from caterva2.roots import DatasetNotFound, DatasetUnavailable, PublishedRoot
from caterva2.services import nats_bus
from caterva2.statefiles import atomic_write, private_key, read_json

from .nats_changes import NatsChanges

log = logging.getLogger("caterva2.publisher")
# A file missing for this long is deleted; before, it may be being written anew (blosc2's
# mode="w" removes the old file first), and announcing it deleted would make subscribers
# answer 404 for a moment.
DELETE_GRACE_S = 0.5
TAKEN_RETRY_S = 5  # how often to ask a broker that refused this publisher again
REREGISTER_S = 30  # re-register now and then: cheap, heals a broker that lost its state,
# and tells it that this publisher is alive
KEY_FILE = "publisher.key"
REFUSALS = (400, 401, 403, 409, 413, 507)  # the broker's answers that retrying soon won't fix


class Refused(Exception):
    """The broker refused this publisher (its token, its key, the root's name): why."""


class Announcer:
    """Registers the root with the broker and announces changes, surviving broker restarts.

    Deletions are announced once a file has been missing for DELETE_GRACE_S.  :meth:`run`
    keeps trying until the broker has heard everything, so a publisher starts (and serves)
    whether its broker is up or not.
    """

    def __init__(self, name: str, root: PublishedRoot, address: str, broker: str,
                 statedir: pathlib.Path, client: httpx.AsyncClient, token: str | None = None,
                 nats: NatsChanges | None = None):
        self.name, self.root, self.address, self.broker = name, root, address, broker
        self.client, self.nats = client, nats
        self.transient: tuple[type[BaseException], ...] = (  # (errors worth retrying)
            httpx.HTTPError, *nats_bus.nats_errors())
        self.headers = {PUBLISHER_KEY_HEADER: private_key(pathlib.Path(statedir) / KEY_FILE)}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"
        self.state_file = pathlib.Path(statedir) / "announced.json"
        self.lock = asyncio.Lock()
        self.registered = False
        self.missing_since: dict[str, float] = {}  # announced paths missing now: since when
        self.recheck: asyncio.Task | None = None
        self.unannounceable: set[str] = set()  # paths not announced (logged once)
        announced = read_json(self.state_file, {})
        self.announced = self._announceable(announced if isinstance(announced, dict) else {})

    async def run(self) -> None:
        """Announce now, after every change of the root, and again now and then."""
        watcher = asyncio.create_task(self._watch())
        try:
            delay, refused = 0.1, ""
            while True:
                try:
                    await self.announce()
                    delay, refused = 0.1, ""
                    await asyncio.sleep(REREGISTER_S)
                    self.registered = False
                except Refused as e:
                    self.registered = False
                    # (an error once; the same refusal again at info level, not to flood logs)
                    log.log(logging.INFO if str(e) == refused else logging.ERROR,
                            "%s; trying again every %d s", e, TAKEN_RETRY_S)
                    refused = str(e)
                    await asyncio.sleep(TAKEN_RETRY_S)
                except self.transient as e:
                    self.registered = False
                    log.warning("%s unreachable (%s); retrying in %.1fs",
                                f"broker {self.broker}" if isinstance(e, httpx.HTTPError)
                                else "NATS", type(e).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
        finally:
            watcher.cancel()
            if self.recheck is not None:
                self.recheck.cancel()
            if self.nats is not None:
                await self.nats.close()

    async def _watch(self) -> None:
        async for _ in self.root.changes():
            await self._announce_now()

    async def _recheck(self) -> None:
        await asyncio.sleep(DELETE_GRACE_S)
        self.recheck = None
        await self._announce_now()

    async def _announce_now(self) -> None:
        """Announce a change just seen.  On NATS, until it is taken (the broker need not
        be up); through the broker, once (:meth:`run` tries again until it is back)."""
        delay = 0.1
        while True:
            try:
                await self.announce()
                return
            except Refused:
                return
            except self.transient as e:
                if not self._on_nats or isinstance(e, httpx.HTTPError):
                    return  # (the broker is down: run() registers again, and announces)
                log.warning("NATS did not take a change of %s (%s: %s); trying again in "
                            "%.1fs", self.name, type(e).__name__, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5)

    @property
    def _on_nats(self) -> bool:
        return self.nats is not None and self.nats.active

    def _deleted(self, versions: dict[str, str]) -> list[str]:
        """Announced paths missing for DELETE_GRACE_S (a recheck is due for the others)."""
        now = time.monotonic()
        missing = [p for p in self.announced if p not in versions]
        self.missing_since = {p: self.missing_since.get(p, now) for p in missing}
        deleted = [p for p in missing if now - self.missing_since[p] >= DELETE_GRACE_S]
        if len(deleted) < len(missing) and self.recheck is None:
            self.recheck = asyncio.create_task(self._recheck())
        return deleted

    async def announce(self) -> None:
        """Register (if not yet) and post what changed since the last announcement."""
        async with self.lock:
            unregistered: httpx.HTTPError | None = None
            if not self.registered:
                try:
                    await self._register()
                except httpx.HTTPError as e:
                    if not self._on_nats:
                        raise
                    unregistered = e  # (changes go on NATS all the same)
            versions = self._announceable(await asyncio.to_thread(self.root.versions))
            changed = await self._changed(versions)
            deleted = self._deleted(versions)
            if changed or deleted:
                await self._post_changes(changed, deleted)
            if unregistered is not None:
                raise unregistered

    def _announceable(self, versions: dict[str, str]) -> dict[str, str]:
        """The datasets whose paths and versions an event may carry (see
        :class:`~caterva2.models.ChangeEvent`); the others are logged, once each."""
        kept = {}
        for path, version in versions.items():
            try:
                paths.check_relpath(path)
                if not isinstance(version, str) or not 0 < len(version) <= MAX_VERSION_LENGTH:
                    raise ValueError(f"{path}: version tag {paths.shorten(version)} not of 1 "
                                     f"to {MAX_VERSION_LENGTH} characters")
                kept[path] = version
            except ValueError as e:
                if path not in self.unannounceable:
                    self.unannounceable.add(path)
                    log.warning("not announced (subscribers could not take it): %s", e)
        return kept

    async def _register(self) -> None:
        r = await self._post("/api/roots", RootInfo(name=self.name, http=self.address
                                                     ).model_dump())
        self.registered = True
        if self.nats is not None:
            self.nats.learn(r.headers.get(NOTIFICATIONS_HEADER))

    async def _post(self, path: str, body: dict) -> httpx.Response:
        """Post ``body`` to the broker: its answer; Refused (with the broker's reason) or
        httpx.HTTPError if it did not take it."""
        r = await self.client.post(tls.base_url(self.broker) + path, json=body,
                                   headers=self.headers)
        if r.status_code in REFUSALS:
            try:  # (the broker's errors are JSON: {"detail": ...})
                detail = r.json()["detail"]
            except (ValueError, KeyError, TypeError):
                detail = r.text[:200]
            raise Refused(f"the broker at {self.broker} refused {path} ({r.status_code}): "
                          f"{detail}")
        r.raise_for_status()
        return r

    async def _changed(self, versions: dict[str, str]) -> dict[str, str]:
        """``{path: version}`` of the datasets not announced at their current version."""
        changed = {}
        for path, version in versions.items():
            if self.announced.get(path) == version:
                continue
            try:
                changed[path] = (await asyncio.to_thread(self.root.entry, path)).version
            except DatasetNotFound:
                continue  # gone since the scan
            except DatasetUnavailable as e:
                # Announced all the same: subscribers drop what they held of the old
                # version and list it as unreadable.  A file still being written changes
                # again, and its final version is announced in turn.
                log.warning("%s", e)
                changed[path] = version
        return changed

    async def _post_changes(self, changed: dict[str, str], deleted: list[str]) -> None:
        """Announce the changes, in events of at most MAX_EVENT_PATHS paths; what the
        broker took is remembered after each."""
        items = [(p, v) for p, v in changed.items()] + [(p, None) for p in deleted]
        for start in range(0, len(items), MAX_EVENT_PATHS):
            batch = items[start:start + MAX_EVENT_PATHS]
            event = ChangeEvent(root=self.name, changed={p: v for p, v in batch if v},
                                deleted=[p for p, v in batch if v is None])
            if self._on_nats:
                assert self.nats is not None
                await self.nats.publish(event)
            else:
                await self._post("/api/events", event.model_dump())
            for p in event.deleted:
                del self.announced[p]
            self.announced.update(event.changed)
            await asyncio.to_thread(atomic_write, self.state_file, json.dumps(self.announced))
            log.info("announced %d changed, %d deleted%s", len(event.changed),
                     len(event.deleted), " on NATS" if self._on_nats else "")
