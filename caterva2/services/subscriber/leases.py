"""Leases: the replicas an answer in flight uses, which the cache must neither evict nor
close until the answer's last byte is sent (see :mod:`.cache`)."""
from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Iterator
from typing import Protocol

from caterva2.replica import SparseReplica


class Holder(Protocol):
    """What hands replicas out and is told when they are used and let go (the cache)."""

    def hold(self, replica: SparseReplica) -> None: ...

    def release(self, replica: SparseReplica) -> None: ...


class Leases:
    """The replicas one answer was handed (each once), held until :meth:`release`."""

    def __init__(self) -> None:
        self._held: dict[SparseReplica, Holder] = {}
        self._lock = threading.Lock()  # (an answer's threads share it)

    def add(self, cache: Holder, replica: SparseReplica) -> None:
        with self._lock:
            if replica in self._held:
                return
            self._held[replica] = cache
        cache.hold(replica)

    def release(self) -> None:
        with self._lock:
            held, self._held = self._held, {}
        for replica, cache in held.items():
            cache.release(replica)


_LEASES: contextvars.ContextVar[Leases | None] = contextvars.ContextVar("caterva2_leases",
                                                                         default=None)


@contextlib.contextmanager
def leasing() -> Iterator[Leases]:
    """Lease every replica handed out inside the block (threads started from it included,
    as :func:`asyncio.to_thread` copies the context) until the block ends."""
    leases = Leases()
    token = _LEASES.set(leases)
    try:
        yield leases
    finally:
        _LEASES.reset(token)
        leases.release()



def current_leases() -> Leases | None:
    """The leases of the answer being made here, if any."""
    return _LEASES.get()
