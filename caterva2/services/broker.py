"""The broker (``cat2bro``): registry of roots and notification channel.

Publishers register their root (``POST /api/roots``) and post the changes in it
(``POST /api/events``); subscribers read the registry (``GET /api/roots``) and listen to
every event on the WebSocket ``/api/events``.  The registry survives restarts
(``STATEDIR/roots.json``, ``{name: {"name", "http"}}``).

A root name belongs to one publisher at a time: a second publisher of the same name is
refused (409) while the first still serves it, and takes the name over once it does not
(a publisher restarted elsewhere, say).

Its parts: :class:`Registry` (the roots and the name rule), :class:`EventHub` (fan-out to
subscribers), ``router`` (the endpoints); :func:`build_app` puts them on ``app.state``.
``GET /metrics`` and ``GET /health`` tell an operator how it goes
(:mod:`caterva2.services.metrics`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Request,
    WebSocket,
    WebSocketDisconnect,
)

from caterva2 import config
from caterva2.models import ChangeEvent, RootEvent, RootInfo, valid_roots
from caterva2.services.errors import install_error_handlers
from caterva2.services.metrics import BrokerMetrics, mount_observability
from caterva2.services.service import run_service
from caterva2.statefiles import atomic_write, read_json

log = logging.getLogger("caterva2.broker")
QUEUE_LIMIT = 10_000  # events waiting for one slow subscriber before it is dropped
PROBE_TIMEOUT = httpx.Timeout(2, connect=1)  # asking a registered publisher if it is there


class NameTaken(Exception):
    """Another publisher, still serving, holds the root's name."""


class Registry:
    """The registered roots by name, kept in ``roots.json`` in the state directory."""

    def __init__(self, statedir: pathlib.Path):
        self.file = pathlib.Path(statedir) / "roots.json"
        self.roots: dict[str, RootInfo] = valid_roots(read_json(self.file, {}))

    async def register(self, root: RootInfo, client: httpx.AsyncClient) -> None:
        """Register ``root`` (again, if its publisher restarted, maybe elsewhere).

        Raises NameTaken if another address holds the name and its publisher, asked with
        ``client``, still answers that it serves a root of that name.
        """
        current = self.roots.get(root.name)
        if current is not None and current.http != root.http \
                and await still_published(current, client):
            raise NameTaken(f"root {root.name!r} is already published at {current.http}; "
                            "stop that publisher first, or publish under another name")
        if current != root:
            self.roots[root.name] = root
            data = {name: info.model_dump() for name, info in self.roots.items()}
            await asyncio.to_thread(atomic_write, self.file, json.dumps(data, indent=1))
            log.info("root %s registered at %s", root.name, root.http)


async def still_published(root: RootInfo, client: httpx.AsyncClient) -> bool:
    """Whether the publisher registered for ``root`` answers that it serves it."""
    try:
        r = await client.get(f"http://{root.http}/api/root")
        return r.status_code == 200 and r.json().get("name") == root.name
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


class EventHub:
    """Fans events out to every connected subscriber, each with its own bounded queue.

    A subscriber too slow to keep up is disconnected rather than allowed to grow memory
    without bound; it reconnects and re-synchronises by itself.
    """

    def __init__(self) -> None:
        self.queues: set[asyncio.Queue] = set()

    def publish(self, message: str) -> None:
        for queue in list(self.queues):
            if queue.qsize() < QUEUE_LIMIT:
                queue.put_nowait(message)
            else:  # the last slot is for the sentinel that ends the listener
                self.queues.discard(queue)
                queue.put_nowait(None)

    @contextlib.contextmanager
    def listener(self) -> Iterator[asyncio.Queue]:
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LIMIT + 1)
        self.queues.add(queue)
        try:
            yield queue
        finally:
            self.queues.discard(queue)


# ---------------------------------------------------------------------------
# Endpoints
# ---------------------------------------------------------------------------
router = APIRouter()


async def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def _hub(request: Request) -> EventHub:
    return request.app.state.hub


RegistryDep = Annotated[Registry, Depends(_registry)]
HubDep = Annotated[EventHub, Depends(_hub)]


@router.get("/api/roots")
async def get_roots(registry: RegistryDep) -> dict[str, RootInfo]:
    """Every registered root and the address of its publisher."""
    return registry.roots


@router.post("/api/roots")
async def register_root(root: RootInfo, request: Request, registry: RegistryDep,
                        hub: HubDep) -> str:
    """Register a root (again, if its publisher restarted, maybe elsewhere)."""
    try:
        await registry.register(root, request.app.state.client)
    except NameTaken as e:
        raise HTTPException(409, str(e)) from None
    hub.publish(RootEvent(root=root).model_dump_json())
    request.app.state.metrics.registrations.inc()
    return "Ok"


@router.post("/api/events")
async def post_event(event: ChangeEvent, request: Request, hub: HubDep) -> str:
    """Forward a publisher's change event to every subscriber."""
    hub.publish(event.model_dump_json())
    request.app.state.metrics.events.inc()
    return "Ok"


@router.websocket("/api/events")
async def events(websocket: WebSocket) -> None:
    """Send every event to one subscriber until it leaves or the broker stops."""
    await websocket.accept()
    with websocket.app.state.hub.listener() as queue:
        if not await _forward(websocket, queue):
            return
    with contextlib.suppress(RuntimeError):
        await websocket.close(code=1013, reason="too slow; reconnect and resync")


async def _forward(websocket: WebSocket, queue: asyncio.Queue) -> bool:
    """Send the queue's events until the subscriber leaves (False) or the hub drops it for
    being too slow (True)."""
    # Watch the connection too, so a departing subscriber (or a shutting-down server) ends
    # this at once instead of leaving it waiting for events.
    leaving = asyncio.create_task(websocket.receive())
    try:
        while True:
            getter = asyncio.create_task(queue.get())
            await asyncio.wait({getter, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if leaving.done():
                getter.cancel()
                return False
            if (message := getter.result()) is None:
                return True
            await websocket.send_text(message)
    except (WebSocketDisconnect, RuntimeError):
        return False
    finally:
        leaving.cancel()


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------

def build_app(statedir: pathlib.Path,
              probe_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The broker's web application, keeping its registry in ``statedir/roots.json``.

    ``probe_transport`` replaces the network for asking publishers whether they still
    serve their root (tests).
    """
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, transport=probe_transport) as client:
            app.state.client = client
            yield

    app = FastAPI(title="Caterva2 broker", lifespan=lifespan)
    app.state.registry = Registry(statedir)
    app.state.hub = hub = EventHub()
    app.state.metrics = metrics = BrokerMetrics(lambda: len(app.state.registry.roots),
                                                lambda: len(hub.queues))
    install_error_handlers(app)
    app.include_router(router)
    mount_observability(app, metrics.registry, "broker", lambda: {
        "roots": len(app.state.registry.roots), "listeners": len(hub.queues)})
    return app


def main() -> None:
    """``cat2bro``: parse options and serve the broker."""
    def make_app(settings: dict[str, Any]) -> FastAPI:
        return build_app(settings["statedir"])

    run_service("broker", "Caterva2 broker: registry of roots and notifications.",
                {"http": config.BROKER_DEFAULT, "statedir": "_caterva2/bro"}, make_app)


if __name__ == "__main__":
    main()
