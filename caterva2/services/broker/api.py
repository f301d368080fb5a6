"""The broker's HTTP endpoints: the listing of roots, registrations and events."""
from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response

from caterva2.models import (
    NOTIFICATIONS_HEADER,
    ChangeEvent,
    ListedRoot,
    Notifications,
    RootEvent,
    RootInfo,
)
from caterva2.services.openapi import errors

from .auth import PublisherKey
from .bindings import Binding, Bindings
from .hub import EventHub
from .registry import NameTaken, Registry, RegistryFull

router = APIRouter()


async def _registry(request: Request) -> Registry:
    return request.app.state.registry


async def _hub(request: Request) -> EventHub:
    return request.app.state.hub


async def _bindings(request: Request) -> Bindings:
    return request.app.state.bindings


RegistryDep = Annotated[Registry, Depends(_registry)]
HubDep = Annotated[EventHub, Depends(_hub)]
BindingsDep = Annotated[Bindings, Depends(_bindings)]


@router.get("/api/roots")
async def get_roots(registry: RegistryDep, request: Request,
                    response: Response) -> dict[str, ListedRoot]:
    """Every listed root, the address of its publisher, and whether that publisher
    answered lately (``reachable``); where notifications go in the
    ``Caterva2-Notifications`` header (as ``GET /api/notifications`` says it)."""
    response.headers[NOTIFICATIONS_HEADER] = notifications(request).model_dump_json()
    return registry.listing()


@router.post("/api/roots", responses=errors(401, 409, 413, 507))
async def register_root(root: RootInfo, key: PublisherKey, request: Request,
                        response: Response, registry: RegistryDep, bindings: BindingsDep,
                        hub: HubDep) -> str:
    """Register a root (again, if its publisher restarted, maybe elsewhere).

    The name is bound to the publisher key that first registers it: 409 for any other
    key, until the broker's operator releases the name.  The answer says, in its
    ``Caterva2-Notifications`` header, where the publisher announces changes (as
    ``GET /api/notifications`` does).
    """
    if registry.full(root.name):
        raise HTTPException(507, "this broker lists as many roots as it may; ask its "
                                 "operator")
    holder = await asyncio.to_thread(bindings.claim, root.name, key, root.http)
    if holder is not None:
        raise HTTPException(409, taken(root.name, holder))
    try:
        changed = await registry.register(root, request.app.state.client)
    except NameTaken as e:
        raise HTTPException(409, str(e)) from None
    except RegistryFull as e:
        raise HTTPException(507, str(e)) from None
    if request.app.state.nats is None:
        hub.publish(RootEvent(root=root).model_dump_json())
    elif changed:  # (on NATS, only news: the stream keeps every announcement)
        request.app.state.nats.announce(root)
    response.headers[NOTIFICATIONS_HEADER] = notifications(request).model_dump_json()
    request.app.state.metrics.registrations.inc()
    return "Ok"


@router.get("/api/notifications")
async def get_notifications(request: Request) -> Notifications:
    """Which way the deployment's notifications go: through this broker (``engine``
    ``"broker"``: events posted here, read on the WebSocket ``/api/events``) or on NATS
    JetStream (``"nats"``: its servers, stream and deployment)."""
    return notifications(request)


def notifications(request: Request) -> Notifications:
    nats = request.app.state.nats
    return Notifications() if nats is None else nats.options.notifications()


def taken(name: str, holder: Binding) -> str:
    """Why a root name cannot be had, and what to do."""
    return (f"root name {name!r} belongs to another publisher (first registered from "
            f"{holder.address} on {holder.bound_at}); publish under another name, or, if "
            "that publisher is gone for good, have the broker's operator release the name: "
            f"cat2admin --statedir BROKER_STATEDIR release {name}")


@router.post("/api/events", responses=errors(401, 403, 413))
async def post_event(event: ChangeEvent, key: PublisherKey, request: Request,
                     registry: RegistryDep, bindings: BindingsDep, hub: HubDep) -> str:
    """Forward a publisher's change event to every subscriber: only from the publisher
    the root's name is bound to (403 from any other).  On NATS, publishers announce
    changes there instead; what is posted here goes to the WebSocket all the same."""
    holder = await asyncio.to_thread(bindings.get, event.root)
    if holder is None or not holder.holds(key):
        raise HTTPException(403, f"only the publisher of root {event.root!r} may announce "
                                 "changes in it, and this is not it")
    await registry.seen(event.root)
    hub.publish(event.model_dump_json())
    request.app.state.metrics.events.inc()
    return "Ok"
