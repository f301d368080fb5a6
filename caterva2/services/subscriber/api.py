"""The subscriber's metadata endpoints: roots, subscriptions, listings, URLs, info; the
cache's figures."""
from __future__ import annotations

import asyncio
import urllib.parse
from typing import Any

import httpx
from fastapi import APIRouter, HTTPException, Response

from caterva2 import paths, tls
from caterva2.models import user_info
from caterva2.services.openapi import ROOT_ACCESS, UNVERIFIED, described, errors
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.errors import Unavailable
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import lookup, subscribed_root

router = APIRouter()
# (a dataset's lookup may ask its publisher, and note the answer in the index)
LOOKUP_ERRORS = errors(400, 404, 503, 507) | ROOT_ACCESS


@router.get("/api/roots", responses=errors(503))
async def get_roots(sub: Sub) -> dict[str, dict[str, Any]]:
    """Every root the broker knows: ``{name: {"name", "http", "subscribed",
    "reachable"}}`` (``reachable`` is false once the broker says that the root's publisher
    has not answered for a while, or no longer lists a subscribed root)."""
    try:
        await sub.broker.refresh_roots()
    except httpx.HTTPError as e:  # known roots are still worth listing; none is not
        if not sub.registry.known:
            raise HTTPException(503, f"the broker at {sub.broker.broker} is unreachable "
                                     f"({type(e).__name__}); no roots known yet") from None
    return {name: {"name": name, "http": info.http,
                   "subscribed": name in sub.registry.subscribed,
                   "reachable": name not in sub.registry.unreachable}
            for name, info in sorted(sub.registry.known.items()) if visible(sub, name)}


def visible(sub: Subscriber, root: str) -> bool:
    """Whether the user may see ``root`` listed: it may read or subscribe to it."""
    return sub.access.may("read", root) or sub.access.may("subscribe", root)


@router.post("/api/subscribe/{root}", responses=errors(400, 404, 503, 507) | ROOT_ACCESS)
async def subscribe(root: str, sub: Sub) -> str:
    """Follow a root: its metadata is fetched now, its data when clients read it."""
    await subscribed_now(sub, root)
    return "Ok"


async def subscribed_now(sub: Subscriber, root: str) -> None:
    """Subscribe to ``root`` if the user may (HTTPException saying why not)."""
    try:
        paths.check_root_name(root)
        sub.access.check("subscribe", root)
        await sub.subscribe(root)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    except KeyError:
        raise HTTPException(404, f"no root named {root!r}") from None
    except Unavailable as e:
        raise HTTPException(503, str(e)) from None


@router.post("/api/unsubscribe/{root}", responses=errors(400, 404, 507) | ROOT_ACCESS)
async def unsubscribe(root: str, sub: Sub) -> str:
    """Stop following a root, and drop its cached data and metadata; 404 if it is not
    subscribed.  Who may subscribe to a root may unsubscribe from it."""
    try:
        paths.check_root_name(root)
        sub.access.check("subscribe", root)
        await sub.unsubscribe(root)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None
    except KeyError:
        raise HTTPException(404, f"root {root!r} is not subscribed" if root in
                            sub.registry.known else f"no root named {root!r}") from None
    return "Ok"


@router.get("/api/list/{root}", responses=errors(400, 404) | ROOT_ACCESS)
async def get_list(root: str, sub: Sub) -> list[str]:
    """Dataset paths of a subscribed root, relative to it."""
    subscribed_root(sub, root)
    index = await asyncio.to_thread(sub.cache.index, root)
    return sorted(index or {})


@router.get("/api/url/{root}", responses=errors(404) | ROOT_ACCESS)
async def get_root_url(root: str, sub: Sub) -> list[str]:
    """Where the root's publisher serves it."""
    sub.access.check("read", root)
    if root not in sub.registry.known:
        raise HTTPException(404, f"no root named {root!r}")
    return [tls.base_url(sub.registry.known[root].http)]


@router.get("/api/url/{root}/{path:path}", responses=LOOKUP_ERRORS)
async def get_dataset_url(root: str, path: str, sub: Sub) -> list[str]:
    """Where the root's publisher serves the dataset's file."""
    await lookup(sub, root, path)
    return [f"{tls.base_url(sub.registry.publisher(root))}/api/download/"
            f"{urllib.parse.quote(path)}"]


@router.get("/api/info/{root}/{path:path}",
            responses=LOOKUP_ERRORS | {200: {"headers": described(UNVERIFIED)}})
async def get_info(root: str, path: str, sub: Sub, response: Response) -> dict[str, Any]:
    """The dataset's metadata (sizes at its source)."""
    found = await lookup(sub, root, path)
    response.headers.update(found.headers)
    return user_info(found.meta)


@router.get("/api/cache")
async def get_cache(sub: Sub) -> dict[str, Any]:
    """The cache's figures since the subscriber started: ``usage`` and ``limit`` in bytes
    (``limit`` null: unlimited), chunk ``hits`` and ``misses``, ``evictions`` and
    ``evicted_bytes``, ``digest_mismatches``, ``bytes_in`` (from publishers) and
    ``bytes_out`` (to clients), and the same per root in ``roots``."""
    return await asyncio.to_thread(sub.metrics.summary)
