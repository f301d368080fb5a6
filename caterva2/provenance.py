"""Where a root comes from: the hops from a re-published root back to its origin.

A publisher of a re-published root (``cat2pub NAME http://HOST:PORT/ROOT``, see
:mod:`caterva2.roots.relayed`) serves root ROOT as the subscriber at HOST:PORT sees it.
That subscriber gets ROOT from some publisher, which may itself re-publish a root of
another site, and so on.  Each step of that chain is a :class:`Hop`, nearest first; a
root published from a directory or an HDF5 file has no hops (it is the origin).

Publishers say who they are with a :func:`publisher_id`, a fingerprint of their own key
(never the key): a relay that finds its own id among its hops would re-publish itself, a
loop, and refuses to start (:func:`check_chain`).
"""
from __future__ import annotations

import hashlib

from pydantic import BaseModel

MAX_HOPS = 16  # longer chains are refused: a loop that formed while pieces restarted


class Hop(BaseModel):
    """One step toward the origin: root ``root`` as the subscriber at ``subscriber`` serves
    it, got from the publisher at ``publisher`` (whose id is ``publisher_id``, if known)."""

    root: str
    subscriber: str
    publisher: str
    publisher_id: str | None = None


class Source(BaseModel):
    """What a subscriber says of a root it knows (``GET /api/source/{root}``): the
    publisher it gets it from, and that publisher's hops to the origin (none if the
    publisher is the origin; None if the publisher could not be asked)."""

    root: str
    publisher: str
    publisher_id: str | None = None
    hops: list[Hop] | None = None


class LoopError(ValueError):
    """A relay would re-publish (through other sites) its own root."""


def publisher_id(key: str) -> str:
    """The public fingerprint of a publisher's private key (16 hex digits)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def chain_through(subscriber: str, source: Source) -> list[Hop]:
    """The hops of a root re-published from the subscriber at ``subscriber``, which says
    ``source`` of it: that subscriber first, then its publisher's own hops."""
    first = Hop(root=source.root, subscriber=subscriber, publisher=source.publisher,
                publisher_id=source.publisher_id)
    return [first, *(source.hops or [])]


def check_chain(own_id: str, name: str, hops: list[Hop]) -> None:
    """LoopError if the publisher ``own_id`` (to publish root ``name``) is among ``hops``,
    or if they are more than MAX_HOPS: it would serve data that it serves itself."""
    for hop in hops:
        if hop.publisher_id == own_id:
            raise LoopError(f"refusing to re-publish as {name!r}: it would be a loop, as "
                            f"{describe(hops)} is this very publisher")
    if len(hops) > MAX_HOPS:
        raise LoopError(f"refusing to re-publish as {name!r}: its source is {len(hops)} "
                        f"hops away (at most {MAX_HOPS}; a loop?)")


def describe(hops: list[Hop]) -> str:
    """The chain in words, nearest hop first."""
    return ", from ".join(f"root {hop.root!r} of the subscriber at {hop.subscriber} "
                          f"(published by {hop.publisher})" for hop in hops)
