"""The broker (``cat2bro``): registry of roots and notification channel.

Publishers register their root (``POST /api/roots``) and post the changes in it
(``POST /api/events``); subscribers read the registry (``GET /api/roots``) and listen to
every event on the WebSocket ``/api/events``.

Who may write (:mod:`.auth`, :mod:`.bindings`): publishers present the broker's token, if
it was started with one (``CATERVA2_BROKER_TOKEN``, or ``token`` in ``[broker]``), and a
key of their own.  A root name is bound to the key that first registered it: no other
publisher may take it over, even while its own is down, until an operator releases it
(``cat2admin --statedir BROKER_STATEDIR release NAME``); events for a root are taken from
its publisher only.  Requests are limited to :data:`MAX_HEAD` bytes of URL and headers
and :data:`MAX_BODY` bytes of body, names, paths and events to the bounds of
:mod:`caterva2.models`, publisher addresses to ``HOST:PORT`` (:func:`caterva2.paths.check_address`).

With ``--nats nats://HOST:PORT[,...]`` (``nats`` in ``[broker]``), notifications go on NATS
JetStream instead of the WebSocket: publishers announce changes there themselves, and the
broker keeps the deployment's stream and announces roots (:mod:`.nats_roots`,
:mod:`caterva2.services.nats_bus`); ``GET /api/notifications`` tells publishers and
subscribers which way notifications go.

Roots whose publishers stop answering are listed as unreachable after
``--unreachable-after`` (``unreachable_after`` in ``[broker]``, default 90s) and dropped
from the listing after ``--drop-after`` (``drop_after``, default 1d) (:mod:`.registry`).

State: ``STATEDIR/roots.json`` (the listing, see :mod:`.registry`) and
``STATEDIR/bindings.json`` (names and the digests of their publishers' keys, see
:mod:`.bindings`).  ``GET /metrics`` and ``GET /health`` tell an operator how it goes
(:mod:`caterva2.services.metrics`).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from caterva2 import config, tls
from caterva2.services import nats_bus
from caterva2.services.errors import install_error_handlers
from caterva2.services.limits import BodyLimit
from caterva2.services.metrics import BrokerMetrics, mount_observability
from caterva2.services.openapi import PUBLISHERS, document
from caterva2.services.service import run_service

from . import api, hub
from .bindings import Bindings
from .hub import QUEUE_LIMIT, EventHub
from .nats_roots import NatsOptions, NatsRoots
from .registry import Liveness, Registry

__all__ = ["QUEUE_LIMIT", "BrokerOptions", "EventHub", "Liveness", "build_app", "main"]

log = logging.getLogger("caterva2.broker")
PROBE_TIMEOUT = httpx.Timeout(2, connect=1)  # asking a registered publisher if it is there
# A request body: a registration, or an event of at most MAX_EVENT_PATHS paths of at most
# MAX_PATH_LENGTH characters (about 1.3 MB at worst).
MAX_BODY = 2 * 2**20
# The request line and headers: h11 holds them to at most MAX_HEAD bytes (a 431, or a 400,
# otherwise), where httptools, faster for the other services' large answers, keeps what
# it is sent.  The broker sends no data, so speed matters less than its memory.
MAX_HEAD = 64 * 2**10
SERVER_OPTIONS = {"http": "h11", "h11_max_incomplete_event_size": MAX_HEAD}


@dataclass(frozen=True)
class BrokerOptions:
    """How a broker treats publishers: the ``token`` it requires of them (None: open to
    all) and when a silent one's root is listed as unreachable, or dropped; and where
    notifications go (``nats``: on NATS; None: through this broker)."""

    token: str | None = None
    liveness: Liveness = field(default_factory=Liveness)
    nats: NatsOptions | None = None


def build_app(statedir: pathlib.Path, options: BrokerOptions = BrokerOptions(),
              probe_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The broker's web application, keeping its state in ``statedir``.

    ``probe_transport`` replaces the network for asking publishers whether they still
    serve their root (tests).  ValueError if the bindings file cannot be read (rather
    than take it for no bindings, which would free every name).
    """
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, transport=probe_transport,
                                     verify=tls.client_context()) as client:
            app.state.client = client
            async with _running(app.state.registry.watch(client)):
                if app.state.nats is None:
                    yield
                else:
                    async with _running(app.state.nats.run()):
                        yield

    app = FastAPI(title="Caterva2 broker", lifespan=lifespan)
    app.state.token = options.token
    app.state.bindings = Bindings(statedir, create=True)
    app.state.registry = registry = Registry(statedir, options.liveness)
    app.state.hub = events = EventHub()
    app.state.nats = NatsRoots(options.nats) if options.nats is not None else None
    app.state.metrics = metrics = BrokerMetrics(lambda: len(registry.roots),
                                                lambda: len(events.queues))
    install_error_handlers(app)
    document(app, security=PUBLISHERS)
    app.include_router(api.router)
    app.include_router(hub.router)
    mount_observability(app, metrics.registry, "broker", lambda: {
        "roots": len(registry.roots), "listeners": len(events.queues),
        "open": options.token is None, **_nats_health(app.state.nats)})
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)
    return app


def _nats_health(nats: NatsRoots | None) -> dict[str, Any]:
    if nats is None:
        return {"notifications": "broker"}
    return {"notifications": "nats", "nats_connected": nats.connected.is_set(),
            "nats_pending": len(nats.pending)}


@contextlib.asynccontextmanager
async def _running(coroutine):
    """Run ``coroutine`` as a task while in the block."""
    task = asyncio.create_task(coroutine)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def options_from(settings: dict[str, Any]) -> BrokerOptions:
    """The broker's options from its settings (ConfigError for bad values)."""
    liveness = Liveness(
        config.parse_duration(settings.get("unreachable_after", "90s"), "unreachable_after"),
        config.parse_duration(settings.get("drop_after", "1d"), "drop_after"))
    if liveness.drop_after < liveness.unreachable_after:
        raise config.ConfigError("drop_after must be at least unreachable_after")
    return BrokerOptions(config.broker_token(settings.get("token")), liveness,
                         nats_options(settings))


def nats_options(settings: dict[str, Any]) -> NatsOptions | None:
    """Where notifications go, from ``nats``, ``nats_deployment`` and ``nats_credentials``
    (None: through the broker, without NATS)."""
    if not settings.get("nats"):
        return None
    return NatsOptions(
        tuple(nats_bus.parse_servers(settings["nats"])),
        nats_bus.check_deployment(settings.get("nats_deployment",
                                               nats_bus.DEFAULT_DEPLOYMENT)),
        nats_bus.credentials(settings.get("nats_credentials")))


def start_line(options: BrokerOptions) -> str:
    """What the broker says when it starts: whether publishers need its token."""
    if options.token is None:
        return f"open to all publishers (no token; set {config.BROKER_TOKEN_ENV} to require one)"
    return "publishers must present the broker token"


def nats_line(options: NatsOptions) -> str:
    """What the broker says when it starts on NATS: where, and on which subjects."""
    return (f"notifications on NATS at {','.join(options.servers)}: stream "
            f"{nats_bus.stream_name(options.deployment)} ({options.replicas} "
            f"replica{'s' if options.replicas > 1 else ''}), subjects "
            f"{nats_bus.all_subjects(options.deployment)}"
            + ("" if options.credentials else " (no NATS credentials given)"))


def main() -> None:
    """``cat2bro``: parse options and serve the broker."""
    def add_arguments(parser) -> None:
        parser.add_argument("--unreachable-after", metavar="TIME",
                            help="list a root as unreachable once its publisher has not "
                                 "answered for TIME, e.g. 90s, 15m (default: 90s)")
        parser.add_argument("--drop-after", metavar="TIME",
                            help="stop listing it after TIME, e.g. 12h, 7d (default: 1d); "
                                 "its name stays its publisher's")
        parser.add_argument("--nats", metavar="URLS",
                            help="carry notifications on NATS JetStream at "
                                 "nats://HOST:PORT[,nats://HOST:PORT...] (all the servers "
                                 "of a cluster) instead of this broker's WebSocket")

    def make_app(settings: dict[str, Any]) -> FastAPI:
        options = options_from(settings)
        line = start_line(options)
        print(f"cat2bro: {line}", file=sys.stderr, flush=True)
        if options.nats is not None:
            print(f"cat2bro: {nats_line(options.nats)}", file=sys.stderr, flush=True)
            log.info("%s", nats_line(options.nats))
        log.info("%s; roots unreachable after %s, dropped after %s", line,
                 config.format_duration(options.liveness.unreachable_after),
                 config.format_duration(options.liveness.drop_after))
        return build_app(settings["statedir"], options)

    run_service("broker", "Caterva2 broker: registry of roots and notifications.",
                {"http": config.BROKER_DEFAULT, "statedir": "_caterva2/bro"}, make_app,
                add_arguments, **SERVER_OPTIONS)
