"""Figures an operator can read: ``GET /metrics`` and ``GET /health`` on every service.

``/metrics`` is the Prometheus text exposition (or OpenMetrics, if the scraper asks for
it), made by prometheus-client from a registry of the application's own: no global
registry, so several applications may live in one process (tests).  ``/health`` is a
liveness answer, ``{"status": "ok", "service": KIND, ...}`` plus what the service adds
(a subscriber: whether its broker link is connected).

Every service counts its HTTP requests (``caterva2_http_requests_total``, by method, route
template and status).  The rest is per service:

broker (:class:`BrokerMetrics`)
    ``caterva2_broker_roots`` (registered roots), ``caterva2_broker_listeners``
    (subscribers connected to the event channel), ``caterva2_broker_events_total``
    (change events posted by publishers), ``caterva2_broker_registrations_total``.
publisher (:class:`PublisherMetrics`)
    ``caterva2_publisher_chunks_served_total{root}`` and
    ``caterva2_publisher_bytes_served_total{root}`` (chunks as stored, and whole files
    downloaded).
subscriber (:class:`SubscriberMetrics`)
    ``caterva2_cache_usage_bytes`` (what the cache directory's files take on disk,
    measured at most once a second), ``caterva2_cache_limit_bytes`` (``+Inf`` when unlimited),
    ``caterva2_cache_hits_total{root}`` / ``caterva2_cache_misses_total{root}`` (chunks a
    read found cached / had to fetch), ``caterva2_cache_evictions_total`` and
    ``caterva2_cache_evicted_bytes_total``, ``caterva2_digest_mismatches_total{root}``,
    ``caterva2_bytes_from_publishers_total{root}`` (chunks as received) and
    ``caterva2_bytes_to_clients_total{root}`` (bodies of data answers).

Counters start at zero when the service starts.  Counting costs a counter increment per
chunk or answer, never a pass over the data.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import os
import pathlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caterva2.services import openapi

USAGE_MAX_AGE_S = 1.0  # how long a measure of the cache directory is reused

Health = Callable[[], dict[str, Any]]


# ---------------------------------------------------------------------------
# The endpoints, for every service
# ---------------------------------------------------------------------------

def mount_observability(app: FastAPI, registry: CollectorRegistry, service: str,
                        health: Health | None = None,
                        metrics_responses: openapi.Responses | None = None) -> Counter:
    """Add ``GET /metrics`` (``registry``, plus a count of HTTP requests) and ``GET /health``
    (``{"status": "ok", "service": service}`` updated with ``health()``) to ``app``.
    ``metrics_responses``: what else ``/metrics`` may answer (for its OpenAPI schema).
    Returns the count of HTTP requests (by method, route and status)."""
    requests = Counter("caterva2_http_requests", "HTTP requests answered",
                       ["method", "route", "status"], registry=registry)
    app.add_middleware(_CountRequests, counter=requests)

    @app.get("/metrics", response_class=Response, responses=openapi.binary(
        openapi.PROMETHEUS, openapi.OPENMETRICS, description="The figures, as Prometheus "
        "text (or OpenMetrics, if the Accept header asks for it)") | (metrics_responses or {}))
    async def metrics(request: Request) -> Response:
        """The service's figures, for Prometheus to scrape."""
        encode, content_type = choose_encoder(request.headers.get("accept", ""))
        # (in a thread: collecting may measure the cache directory)
        body = await asyncio.to_thread(encode, registry)
        return Response(body, headers={"Content-Type": content_type})

    @app.get("/health")
    async def get_health() -> dict[str, Any]:
        """Liveness: the service answers; what it knows of its links."""
        answer: dict[str, Any] = {"status": "ok", "service": service}
        if health is not None:
            answer.update(health())
        return answer

    return requests


class _CountRequests:
    """ASGI middleware counting HTTP requests by method, route and status (see
    :func:`_route`: never the path asked for, so that scans cannot grow the label set)."""

    def __init__(self, app: ASGIApp, counter: Counter):
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # (if the application fails before answering)

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.counter.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    """The template of the route that answered (``/api/info/{root}/{path:path}``), the path
    of a plain Starlette route (``/docs``), or ``other`` if none matched."""
    route = scope.get("route")
    if route is not None:
        return route.path
    return scope["path"] if "endpoint" in scope else "other"


async def counted(pieces: AsyncIterator[Any], count: Callable[[int], None]
                  ) -> AsyncIterator[Any]:
    """``pieces`` (of a streamed answer), each one's length given to ``count`` as it goes.
    Closing this closes ``pieces`` at once (their clean-up must not wait for the GC)."""
    try:
        async for piece in pieces:
            count(len(piece))
            yield piece
    finally:
        aclose = getattr(pieces, "aclose", None)
        if aclose is not None:
            await aclose()


def _per_label(counter: Counter) -> dict[str, float]:
    """The values of a counter with one label, by label value."""
    values = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                values[next(iter(sample.labels.values()))] = sample.value
    return values


def _value(counter: Counter) -> float:
    """The value of a counter without labels."""
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                return sample.value
    return 0.0


# ---------------------------------------------------------------------------
# Per service
# ---------------------------------------------------------------------------

class BrokerMetrics:
    """The broker's figures; roots and listeners are read from ``roots()`` and
    ``listeners()`` when scraped."""

    def __init__(self, roots: Callable[[], int], listeners: Callable[[], int]):
        self.registry = CollectorRegistry()
        Gauge("caterva2_broker_roots", "roots registered", registry=self.registry
              ).set_function(roots)
        Gauge("caterva2_broker_listeners", "subscribers connected to the event channel",
              registry=self.registry).set_function(listeners)
        self.events = Counter("caterva2_broker_events", "change events posted by publishers",
                              registry=self.registry)
        self.registrations = Counter("caterva2_broker_registrations",
                                     "root registrations (publishers starting or renewing)",
                                     registry=self.registry)


class PublisherMetrics:
    """The publisher's figures: what it served, per root."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._chunks = Counter("caterva2_publisher_chunks_served",
                               "stored chunks read for chunk streams", ["root"],
                               registry=self.registry)
        self._bytes = Counter("caterva2_publisher_bytes_served",
                              "bytes of stored chunks and whole files served", ["root"],
                              registry=self.registry)

    def chunks_served(self, root: str, chunks: list[bytes]) -> None:
        self._chunks.labels(root).inc(len(chunks))
        self._bytes.labels(root).inc(sum(len(c) for c in chunks))

    def file_served(self, root: str, nbytes: int) -> None:
        self._bytes.labels(root).inc(nbytes)


class SubscriberMetrics:
    """The subscriber's figures: its cache, and the bytes it moves, per root.

    Methods are cheap and thread-safe: call them where the event happens.  Cache usage is
    measured when scraped (the size of the files under the directory given to
    :meth:`measure_cache`, reused for a second); the limit is ``None`` when unlimited.
    """

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.cache_dir: pathlib.Path | None = None
        self.cache_limit: int | None = None
        self._usage_lock = threading.Lock()
        self._usage: tuple[float, int] = (-math.inf, 0)  # (measured at, bytes)
        Gauge("caterva2_cache_usage_bytes", "bytes of files in the cache", registry=r
              ).set_function(self.cache_usage)
        Gauge("caterva2_cache_limit_bytes", "the cache's bound in bytes (+Inf: unlimited)",
              registry=r).set_function(lambda: self.cache_limit or math.inf)
        self._hits = Counter("caterva2_cache_hits", "chunks a read found cached", ["root"],
                             registry=r)
        self._misses = Counter("caterva2_cache_misses", "chunks a read had to fetch",
                               ["root"], registry=r)
        self._evictions = Counter("caterva2_cache_evictions", "evictions from the cache",
                                  registry=r)
        self._evicted_bytes = Counter("caterva2_cache_evicted_bytes",
                                      "bytes evicted from the cache", registry=r)
        self._mismatches = Counter("caterva2_digest_mismatches",
                                   "chunks that did not match their digest", ["root"],
                                   registry=r)
        self._bytes_in = Counter("caterva2_bytes_from_publishers",
                                 "bytes of chunks received from publishers", ["root"],
                                 registry=r)
        self._bytes_out = Counter("caterva2_bytes_to_clients",
                                  "bytes of data answers sent to clients", ["root"],
                                  registry=r)
        self._index_fetches = Counter("caterva2_index_fetches",
                                      "whole indexes of a root read from its publisher",
                                      ["root"], registry=r)
        self._catch_ups = Counter("caterva2_notification_catch_ups",
                                  "times every subscribed root's index was read again, "
                                  "missed notifications being unknown", registry=r)

    def measure_cache(self, directory: pathlib.Path, limit: Any = None) -> None:
        """Measure usage under ``directory``; ``limit`` in bytes (None or 0: unlimited;
        anything not a number of bytes is shown as no limit)."""
        self.cache_dir = pathlib.Path(directory)
        try:
            self.cache_limit = int(limit) or None if limit else None
        except (TypeError, ValueError):
            self.cache_limit = None

    # -- events ----------------------------------------------------------------------
    def hit(self, root: str, n: int = 1) -> None:
        """``n`` chunks a read found in the cache."""
        if n:
            self._hits.labels(root).inc(n)

    def miss(self, root: str, n: int = 1) -> None:
        """``n`` chunks a read had to fetch from the publisher."""
        if n:
            self._misses.labels(root).inc(n)

    def bytes_in(self, root: str, n: int) -> None:
        """``n`` bytes of chunks received from ``root``'s publisher."""
        self._bytes_in.labels(root).inc(n)

    def bytes_out(self, root: str, n: int) -> None:
        """``n`` bytes of an answer about ``root`` sent to a client."""
        self._bytes_out.labels(root).inc(n)

    def index_fetched(self, root: str) -> None:
        """The whole index of ``root`` was read from its publisher."""
        self._index_fetches.labels(root).inc()

    def caught_up(self) -> None:
        """Every subscribed root's index is being read again (notifications were missed)."""
        self._catch_ups.inc()

    def evicted(self, nbytes: int) -> None:
        """One eviction from the cache, of ``nbytes``."""
        self._evictions.inc()
        self._evicted_bytes.inc(nbytes)

    def digest_mismatch(self, root: str) -> None:
        """A chunk of ``root`` (received or cached) did not match its digest."""
        self._mismatches.labels(root).inc()

    # -- figures ---------------------------------------------------------------------
    def cache_usage(self) -> int:
        """Bytes of the files in the cache (measured at most once a second)."""
        if self.cache_dir is None:
            return 0
        with self._usage_lock:
            measured_at, usage = self._usage
            if time.monotonic() - measured_at > USAGE_MAX_AGE_S:
                usage = _tree_size(self.cache_dir)
                self._usage = (time.monotonic(), usage)
            return usage

    def summary(self) -> dict[str, Any]:
        """The figures as JSON (``GET /api/cache``; blocks: measures the cache)."""
        per_root = {"hits": _per_label(self._hits), "misses": _per_label(self._misses),
                    "digest_mismatches": _per_label(self._mismatches),
                    "bytes_in": _per_label(self._bytes_in),
                    "bytes_out": _per_label(self._bytes_out)}
        roots = sorted({root for values in per_root.values() for root in values})
        return {
            "usage": self.cache_usage(),
            "limit": self.cache_limit,
            **{key: int(sum(values.values())) for key, values in per_root.items()},
            "evictions": int(_value(self._evictions)),
            "evicted_bytes": int(_value(self._evicted_bytes)),
            "roots": {root: {key: int(values.get(root, 0))
                             for key, values in per_root.items()} for root in roots},
        }


def _tree_size(directory: pathlib.Path) -> int:
    """Bytes the files under ``directory`` take on disk (as ``du``: a sparse file counts
    what was written into it; files vanishing meanwhile are skipped)."""
    total = 0
    for parent, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(parent, name), follow_symlinks=False)
                total += stat.st_blocks * 512
    return total
