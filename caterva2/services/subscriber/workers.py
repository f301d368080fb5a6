"""``cat2sub --workers N``: the owner worker starts and watches N-1 front workers.

See :mod:`.front` for what fronts do.  The owner binds the public socket (as with one
worker) and a private one on loopback, where fronts pass on what they do not answer and
send their reports (:mod:`.worker_link`); each front gets the public socket (inherited)
and what else it needs on its standard input, among which a fresh secret for its reports.

Fronts run in sessions of their own, so that a Ctrl-C at a terminal reaches the owner
alone: the owner stops them (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`) when it
stops, for whatever reason.  A front that ends while the owner runs is started again; one
that keeps ending (:data:`MAX_RESTARTS` times within :data:`RESTART_WINDOW_S`) stops the
whole subscriber, saying why (it sends itself a SIGTERM: exit status 143 in a shell).  A front whose owner is gone (killed) stops by itself.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import Counter

from caterva2.config import ConfigError
from caterva2.services.subscriber.node import Subscriber
from caterva2.services.subscriber.worker_link import FrontReport, OwnerState

log = logging.getLogger("caterva2.workers")
STOP_GRACE_S = 5
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60
WATCH_INTERVAL_S = 0.5


def parse_workers(value: Any) -> int:
    """The number of worker processes from ``--workers`` or ``workers`` in
    ``[subscriber]``; ConfigError unless it is a whole number of at least 1."""
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise ConfigError(f"workers must be a whole number of processes, at least 1 "
                          f"(got {value!r})")
    return int(text)


class Fronts:
    """The front workers of an owner: started, watched, restarted and stopped here."""

    def __init__(self, count: int, public: socket.socket, settings: dict[str, Any]):
        self.count = count
        self.public = public
        self.private, port = _bind_loopback()
        self.private_port = port
        tls = bool(settings.get("certfile"))
        self.secret = secrets.token_urlsafe(32)
        self.owner_url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        self._base = {"fd": public.fileno(), "owner_url": self.owner_url,
                      "secret": self.secret, "owner_pid": os.getpid(),
                      "statedir": str(settings["statedir"]),
                      "loglevel": settings["loglevel"],
                      "require_login": bool(settings.get("require_login", False)),
                      "access": settings.get("access", {}),
                      "certfile": settings.get("certfile"), "keyfile": settings.get("keyfile")}
        self.procs: list[subprocess.Popen | None] = [None] * (count - 1)
        self.restarts: list[float] = []
        self.stopping = False
        self.subscriber: Subscriber | None = None
        self.requests: Counter | None = None
        self.front_answers = Counter("caterva2_front_answers", "requests a front worker "
                                     "answered itself (also counted in "
                                     "caterva2_http_requests_total)", ["worker"],
                                     registry=None)  # (the subscriber's, once running)

    # -- the owner's side of the link ---------------------------------------------------
    def apply(self, report: FrontReport) -> None:
        """Add a front's figures to the owner's (blocks: touches the cache's order)."""
        sub = self.subscriber
        if sub is None:
            return
        for root, n in report.hits.items():
            sub.metrics.hit(root, n)
        for root, n in report.bytes_out.items():
            sub.metrics.bytes_out(root, n)
        for r in report.requests:
            if self.requests is not None:
                self.requests.labels(r.method, r.route, str(r.status)).inc(r.count)
            self.front_answers.labels(report.front).inc(r.count)
        for root, path, version in report.used:
            with contextlib.suppress(ValueError):
                sub.cache.touch(root, path, version)

    def state(self) -> OwnerState:
        sub = self.subscriber
        if sub is None:
            return OwnerState(broker_connected=False, subscribed=[])
        return OwnerState(broker_connected=not sub.freshness.needed,
                          subscribed=sorted(sub.registry.subscribed))

    # -- processes --------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def running(self, subscriber: Subscriber, requests: Counter | None
                      ) -> AsyncIterator[None]:
        """Fronts run while in the block."""
        self.subscriber, self.requests = subscriber, requests
        subscriber.metrics.registry.register(self.front_answers)
        for i in range(len(self.procs)):
            self._start(i)
        watcher = asyncio.create_task(self._watch())
        try:
            yield
        finally:
            self.stopping = True
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await asyncio.to_thread(self.stop)

    def _start(self, i: int) -> None:
        config = json.dumps({**self._base, "name": f"front {i + 1}"})
        proc = subprocess.Popen([sys.executable, "-m", "caterva2.services.subscriber.front"],
                                stdin=subprocess.PIPE, pass_fds=[self.public.fileno()],
                                start_new_session=True)
        assert proc.stdin is not None
        try:
            proc.stdin.write(config.encode())
            proc.stdin.close()
        except OSError:  # (it died already: the watcher sees it, and starts it again)
            log.warning("front worker %d ended before it was told what to do", i + 1)
        self.procs[i] = proc
        log.info("front worker %d started (pid %d)", i + 1, proc.pid)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            for i, proc in enumerate(self.procs):
                if self.stopping or proc is None or proc.poll() is None:
                    continue
                now = time.monotonic()
                self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S]
                if len(self.restarts) >= MAX_RESTARTS:
                    message = (f"front worker {i + 1} ended (exit status {proc.returncode}) "
                               f"and fronts ended {MAX_RESTARTS} times within "
                               f"{RESTART_WINDOW_S} s: stopping the subscriber")
                    log.error(message)
                    print(f"cat2sub: error: {message}", file=sys.stderr, flush=True)
                    self.procs[i] = None
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                self.restarts.append(now)
                log.warning("front worker %d ended (exit status %s); starting it again",
                            i + 1, proc.returncode)
                try:
                    self._start(i)
                except OSError as e:  # (no process could be made: tried again, and counted)
                    log.error("front worker %d cannot be started: %s", i + 1, e)

    def stop(self) -> None:
        """Stop every front (blocks up to :data:`STOP_GRACE_S`)."""
        self.stopping = True
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in live:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _bind_loopback() -> tuple[socket.socket, int]:
    """A listening socket on a free loopback port, for the fronts only."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    return sock, sock.getsockname()[1]
