"""The roots page (``/``): every root the user may see, a Subscribe button, and a search
over the dataset names of each subscribed root.

- ``GET /``: the page;
- ``GET /web/search/{root}?q=TEXT&page=N``: one page of the datasets whose names hold
  TEXT (case-insensitive), as a fragment;
- ``POST /web/subscribe/{root}``: subscribe, and answer the root's card as a fragment (a
  browser without scripts is sent back to ``/``).

Searches are filtered and paged on the server: a root of 10,000 datasets sends
:data:`PAGE_SIZE` rows at a time.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from caterva2.services.subscriber.api import subscribed_now, visible
from caterva2.services.subscriber.deps import Sub
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.reads import subscribed_root
from caterva2.services.subscriber.web.templating import WebRoute, is_htmx, render

router = APIRouter(include_in_schema=False, route_class=WebRoute)
PAGE_SIZE = 50  # datasets listed per page of a search
MAX_QUERY = 200  # characters of a search, at most


@dataclass(frozen=True)
class RootCard:
    """What the roots page says of one root."""

    name: str
    http: str
    subscribed: bool
    reachable: bool
    may_subscribe: bool


@dataclass(frozen=True)
class SearchPage:
    """One page of a search over a root's dataset names."""

    root: str
    query: str
    page: int
    total: int  # datasets matching
    names: list[str]

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // PAGE_SIZE))


def card(sub: Subscriber, name: str) -> RootCard:
    return RootCard(name, sub.registry.known[name].http, name in sub.registry.subscribed,
                    name not in sub.registry.unreachable, sub.access.may("subscribe", name))


async def search(sub: Subscriber, root: str, query: str = "", page: int = 0) -> SearchPage:
    """Page ``page`` of the datasets of ``root`` whose names hold ``query``."""
    if len(query) > MAX_QUERY:
        raise HTTPException(400, f"a search is at most {MAX_QUERY} characters long")
    if page < 0:
        raise HTTPException(400, "page must be 0 or more")
    subscribed_root(sub, root)
    index = sub.cache.loaded_index(root)
    if index is None:
        index = await asyncio.to_thread(sub.cache.index, root) or {}
    wanted = query.strip().lower()
    matches = sorted(p for p in index if wanted in p.lower()) if wanted else sorted(index)
    start = page * PAGE_SIZE
    return SearchPage(root, query, page, len(matches), matches[start:start + PAGE_SIZE])


@router.get("/")
async def roots_page(request: Request, sub: Sub) -> Response:
    with contextlib.suppress(httpx.HTTPError):  # (the roots known are shown all the same)
        await sub.broker.refresh_roots()
    names = sorted(n for n in sub.registry.known if visible(sub, n))
    cards = [card(sub, n) for n in names]
    searches = {c.name: await search(sub, c.name) for c in cards
                if c.subscribed and sub.access.may("read", c.name)}
    return render(request, "roots.html", cards=cards, searches=searches)


@router.get("/web/search/{root}")
async def search_fragment(request: Request, root: str, sub: Sub, q: str = "",
                          page: int = 0) -> Response:
    return render(request, "_search.html", s=await search(sub, root, q, page))


@router.post("/web/subscribe/{root}")
async def subscribe(request: Request, root: str, sub: Sub) -> Response:
    """Subscribe; for htmx, the root's card again (saying why, if it failed)."""
    try:
        await subscribed_now(sub, root)
    except HTTPException as e:
        if not is_htmx(request) or root not in sub.registry.known:
            raise
        return render(request, "_root.html", status_code=e.status_code, c=card(sub, root),
                      s=None, failed=e.detail)
    if not is_htmx(request):
        return RedirectResponse("/", status_code=303)
    c = card(sub, root)
    s = await search(sub, root) if sub.access.may("read", root) else None
    return render(request, "_root.html", c=c, s=s)


