"""The roots a subscriber knows of (from its broker) and the ones it follows.

Subscriptions are kept in ``STATEDIR/subscriptions.json`` and survive restarts.
"""
from __future__ import annotations

import asyncio
import json
import pathlib

from caterva2.models import RootInfo, valid_roots
from caterva2.statefiles import atomic_write, read_json


class RootRegistry:
    """Known roots (name → publisher) and subscribed ones.  Used from the event loop only."""

    def __init__(self, statedir: pathlib.Path):
        self.file = pathlib.Path(statedir) / "subscriptions.json"
        self.subscribed: dict[str, RootInfo] = valid_roots(read_json(self.file, {}))
        self.known: dict[str, RootInfo] = dict(self.subscribed)

    def publisher(self, root: str) -> str:
        """``host:port`` of the publisher serving ``root``."""
        info = self.subscribed.get(root) or self.known[root]
        return info.http

    async def learn(self, info: RootInfo) -> bool:
        """Note a root as the broker announced it; True if it moved to another publisher."""
        moved = self.known.get(info.name) != info
        self.known[info.name] = info
        if info.name in self.subscribed and self.subscribed[info.name] != info:
            self.subscribed[info.name] = info
            await self._save()
        return moved

    async def add_subscription(self, root: str) -> None:
        if root not in self.subscribed:
            self.subscribed[root] = self.known[root]
            await self._save()

    async def _save(self) -> None:
        data = {n: i.model_dump() for n, i in self.subscribed.items()}
        await asyncio.to_thread(atomic_write, self.file, json.dumps(data))
