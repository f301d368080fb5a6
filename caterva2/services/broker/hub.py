"""The notification channel: every event, fanned out to every connected subscriber.

Subscribers listen on the WebSocket ``/api/events`` of their broker (the only place they
take events from); the broker puts there what registered, authenticated publishers post
(see :mod:`.api`).
"""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

QUEUE_LIMIT = 10_000  # events waiting for one slow subscriber before it is dropped
router = APIRouter()


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
