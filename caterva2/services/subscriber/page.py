"""A page for browsers at ``/``: the roots and the datasets of subscribed ones."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import html

import httpx
from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from caterva2.services.subscriber.api import visible
from caterva2.services.subscriber.deps import Sub

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
async def home(sub: Sub) -> str:
    rows = []
    with contextlib.suppress(httpx.HTTPError):  # (the roots known are shown all the same)
        await sub.broker.refresh_roots()
    for name in sorted(filter(functools.partial(visible, sub), sub.registry.known)):
        root = html.escape(name)
        unreachable = " (unreachable)" if name in sub.registry.unreachable else ""
        if name in sub.registry.subscribed:
            index = await asyncio.to_thread(sub.cache.index, name) or {}
            items = "".join(f'<li><a href="/api/info/{root}/{html.escape(p)}">'
                            f"{root}/{html.escape(p)}</a></li>" for p in sorted(index))
            rows.append(f"<h2>{root} (subscribed){unreachable}</h2><ul>{items}</ul>")
        else:
            rows.append(f"<h2>{root}{unreachable}</h2><p>not subscribed: "
                        f"<code>cat2cli subscribe {root}</code></p>")
    body = "".join(rows) or "<p>No roots yet: start a publisher.</p>"
    return (f"<!doctype html><title>Caterva2 subscriber</title><h1>Caterva2 subscriber</h1>"
            f"{body}<p><a href='/docs'>REST API</a></p>")
