"""The subscriber's events from NATS JetStream, for a deployment whose broker runs with
``--nats`` (see :mod:`caterva2.services.nats_bus`).

Every event of the deployment is read, in order, from its stream (an ordered consumer:
NATS re-creates it by itself from the last sequence seen when a server fails).  The last
stream sequence applied is kept in ``STATEDIR/nats-position.json``
(``{"stream": ..., "seq": N}``), so that a subscriber that was away reads on from there,
applying only what happened meanwhile, instead of reading every subscribed root's index
again.  It reads every index again (as without NATS, on each reconnection to the broker)
only when it cannot know what it missed: at its first start on NATS, when the stream no
longer holds the next sequence it needs (it was away too long, or the stream was purged),
or when the stream was made anew.

A message is applied only if its subject is the one of its kind and root
(:func:`~caterva2.services.nats_bus.event_from_message`): NATS's permissions decide who may
publish on which subject, so a publisher cannot announce changes in another's root.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from caterva2.models import ChangeEvent, Notifications, RootEvent
from caterva2.services import nats_bus
from caterva2.services.subscriber.broker_link import BrokerLink
from caterva2.statefiles import atomic_write, read_json

log = logging.getLogger("caterva2.subscriber")
POSITION_FILE = "nats-position.json"
HEARTBEAT_S = 1.0  # the consumer is re-created after two heartbeats missed (a server lost)
CATCH_UP_WAIT_S = 10  # at most this long, reads check with publishers while a backlog is read


class Position:
    """The last stream sequence applied, in a file of the state directory."""

    def __init__(self, statedir: pathlib.Path, stream: str):
        self.file, self.stream = pathlib.Path(statedir) / POSITION_FILE, stream
        data = read_json(self.file, {})
        seq = data.get("seq") if isinstance(data, dict) and data.get("stream") == stream \
            else None
        self.seq: int | None = seq if isinstance(seq, int) and seq >= 0 else None

    async def save(self, seq: int) -> None:
        self.seq = seq
        # (not durable: a position lost in a power cut costs one resync, not data)
        await asyncio.to_thread(atomic_write, self.file,
                                f'{{"stream": "{self.stream}", "seq": {seq}}}', False)


class NatsLink:
    """Reads the deployment's events from NATS, resuming where it left off."""

    def __init__(self, plan: Notifications, credentials: tuple[str, str] | None,
                 statedir: pathlib.Path, broker: BrokerLink, connected: asyncio.Event,
                 on_resync: Callable[[], None] | None = None):
        assert plan.deployment is not None and plan.stream is not None
        self.plan, self.credentials, self.broker = plan, credentials, broker
        self.deployment, self.stream = plan.deployment, plan.stream
        self.position = Position(statedir, self.stream)
        self.connected = connected
        self.on_resync = on_resync or (lambda: None)
        self._js: Any = None  # (while listening)
        self._nc: Any = None
        self._catching_up: asyncio.Task | None = None

    async def listen(self, on_catch_up: Callable[[], Awaitable[None]],
                     on_event: Callable[[RootEvent | ChangeEvent], Awaitable[None]]) -> None:
        """Apply every event forever (``on_event``); ``on_catch_up()`` reads every
        subscribed root's index again, when what was missed cannot be known."""
        nc = await nats_bus.connect(self.plan.servers, self.credentials,
                                    "caterva2 subscriber", self._disconnected,
                                    self._reconnected)
        self._nc = nc
        try:
            js = nc.jetstream()
            queue: asyncio.Queue = asyncio.Queue()
            start = await self._start(js, on_catch_up)
            await self._subscribe(js, queue, start)
            with contextlib.suppress(httpx.HTTPError):  # (the broker need not be up)
                await self.broker.refresh_roots()
            log.info("reading events from stream %s on NATS from sequence %d", self.stream,
                     start)
            self._js = js
            self._mark_connected_when_caught_up()
            while True:
                await self._apply(await queue.get(), on_catch_up, on_event)
        finally:
            self._js = self._nc = None
            if self._catching_up is not None:
                self._catching_up.cancel()
            self.connected.clear()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 3)

    async def _start(self, js: Any, on_catch_up: Callable[[], Awaitable[None]]) -> int:
        """The first sequence to read, after a resync if what was missed is not known."""
        while True:
            try:
                state = (await js.stream_info(self.stream)).state
                break
            except nats_bus.nats_errors() as e:
                log.warning("stream %s not readable yet (%s: %s); trying again",
                            self.stream, type(e).__name__, e)
                await asyncio.sleep(1)
        seen = self.position.seq
        if seen is not None and state.first_seq - 1 <= seen <= state.last_seq:
            return seen + 1
        log.log(logging.INFO if seen is None else logging.WARNING,
                "reading every subscribed root's index again: %s",
                "first start on NATS" if seen is None else
                f"the stream no longer holds sequence {seen + 1}" if seen <
                state.first_seq - 1 else "the stream was made anew")
        await self._catch_up(on_catch_up)
        await self.position.save(state.last_seq)
        return state.last_seq + 1

    async def _subscribe(self, js: Any, queue: asyncio.Queue, start: int) -> None:
        from nats.js import api

        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=start)
        while True:
            try:
                await js.subscribe(nats_bus.all_subjects(self.deployment), stream=self.stream,
                                   cb=queue.put, ordered_consumer=True,
                                   idle_heartbeat=HEARTBEAT_S, config=config)
                return
            except nats_bus.nats_errors() as e:
                log.warning("cannot read stream %s yet (%s: %s); trying again", self.stream,
                            type(e).__name__, e)
                await asyncio.sleep(1)

    async def _apply(self, msg: Any, on_catch_up: Callable[[], Awaitable[None]],
                     on_event: Callable[[RootEvent | ChangeEvent], Awaitable[None]]) -> None:
        seq = msg.metadata.sequence.stream
        seen = self.position.seq or 0
        if seq <= seen:
            return  # (delivered again after the consumer was re-created)
        if seq > seen + 1:  # (every sequence of the stream is ours: these were dropped)
            log.warning("events %d to %d are no longer in the stream: reading every "
                        "subscribed root's index again", seen + 1, seq - 1)
            await self._catch_up(on_catch_up)
        try:
            event = nats_bus.event_from_message(self.deployment, msg.subject, msg.data)
        except ValueError as e:
            log.warning("ignoring event %d: %s", seq, e)
        else:
            await on_event(event)
        await self.position.save(seq)

    async def _catch_up(self, on_catch_up: Callable[[], Awaitable[None]]) -> None:
        self.on_resync()
        with contextlib.suppress(httpx.HTTPError):
            await self.broker.refresh_roots()
        await on_catch_up()

    async def _disconnected(self) -> None:
        self.connected.clear()
        log.warning("NATS connection lost: reads check their datasets with publishers "
                    "until it is back")

    async def _reconnected(self) -> None:
        log.warning("NATS connection back")
        self._mark_connected_when_caught_up()

    def _mark_connected_when_caught_up(self) -> None:
        """Set :attr:`connected` once the events the stream held when asked are applied
        (until then, reads check their datasets with publishers: no stale answer while
        a backlog is read)."""
        if self._js is None:
            return
        if self._catching_up is not None:
            self._catching_up.cancel()
        self._catching_up = asyncio.create_task(self._connected_when_caught_up(self._js))

    async def _connected_when_caught_up(self, js: Any) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_WAIT_S
        last = None
        while last is None and loop.time() < deadline:
            try:
                last = (await js.stream_info(self.stream)).state.last_seq
            except nats_bus.nats_errors():
                await asyncio.sleep(0.2)
        while last is not None and (self.position.seq or 0) < last \
                and loop.time() < deadline:
            await asyncio.sleep(0.02)
        # (past the deadline, events flow all the same: the consumer is re-created by
        # then if it was lost, and reads stop asking publishers)
        if self._nc is not None and self._nc.is_connected:
            self.connected.set()
