"""Freshness without the broker: a dataset's version checked with its publisher before a read.

While the subscriber is connected to its broker (or, in a deployment on NATS, to NATS),
publishers' change events keep the index current, and a read asks nobody.  While it is
not (:attr:`.Notifier.connected` is clear: the broker, or NATS, is down, unreachable, or
not reached yet), changes go unannounced, so a read
first asks the dataset's publisher whether the version in the index is still current:
``GET /api/info/PATH`` with ``If-None-Match: VERSION``, a 304 with no body if it is.

- At most once per REVALIDATE_INTERVAL_S per dataset: reads within that time of the last
  answer take its outcome as it is, and concurrent reads share one request.  A change at
  the source is so seen within about REVALIDATE_INTERVAL_S of it (plus the request).
- A new version goes into the index (the cache drops the old replica, as for an event) and
  is served; a dataset gone at its source (for GONE_GRACE_S: a file rewritten in place is
  missing for a moment) is Gone, a 404.
- With the publisher unreachable too (or not answering within REVALIDATE_TIMEOUT), the
  cached entry is served as it is, with the reason it could not be checked: endpoints send
  it in the :data:`caterva2.wire.UNVERIFIED_HEADER` of their answers.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import httpx

from caterva2.models import DatasetEntry
from caterva2.services.subscriber.errors import Gone, Unavailable
from caterva2.services.subscriber.index_sync import IndexSync
from caterva2.services.subscriber.notifications import Notifier
from caterva2.services.subscriber.single_flight import SingleFlight

log = logging.getLogger("caterva2.subscriber")
REVALIDATE_INTERVAL_S = 0.5  # a dataset's version is checked at most this often
# A revalidation is one small request: a publisher that does not answer it quickly is
# taken as unreachable, and the cached copy served (marked so) rather than made to wait.
REVALIDATE_TIMEOUT = httpx.Timeout(2.0, connect=1.0)

Key = tuple[str, str]  # root, path


@dataclass(frozen=True)
class Checked:
    """The outcome of asking a dataset's publisher about it."""

    at: float  # (event loop time) when the answer came
    version: str  # the version in the index after the check
    entry: DatasetEntry | None  # the entry to serve; None if the dataset is gone
    unverified: str | None  # why it could not be checked (the publisher is unreachable)


def unverified_notice(root: str) -> str:
    """The text of :data:`caterva2.wire.UNVERIFIED_HEADER` for a dataset of ``root`` (ASCII,
    as a header must be: ``!a`` escapes anything else in a root's name)."""
    return (f"the broker and the publisher of root {root!a} are unreachable; "
            "served from the cache, this may be out of date")


class Freshness:
    """Revalidates datasets with their publishers while there is no broker connection."""

    def __init__(self, broker: Notifier, indexes: IndexSync,
                 interval: float = REVALIDATE_INTERVAL_S):
        self.broker, self.indexes, self.interval = broker, indexes, interval
        self._checked: dict[Key, Checked] = {}
        self._checking: SingleFlight[Checked] = SingleFlight()

    @property
    def needed(self) -> bool:
        """Whether reads must revalidate: the broker's events are not reaching us."""
        return not self.broker.connected.is_set()

    async def revalidate(self, root: str, path: str,
                         entry: DatasetEntry) -> tuple[DatasetEntry, str | None]:
        """``(entry, unverified)`` for a read of the dataset whose index entry is ``entry``.

        The entry to serve is ``entry`` if it is current, or the new one (now in the index)
        if the dataset changed, with ``unverified`` None; or ``entry`` and why it could not
        be checked.  Raises Gone if the dataset no longer exists at its source.
        """
        key = (root, path)
        checked = self._checked.get(key)
        now = asyncio.get_running_loop().time()
        if checked is None or checked.version != entry.version or \
                now - checked.at >= self.interval:
            checked = await self._checking.run(key, lambda: self._check(key, entry))
        if checked.entry is None:
            raise Gone(path)
        return checked.entry, checked.unverified

    async def _check(self, key: Key, entry: DatasetEntry) -> Checked:
        root, path = key
        loop = asyncio.get_running_loop()
        try:
            current = await self.indexes.current_entry(root, path, known=entry,
                                                       timeout=REVALIDATE_TIMEOUT)
        except Gone:
            log.info("%s/%s is gone at its source (the broker is unreachable)", root, path)
            checked = Checked(loop.time(), entry.version, None, None)
        except Unavailable as e:
            log.info("%s/%s served unverified: %s (and the broker is unreachable)",
                     root, path, e)
            checked = Checked(loop.time(), entry.version, entry, unverified_notice(root))
        else:
            if current != entry:
                log.info("%s/%s changed at its source: version %s (the broker is "
                         "unreachable)", root, path, current.version)
                await self.indexes.refresh_entry(root, path, current)
            checked = Checked(loop.time(), current.version, current, None)
        self._checked[key] = checked
        return checked
