"""The publisher's link to its broker: registering the root, announcing every change.

What was last announced is kept in ``STATEDIR/announced.json`` (``{path: version}``), so a
publisher that was down announces on restart what changed meanwhile.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import time

import httpx

from caterva2.models import ChangeEvent, RootInfo
from caterva2.roots import DatasetNotFound, DatasetUnavailable, PublishedRoot
from caterva2.statefiles import atomic_write, read_json

log = logging.getLogger("caterva2.publisher")
# A file missing for this long is deleted; before, it may be being written anew (blosc2's
# mode="w" removes the old file first), and announcing it deleted would make subscribers
# answer 404 for a moment.
DELETE_GRACE_S = 0.5
TAKEN_RETRY_S = 5  # how often to try again for a root name that another publisher holds
REREGISTER_S = 30  # re-register now and then: cheap, and heals a broker that lost its state


class RootTaken(Exception):
    """The broker refused the root's name: another publisher serves a root of that name."""


class Announcer:
    """Registers the root with the broker and announces changes, surviving broker restarts.

    Deletions are announced once a file has been missing for DELETE_GRACE_S.  :meth:`run`
    keeps trying until the broker has heard everything, so a publisher starts (and serves)
    whether its broker is up or not.
    """

    def __init__(self, name: str, root: PublishedRoot, address: str, broker: str,
                 statedir: pathlib.Path, client: httpx.AsyncClient):
        self.name, self.root, self.address, self.broker = name, root, address, broker
        self.client = client
        self.state_file = pathlib.Path(statedir) / "announced.json"
        self.announced: dict[str, str] = read_json(self.state_file, {})
        self.lock = asyncio.Lock()
        self.registered = False
        self.missing_since: dict[str, float] = {}  # announced paths missing now: since when
        self.recheck: asyncio.Task | None = None

    async def run(self) -> None:
        """Announce now, after every change of the root, and again now and then."""
        watcher = asyncio.create_task(self._watch())
        try:
            delay = 0.1
            while True:
                try:
                    await self.announce()
                    delay = 0.1
                    await asyncio.sleep(REREGISTER_S)
                    self.registered = False
                except RootTaken as e:
                    log.error("%s; trying again every %d s", e, TAKEN_RETRY_S)
                    await asyncio.sleep(TAKEN_RETRY_S)
                except httpx.HTTPError as e:
                    self.registered = False
                    log.warning("broker %s unreachable (%s); retrying in %.1fs",
                                self.broker, type(e).__name__, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5)
        finally:
            watcher.cancel()
            if self.recheck is not None:
                self.recheck.cancel()

    async def _watch(self) -> None:
        async for _ in self.root.changes():
            with contextlib.suppress(httpx.HTTPError, RootTaken):
                await self.announce()

    async def _recheck(self) -> None:
        await asyncio.sleep(DELETE_GRACE_S)
        self.recheck = None
        with contextlib.suppress(httpx.HTTPError, RootTaken):
            await self.announce()

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
            if not self.registered:
                await self._register()
            versions = await asyncio.to_thread(self.root.versions)
            changed = await self._changed(versions)
            deleted = self._deleted(versions)
            if changed or deleted:
                await self._post_changes(changed, deleted)

    async def _register(self) -> None:
        r = await self.client.post(f"http://{self.broker}/api/roots",
                                   json=RootInfo(name=self.name, http=self.address).model_dump())
        if r.status_code == 409:  # (the broker's errors are JSON: {"detail": ...})
            raise RootTaken(r.json().get("detail")
                            if r.headers.get("content-type") == "application/json" else r.text)
        r.raise_for_status()
        self.registered = True

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
        event = ChangeEvent(root=self.name, changed=changed, deleted=deleted)
        r = await self.client.post(f"http://{self.broker}/api/events", json=event.model_dump())
        r.raise_for_status()
        for p in deleted:
            del self.announced[p]
        self.announced.update(changed)
        await asyncio.to_thread(atomic_write, self.state_file, json.dumps(self.announced))
        log.info("announced %d changed, %d deleted", len(changed), len(deleted))
