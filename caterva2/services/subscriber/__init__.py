"""The subscriber (``cat2sub``): follows roots, caches chunks on demand, serves clients.

REST API (dataset paths always include the root):

- ``GET /api/roots``, ``POST /api/subscribe/{root}``, ``POST /api/unsubscribe/{root}``,
  ``GET /api/list/{root}``, ``GET /api/url/{root}[/{path}]``,
  ``GET /api/info/{root}/{path}`` (:mod:`.api`);
- ``GET /api/fetch/{root}/{path}?slice_=...``, ``GET /api/chunk/{root}/{path}?nchunk=N``,
  ``GET /api/download/{root}/{path}``, ``GET /files/{root}/{path}`` (:mod:`.data_api`;
  what each generation of clients sends and expects: :mod:`.compat`);
- ``GET /api/cache``: the cache's figures as JSON (:mod:`.api`, ``cat2cli cache``);
- ``GET /api/relay/{root}/...``: a subscribed root served onward to relay publishers,
  and ``GET /api/source/{root}``: where a root comes from (:mod:`.relay_api`);
- ``GET /``, ``/roots/{root}/{path}``: the web interface for browsers (:mod:`.web`);
- ``GET /metrics``, ``GET /health``: for operators (:mod:`caterva2.services.metrics`).

Its parts (:class:`.node.Subscriber`): the roots it knows and follows (:mod:`.registry`),
its link to the broker (:mod:`.broker_link`), the indexes of subscribed roots
(:mod:`.index_sync`), their revalidation while the broker is away (:mod:`.freshness`), the
cache (:mod:`.cache`), and the chunk fetcher (:mod:`.chunk_fetcher`); :mod:`.reads` finds
datasets and chunks for the endpoints.
"""
from __future__ import annotations

import contextlib
import logging
import pathlib
import sys
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from caterva2 import config, tls
from caterva2.services import service
from caterva2.services.errors import install_error_handlers
from caterva2.services.metrics import SubscriberMetrics, mount_observability
from caterva2.services.openapi import LOGIN, USERS, document
from caterva2.services.subscriber import api, data_api, relay_api, web
from caterva2.services.subscriber.access import Access, AccessRules, RequireLogin
from caterva2.services.subscriber.leases import leasing
from caterva2.services.subscriber.node import Subscriber, SubscriberSettings
from caterva2.services.subscriber.notifications import SubscriberNats
from caterva2.services.subscriber.worker_link import OwnerReports
from caterva2.services.subscriber.workers import Fronts, parse_workers

__all__ = ["Subscriber", "SubscriberSettings", "build_app", "main"]

UPSTREAM_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=32)
UPSTREAM_TIMEOUT = httpx.Timeout(30, connect=3)


def build_app(settings: SubscriberSettings, fronts: Fronts | None = None) -> FastAPI:
    """The subscriber's web application; its parts live on ``app.state.subscriber`` while
    it runs (one shared HTTP client to the broker and publishers).  With ``fronts`` (``cat2sub
    --workers N``, N > 1), it is the owner worker, and its front workers run while it does
    (see :mod:`.workers`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, limits=UPSTREAM_LIMITS,
                                     verify=tls.client_context()) as client:
            async with Subscriber(settings, client, metrics, access).running() as subscriber:
                app.state.subscriber = subscriber
                if fronts is None:
                    yield
                    return
                async with fronts.running(subscriber, requests):
                    yield

    def health() -> dict[str, Any]:
        subscriber: Subscriber | None = getattr(app.state, "subscriber", None)
        connected = subscriber is not None and subscriber.notifier.connected.is_set()
        engine = subscriber.notifier.engine if subscriber is not None else "broker"
        # (broker_connected: whether events reach this subscriber, as before NATS)
        return {"broker": settings.broker, "broker_connected": connected,
                "notifications": engine}

    metrics = SubscriberMetrics()
    access = Access.for_settings(settings)
    app = FastAPI(title="Caterva2 subscriber", lifespan=lifespan)
    install_error_handlers(app)
    document(app, security=USERS)
    for module in (api, data_api, relay_api):
        app.include_router(module.router, responses=LOGIN)
    web.install(app)
    requests = mount_observability(app, metrics.registry, "subscriber", health,
                                   metrics_responses=LOGIN)
    app.add_middleware(LeaseReplicas)
    app.add_middleware(RequireLogin, access=access, statedir=str(settings.statedir))
    if fronts is not None:  # (outermost: fronts' reports need no login and are not counted)
        app.add_middleware(OwnerReports, secret=fronts.secret,
                           private_port=lambda: fronts.private_port, apply=fronts.apply,
                           state=fronts.state)
    return app


class LeaseReplicas:
    """Every replica an answer uses stays leased to it until its last byte is sent, so the
    bounded cache never evicts data an answer in flight is reading or writing (see
    :func:`caterva2.services.subscriber.leases.leasing`)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with leasing():
            await self.app(scope, receive, send)


def main() -> None:
    def add_arguments(parser) -> None:
        parser.add_argument("--url", help="base of the URLs handed out (when behind a proxy)")
        parser.add_argument("--cache-size", metavar="SIZE",
                            help="most room the cache may take on disk, e.g. 500MB, 20GB or "
                                 "512MiB (least recently used data is evicted to stay "
                                 "within it; default: no limit)")
        parser.add_argument("--require-login", action="store_true", default=None,
                            help="every request needs a user's API key (users: cat2admin "
                                 "--statedir STATEDIR adduser NAME); default: open")
        parser.add_argument("--workers", metavar="N",
                            help="processes serving clients, sharing this port and the cache "
                                 "(default 1; more use more cores for reads of cached data)")

    def make_app(settings: dict[str, Any]) -> FastAPI:
        cache_size = config.parse_size(settings.get("cache_size"), "cache_size")
        require_login = settings.get("require_login", False)
        if not isinstance(require_login, bool):
            raise config.ConfigError("require_login must be true or false")
        subscriber_settings = SubscriberSettings(
            broker=settings["broker"], statedir=pathlib.Path(settings["statedir"]),
            address=settings["address"], url=settings.get("url"), cache_size=cache_size,
            require_login=require_login,
            access_rules=AccessRules.from_config(settings.get("access", {})),
            nats=SubscriberNats.from_settings(settings))
        access = Access.for_settings(subscriber_settings)
        workers = parse_workers(settings.get("workers", 1))
        fronts = None
        if workers > 1:
            fronts = Fronts(workers, settings["sockets"][0], settings)
            settings["sockets"].append(fronts.private)
        for message in (f"cache limit: {config.format_size(cache_size)}", access.describe(),
                        f"workers: {workers}"):
            print(f"cat2sub: {message}", file=sys.stderr, flush=True)
            logging.getLogger("caterva2.subscriber").info(message)
        return build_app(subscriber_settings, fronts)

    service.run_service("subscriber", "Caterva2 subscriber: follows roots and serves clients.",
                        {"http": config.SUBSCRIBER_DEFAULT, "statedir": "_caterva2/sub",
                         "broker": config.BROKER_DEFAULT}, make_app, add_arguments)
