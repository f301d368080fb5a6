"""The broker (``cat2bro``): registry of roots and notification channel.

Publishers register their root (``POST /api/roots``) and post the changes in it
(``POST /api/events``); subscribers read the registry (``GET /api/roots``) and listen to
every event on the WebSocket ``/api/events``.  The registry survives restarts.

A root name belongs to one publisher at a time: a second publisher of the same name is
refused (409) while the first still serves it, and takes the name over once it does not
(a publisher restarted elsewhere, say).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException, WebSocket, WebSocketDisconnect

from caterva2 import config
from caterva2.models import ChangeEvent, RootEvent, RootInfo, valid_roots
from caterva2.services import common

log = logging.getLogger("caterva2.broker")
QUEUE_LIMIT = 10_000  # events waiting for one slow subscriber before it is dropped
PROBE_TIMEOUT = httpx.Timeout(2, connect=1)  # asking a registered publisher if it is there


class EventHub:
    """Fans events out to every connected subscriber, each with its own bounded queue.

    A subscriber too slow to keep up is disconnected rather than allowed to grow memory
    without bound; it reconnects and re-synchronises by itself.
    """

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue] = set()

    def publish(self, message: str) -> None:
        for queue in list(self.queues):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.queues.discard(queue)
                queue.put_nowait(None)  # never blocks: maxsize excludes this sentinel slot

    @contextlib.contextmanager
    def listener(self):
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LIMIT + 1)
        self.queues.add(queue)
        try:
            yield queue
        finally:
            self.queues.discard(queue)


def build_app(statedir: pathlib.Path) -> FastAPI:
    """The broker's web application, keeping its registry in ``statedir/roots.json``."""
    registry_file = pathlib.Path(statedir) / "roots.json"
    roots: dict[str, RootInfo] = valid_roots(common.read_json(registry_file, {}))
    hub = EventHub()
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT) as client:
            state["client"] = client
            yield

    app = FastAPI(title="Caterva2 broker", lifespan=lifespan)
    common.install_error_handlers(app)

    async def still_published(root: RootInfo) -> bool:
        """Whether the publisher registered for ``root`` answers that it serves it."""
        try:
            r = await state["client"].get(f"http://{root.http}/api/root")
            return r.status_code == 200 and r.json().get("name") == root.name
        except (httpx.HTTPError, ValueError, AttributeError):
            return False

    @app.get("/api/roots")
    async def get_roots() -> dict[str, RootInfo]:
        """Every registered root and the address of its publisher."""
        return roots

    @app.post("/api/roots")
    async def register_root(root: RootInfo) -> str:
        """Register a root (again, if its publisher restarted, maybe elsewhere)."""
        current = roots.get(root.name)
        if current is not None and current.http != root.http and await still_published(current):
            raise HTTPException(409, f"root {root.name!r} is already published at "
                                     f"{current.http}; stop that publisher first, or publish "
                                     "under another name")
        if current != root:
            roots[root.name] = root
            data = {name: info.model_dump() for name, info in roots.items()}
            await asyncio.to_thread(common.atomic_write, registry_file,
                                    json.dumps(data, indent=1))
            log.info("root %s registered at %s", root.name, root.http)
        hub.publish(RootEvent(root=root).model_dump_json())
        return "Ok"

    @app.post("/api/events")
    async def post_event(event: ChangeEvent) -> str:
        """Forward a publisher's change event to every subscriber."""
        hub.publish(event.model_dump_json())
        return "Ok"

    @app.websocket("/api/events")
    async def events(websocket: WebSocket) -> None:
        """Send every event to one subscriber until it leaves or the broker stops."""
        await websocket.accept()
        with hub.listener() as queue:
            # Watch the connection too, so a departing subscriber (or a shutting-down
            # server) ends this handler at once instead of leaving it waiting for events.
            leaving = asyncio.create_task(websocket.receive())
            try:
                while True:
                    getter = asyncio.create_task(queue.get())
                    await asyncio.wait({getter, leaving}, return_when=asyncio.FIRST_COMPLETED)
                    if leaving.done():
                        getter.cancel()
                        return
                    if (message := getter.result()) is None:
                        break  # too slow: dropped by the hub
                    await websocket.send_text(message)
            except (WebSocketDisconnect, RuntimeError):
                return
            finally:
                leaving.cancel()
        with contextlib.suppress(RuntimeError):
            await websocket.close(code=1013, reason="too slow; reconnect and resync")

    return app


def main() -> None:
    def make_app(settings: dict[str, Any]) -> FastAPI:
        return build_app(settings["statedir"])

    common.run_service("broker", "Caterva2 broker: registry of roots and notifications.",
                       {"http": config.BROKER_DEFAULT, "statedir": "_caterva2/bro"}, make_app)


if __name__ == "__main__":
    main()
