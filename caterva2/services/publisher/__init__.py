"""The publisher (``cat2pub NAME ROOT``): serves one root and announces every change in it.

Endpoints (paths relative to the root):

- ``GET /api/root``: ``{"name": NAME}``, the root this publisher serves;
- ``GET /api/list``: dataset paths;
- ``GET /api/index``: every dataset's version and metadata in one response (ETag);
- ``GET /api/info/{path}``: one dataset's version and metadata (ETag / If-None-Match);
  a dataset whose file cannot be read (being written, damaged) is listed with no metadata
  and an ``error`` (see :class:`caterva2.models.DatasetEntry`);
- ``GET /api/chunks/{path}?nchunks=0-3,7&version=V``: stored chunks, exactly as stored,
  as a stream of records (see :mod:`caterva2.wire`); 412 if the version is not current;
- ``GET /api/blocks/{path}?nchunk=N&blocks=0-3,7&version=V``: blocks of one stored chunk,
  as a stream of records (the chunk's head, then each block at its offset; the whole
  chunk if its blocks cannot move alone; see :mod:`caterva2.blocks`), with the whole
  chunk's digest in a header: for small reads inside big chunks;
- ``GET /api/digests/{path}?version=V``: every stored chunk's digest, 8 bytes each
  (:func:`caterva2.wire.chunk_digest`), for subscribers to keep unchanged chunks when the
  dataset changes; 404 where a root does not offer them (HDF5 files);
- ``GET /api/download/{path}``: the stored file (ordinary files as their ``.b2`` SChunk);
- ``GET /metrics``, ``GET /health``: for operators (:mod:`caterva2.services.metrics`).

ROOT may also be ``http://HOST:PORT/ROOT`` (or ``https://``): the root ROOT of the
subscriber at HOST:PORT, re-published (see :mod:`caterva2.roots.relayed`).

It announces itself to the broker at its ``--http`` address, or at ``--url`` (``url`` in
``[publisher]``) when subscribers reach it through a proxy or NAT, with its own key
(``STATEDIR/publisher.key``: the root's name is bound to it at the broker) and the
broker's token, if it has one (``CATERVA2_BROKER_TOKEN``, or ``token`` in ``[publisher]``
or ``[broker]``).  In a deployment on NATS it announces changes there (:mod:`.nats_changes`).

Its parts: :mod:`.api` (the endpoints), :mod:`.catalog` (the root's entries and index as
the endpoints serve them), :mod:`.announcer` (registration and change announcements at the
broker).  State: ``STATEDIR/announced.json`` and ``STATEDIR/publisher.key`` (see
:mod:`.announcer`), and whatever the root keeps (``files/``, compressed ordinary files;
``hdf5-cache/``, converted chunks).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from caterva2 import config, paths, tls
from caterva2.config import broker_token
from caterva2.provenance import publisher_id
from caterva2.roots import PublishedRoot, open_root
from caterva2.services.errors import install_error_handlers
from caterva2.services.metrics import PublisherMetrics, mount_observability
from caterva2.services.openapi import document
from caterva2.services.service import run_service
from caterva2.statefiles import private_key

from .announcer import KEY_FILE, Announcer
from .api import router
from .catalog import Catalog
from .nats_changes import NatsChanges, PublisherNats

__all__ = ["PublisherSettings", "build_app", "main"]

log = logging.getLogger("caterva2.publisher")
BROKER_TIMEOUT = httpx.Timeout(10, connect=3)


@dataclass(frozen=True)
class PublisherSettings:
    """What a publisher is told at start: the root's name, the address it serves at, its
    broker's address, its state directory, behind a proxy or NAT the address subscribers
    reach it at (``url``: ``http://HOST:PORT`` or ``HOST:PORT``), and the broker's
    ``token`` if it requires one."""

    name: str
    address: str
    broker: str
    statedir: pathlib.Path
    url: str | None = None
    token: str | None = None
    nats: PublisherNats = field(default_factory=PublisherNats)

    @property
    def announced(self) -> str:
        """The ``HOST:PORT`` announced to the broker (ConfigError for a bad ``url``)."""
        return config.announced_address(self.url) if self.url else self.address


def build_app(settings: PublisherSettings, root: PublishedRoot,
              broker_transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The publisher's web application for ``root``, announced as ``settings.name``.

    While it runs (its lifespan), it registers the root at the broker and announces every
    change, retrying in the background for as long as the broker cannot be reached.
    ``broker_transport`` replaces the network between them (tests); the root is closed
    when the application stops.
    """
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with httpx.AsyncClient(timeout=BROKER_TIMEOUT, transport=broker_transport,
                                     verify=tls.client_context()) as client:
            announcer = Announcer(settings.name, root, settings.announced, settings.broker,
                                  settings.statedir, client, settings.token,
                                  NatsChanges(settings.name, settings.nats, settings.statedir))
            app.state.announcer = announcer
            task = asyncio.create_task(announcer.run())
            yield
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        root.close()

    app = FastAPI(title=f"Caterva2 publisher of {settings.name}", lifespan=lifespan)
    own_id = publisher_id(private_key(settings.statedir / KEY_FILE))
    app.state.catalog = Catalog(settings.name, root, own_id)
    app.state.metrics = metrics = PublisherMetrics()
    install_error_handlers(app)
    document(app)
    app.include_router(router)
    mount_observability(app, metrics.registry, "publisher", lambda: {
        "root": settings.name, "announced_as": settings.announced, "broker": settings.broker,
        "registered": getattr(app.state, "announcer", None) is not None
        and app.state.announcer.registered, "notifications": _engine(app)})
    return app


def _engine(app: FastAPI) -> str:
    """Where this publisher's change announcements go: "nats" or "broker"."""
    announcer = getattr(app.state, "announcer", None)
    return "nats" if announcer is not None and announcer.nats is not None \
        and announcer.nats.active else "broker"


def upstream_key(settings: dict[str, Any]) -> str | None:
    """The API key a re-publishing publisher presents to the subscriber it re-publishes
    from: ``api_key`` in its section, else ``CATERVA2_API_KEY``, else None."""
    key = settings.get("api_key") or os.environ.get(config.API_KEY_ENV) or None
    if key is not None and not isinstance(key, str):
        raise config.ConfigError("api_key must be a string")
    return key


def main() -> None:
    """``cat2pub``: parse options, open the root and serve it."""
    def add_arguments(parser) -> None:
        parser.add_argument("name", nargs="?", help="name of the root, e.g. foo")
        parser.add_argument("root", nargs="?",
                            help="directory (or HDF5 file) to publish, e.g. root-example; "
                                 "or http://HOST:PORT/ROOT to re-publish root ROOT of the "
                                 "subscriber at HOST:PORT")
        parser.add_argument("--url", help="http://HOST:PORT (or HOST:PORT) announced to the "
                                          "broker: where subscribers reach this publisher "
                                          "(behind a proxy or NAT; default: --http)")

    def make_app(settings: dict[str, Any]) -> FastAPI:
        if not settings.get("name") or not settings.get("root"):
            raise config.ConfigError("give NAME and ROOT (or 'name' and 'root' in the "
                                     "[publisher] section of the configuration file)")
        paths.check_root_name(str(settings["name"]))  # ValueError: a clear error at start
        publisher = PublisherSettings(str(settings["name"]), settings["address"],
                                      settings["broker"], settings["statedir"],
                                      settings.get("url"), broker_token(settings.get("token")),
                                      PublisherNats.from_settings(settings))
        log.info("announcing %s at %s", publisher.name, publisher.announced)  # (checks url)
        key = private_key(publisher.statedir / KEY_FILE)  # (made now: a bad one stops here)
        root = open_root(str(settings["root"]), settings["statedir"], name=publisher.name,
                         own_id=publisher_id(key), api_key=upstream_key(settings))
        return build_app(publisher, root)

    run_service("publisher", "Caterva2 publisher: serves one root of datasets.",
                {"http": config.PUBLISHER_DEFAULT, "statedir": "_caterva2/pub",
                 "broker": config.BROKER_DEFAULT}, make_app, add_arguments)
