"""Concurrent callers asking for the same work share one run of it."""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Runs ``make()`` once per ``key`` while it runs; later callers with that key await the
    same result.  Shielded: a caller that goes away does not cancel the others' run."""

    def __init__(self) -> None:
        self._running: dict[Hashable, asyncio.Future[T]] = {}

    async def run(self, key: Hashable, make: Callable[[], Awaitable[T]]) -> T:
        task = self._running.get(key)
        if task is None:
            task = self._running[key] = asyncio.ensure_future(make())
            task.add_done_callback(lambda _: self._running.pop(key, None))
        return await asyncio.shield(task)
