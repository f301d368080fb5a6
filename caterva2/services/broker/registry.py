"""The roots a broker lists: where each one's publisher serves it, and whether it answers.

The listing is kept in ``STATEDIR/roots.json`` (``{name: {"name", "http"}}``, plus
``"last_seen"``, seconds since the epoch, for roots not seen for a while) and survives
restarts.  Who may register a name is decided elsewhere (:mod:`.bindings`); here, a
registration from a new address replaces the old one unless a publisher still answers
there for that root (two publishers sharing one state directory, and so one key).

**Liveness.**  A root's publisher is seen when it registers (it does so every 30 s) or
posts an event, and when it answers the broker's probe (``GET /api/root`` at its address,
which must name the root), made every third of ``unreachable_after``, at most every 30 s.
A root not seen for ``unreachable_after`` is listed as unreachable (``"reachable": false``
in ``GET /api/roots``); one not seen for ``drop_after`` is no longer listed.  Its name stays
bound to its publisher, which, back, is listed again.
"""
from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import time
from dataclasses import dataclass

import httpx

from caterva2 import tls
from caterva2.config import format_duration
from caterva2.models import ListedRoot, RootInfo, valid_roots
from caterva2.statefiles import atomic_write, read_json

log = logging.getLogger("caterva2.broker")
MAX_ROOTS = 10_000  # roots listed at once (so that registrations cannot fill the disk)
PROBES_AT_ONCE = 16
MAX_PROBE_INTERVAL_S = 30


@dataclass(frozen=True)
class Liveness:
    """When a root whose publisher does not answer is listed as unreachable, and when it
    is no longer listed (seconds)."""

    unreachable_after: float = 90.0
    drop_after: float = 86400.0

    @property
    def probe_interval(self) -> float:
        return min(self.unreachable_after / 3, MAX_PROBE_INTERVAL_S)


class NameTaken(Exception):
    """Another publisher, still serving, holds the root's name."""


class RegistryFull(Exception):
    """The broker lists MAX_ROOTS roots already."""


class Registry:
    """The listed roots by name, when each was last seen, and which are (marked)
    unreachable."""

    def __init__(self, statedir: pathlib.Path, liveness: Liveness = Liveness()):
        self.file = pathlib.Path(statedir) / "roots.json"
        self.liveness = liveness
        data = read_json(self.file, {})
        self.roots: dict[str, RootInfo] = valid_roots(data)
        now = time.time()
        # (a root that was reachable when the broker stopped is given a fresh start)
        self.last_seen = {name: _last_seen(data[name], now) for name in self.roots}
        self.unreachable = {name for name in self.roots if self.last_seen[name] < now}
        self._saving = asyncio.Lock()  # (one write at a time: the last one is the newest)

    def listing(self) -> dict[str, ListedRoot]:
        """Every listed root, with whether its publisher answered lately."""
        now = time.time()
        return {name: ListedRoot(name=name, http=info.http, reachable=now - self.last_seen[
                    name] < self.liveness.unreachable_after)
                for name, info in self.roots.items()}

    def full(self, name: str) -> bool:
        """Whether listing ``name`` would take more than MAX_ROOTS roots."""
        return name not in self.roots and len(self.roots) >= MAX_ROOTS

    async def register(self, root: RootInfo, client: httpx.AsyncClient) -> bool:
        """List ``root`` (again, if its publisher restarted, maybe elsewhere); True if
        the listing changed (a new root, or a new address).

        Raises NameTaken if another address holds the name and its publisher, asked with
        ``client``, still answers that it serves a root of that name; RegistryFull if
        MAX_ROOTS roots are listed.
        """
        current = self.roots.get(root.name)
        if self.full(root.name):
            raise RegistryFull(f"this broker lists {MAX_ROOTS} roots, the most it may")
        if current is not None and current.http != root.http \
                and await still_published(current, client):
            raise NameTaken(f"root {root.name!r} is already published at {current.http} by "
                            "a publisher with the same key (the same state directory?); "
                            "stop that publisher first")
        self.roots[root.name] = root
        if current != root:
            log.info("root %s registered at %s", root.name, root.http)
        await self.seen(root.name, save=current != root)
        return current != root

    async def seen(self, name: str, save: bool = False) -> None:
        """The publisher of ``name`` was just heard from (``save``: the listing changed)."""
        if name not in self.roots:
            return
        self.last_seen[name] = time.time()
        if name in self.unreachable:
            self.unreachable.discard(name)
            log.warning("root %s: its publisher at %s answers again", name,
                        self.roots[name].http)
            save = True
        if save:
            await self._save()

    async def check(self, client: httpx.AsyncClient) -> None:
        """Probe every root's publisher; list as unreachable, or drop, those long silent."""
        limit = asyncio.Semaphore(PROBES_AT_ONCE)

        async def probe(info: RootInfo) -> None:
            async with limit:
                if await still_published(info, client) and self.roots.get(info.name) == info:
                    await self.seen(info.name)

        await asyncio.gather(*(probe(info) for info in list(self.roots.values())))
        now, changed = time.time(), False
        for name, info in list(self.roots.items()):
            silent = now - self.last_seen[name]
            if silent >= self.liveness.drop_after:
                del self.roots[name], self.last_seen[name]
                self.unreachable.discard(name)
                log.warning("root %s dropped: its publisher at %s has not answered for %s",
                            name, info.http, format_duration(round(silent, 1)))
                changed = True
            elif silent >= self.liveness.unreachable_after and name not in self.unreachable:
                self.unreachable.add(name)
                log.warning("root %s: its publisher at %s has not answered for %s: "
                            "unreachable", name, info.http, format_duration(round(silent, 1)))
                changed = True
        if changed:
            await self._save()

    async def watch(self, client: httpx.AsyncClient) -> None:
        """:meth:`check` every ``probe_interval``, forever."""
        while True:
            await asyncio.sleep(self.liveness.probe_interval)
            await self.check(client)

    async def _save(self) -> None:
        async with self._saving:
            data = {}
            for name, info in self.roots.items():
                data[name] = info.model_dump()
                if name in self.unreachable:  # (so that a restart does not make it young)
                    data[name]["last_seen"] = self.last_seen[name]
            await asyncio.to_thread(atomic_write, self.file, json.dumps(data, indent=1))


def _last_seen(entry: object, now: float) -> float:
    """When a root was last seen, from its entry in roots.json (now, if not recorded)."""
    value = entry.get("last_seen") if isinstance(entry, dict) else None
    return float(value) if isinstance(value, (int, float)) and value <= now else now


async def still_published(root: RootInfo, client: httpx.AsyncClient) -> bool:
    """Whether the publisher registered for ``root`` answers that it serves it."""
    try:
        r = await client.get(tls.base_url(root.http) + "/api/root")
        return r.status_code == 200 and r.json().get("name") == root.name
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
