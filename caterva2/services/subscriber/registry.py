"""The roots a subscriber knows of (from its broker) and the ones it follows.

Subscriptions are kept in ``STATEDIR/subscriptions.json`` and survive restarts.  A root
the broker lists as unreachable (its publisher has not answered for a while), or no longer
lists at all while it is subscribed here, is known as ``unreachable``; one it no longer
lists and that is not subscribed is forgotten.
"""
from __future__ import annotations

import asyncio
import json
import pathlib

from caterva2.models import ListedRoot, RootInfo, valid_roots
from caterva2.statefiles import atomic_write, read_json


class RootRegistry:
    """Known roots (name → publisher) and subscribed ones.  Used from the event loop only."""

    def __init__(self, statedir: pathlib.Path):
        self.file = pathlib.Path(statedir) / "subscriptions.json"
        self.subscribed: dict[str, RootInfo] = valid_roots(read_json(self.file, {}))
        self.known: dict[str, RootInfo] = dict(self.subscribed)
        self.unreachable: set[str] = set()  # known roots whose publishers do not answer

    def publisher(self, root: str) -> str:
        """``host:port`` of the publisher serving ``root``."""
        info = self.subscribed.get(root) or self.known[root]
        return info.http

    async def learn(self, info: RootInfo) -> bool:
        """Note a root as the broker announced it; True if it moved to another publisher."""
        info = RootInfo(name=info.name, http=info.http)  # (without what a listing adds)
        moved = self.known.get(info.name) != info
        self.known[info.name] = info
        if info.name in self.subscribed and self.subscribed[info.name] != info:
            self.subscribed[info.name] = info
            await self._save()
        return moved

    async def learn_listing(self, listing: dict[str, ListedRoot]) -> None:
        """Take the broker's whole listing: learn every root, note which are unreachable,
        forget the unsubscribed roots it no longer lists."""
        for info in listing.values():
            await self.learn(info)
        for name in [n for n in self.known if n not in listing and n not in self.subscribed]:
            del self.known[name]
        self.unreachable = {name for name in self.known
                            if name not in listing or not listing[name].reachable}

    async def add_subscription(self, root: str) -> None:
        if root not in self.subscribed:
            self.subscribed[root] = self.known[root]
            await self._save()

    async def remove_subscription(self, root: str) -> None:
        """Stop following ``root`` (it stays known while the broker lists it)."""
        if self.subscribed.pop(root, None) is not None:
            await self._save()

    async def _save(self) -> None:
        data = {n: i.model_dump() for n, i in self.subscribed.items()}
        await asyncio.to_thread(atomic_write, self.file, json.dumps(data))
