"""The private link between a subscriber's front workers and its owner worker.

Twice a second each front sends the owner a :class:`FrontReport` (``POST`` on the owner's
private loopback address, :data:`REPORT_PATH`, with the secret the owner gave it at start
in :data:`SECRET_HEADER`): what it answered itself since its last report (chunks found
cached, bytes sent and requests answered, per root and route), and which replicas it read
from.  The owner adds the figures to its own (so ``/metrics`` and ``/api/cache`` show the
whole subscriber), and counts those replicas as just used (so its eviction order is that of
all workers' reads).  It answers with an :class:`OwnerState`: whether its broker link is up
(while it is not, every read is first checked with its publisher, which only the owner
does) and which roots are subscribed.  A front whose last answer is older than
:data:`STATE_MAX_AGE_S` answers nothing itself.

So a front learns that the broker link went down up to half a second late, and may answer
from the cache meanwhile without asking the publisher: the owner itself takes a
revalidation's answer as good for as long (:data:`.freshness.REVALIDATE_INTERVAL_S`), and
no change can be announced over a link that is down.  A change announced while the link
is up reaches fronts at once: the owner writes the new index before it answers anything
of the new version, and fronts read the index on disk at every request.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import Callable

import httpx
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("caterva2.workers")
REPORT_PATH = "/api/_workers/report"
SECRET_HEADER = "caterva2-worker-secret"
REPORT_INTERVAL_S = 0.5
STATE_MAX_AGE_S = 2.0  # a front trusts the owner's state for this long
REPORT_TIMEOUT_S = 5.0  # an owner that takes longer to answer a report is not heard
MAX_REPORT_BYTES = 1 << 20
MAX_USED = 2000  # replicas a report names (more within half a second: the rest go unnamed)


class RequestCount(BaseModel):
    method: str
    route: str
    status: int
    count: int


class FrontReport(BaseModel):
    """What a front did since its last report."""

    front: str = ""  # its name, "front 1"...
    hits: dict[str, int] = {}  # root -> chunks read from the cache
    bytes_out: dict[str, int] = {}  # root -> bytes of data answers
    requests: list[RequestCount] = []
    used: list[tuple[str, str, str]] = []  # (root, path, version) of replicas read


class OwnerState(BaseModel):
    """What a front needs to know of the owner to answer by itself."""

    broker_connected: bool
    subscribed: list[str]


class OwnerReports:
    """ASGI middleware of the owner: takes fronts' reports on its private address (with the
    secret); any other request goes on to ``app``.  ``apply(report)`` adds a report up and
    ``state()`` says what to answer."""

    def __init__(self, app: ASGIApp, secret: str, private_port: Callable[[], int | None],
                 apply: Callable[[FrontReport], None], state: Callable[[], OwnerState]):
        self.app, self.secret, self.private_port = app, secret.encode(), private_port
        self.apply, self.state = apply, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != REPORT_PATH or \
                not self._from_a_front(scope):
            await self.app(scope, receive, send)  # (a 404 for anyone else)
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if len(body) > MAX_REPORT_BYTES:
                await _answer(send, 413, {"detail": "report too large"})
                return
            if not message.get("more_body", False):
                break
        try:
            report = FrontReport.model_validate_json(body)
        except ValidationError as e:
            await _answer(send, 400, {"detail": f"malformed report: {e}"})
            return
        await asyncio.to_thread(self.apply, report)
        await _answer(send, 200, self.state().model_dump())

    def _from_a_front(self, scope: Scope) -> bool:
        server = scope.get("server")
        if not server or server[1] != self.private_port():
            return False
        sent = dict(scope["headers"]).get(SECRET_HEADER.encode(), b"")
        return hmac.compare_digest(sent, self.secret)


async def _answer(send: Send, status: int, content: dict) -> None:
    body = json.dumps(content).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class FrontTally:
    """A front's figures since its last report, and the owner's state as last heard."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.bytes_out: Counter[str] = Counter()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.used: set[tuple[str, str, str]] = set()
        self.state: OwnerState | None = None
        self.heard_at = -float("inf")

    def answered(self, method: str, route: str, status: int, root: str | None = None,
                 chunks: int = 0, nbytes: int = 0,
                 replica: tuple[str, str, str] | None = None) -> None:
        """A request this front answered itself."""
        self.requests[(method, route, status)] += 1
        if root is not None and chunks:
            self.hits[root] += chunks
        if root is not None and nbytes:
            self.bytes_out[root] += nbytes
        if replica is not None and len(self.used) < MAX_USED:
            self.used.add(replica)

    def current_state(self) -> OwnerState | None:
        """The owner's state, if heard recently enough to act on."""
        if time.monotonic() - self.heard_at > STATE_MAX_AGE_S:
            return None
        return self.state

    def _take(self) -> FrontReport:
        report = FrontReport(
            hits=dict(self.hits), bytes_out=dict(self.bytes_out), used=sorted(self.used),
            requests=[RequestCount(method=m, route=r, status=s, count=n)
                      for (m, r, s), n in self.requests.items()])
        self.hits, self.bytes_out, self.requests, self.used = Counter(), Counter(), Counter(), set()
        return report

    def _give_back(self, report: FrontReport) -> None:
        """A report that did not reach the owner: counted in the next one."""
        self.hits.update(report.hits)
        self.bytes_out.update(report.bytes_out)
        self.used.update(report.used[:max(0, MAX_USED - len(self.used))])
        for r in report.requests:
            self.requests[(r.method, r.route, r.status)] += r.count

    async def report(self, client: httpx.AsyncClient, owner_url: str, secret: str,
                     front: str) -> bool:
        """Send the figures to the owner and take its state; False if it did not answer."""
        report = self._take()
        report.front = front
        try:
            response = await client.post(owner_url + REPORT_PATH,
                                         content=report.model_dump_json(),
                                         headers={SECRET_HEADER: secret,
                                                  "content-type": "application/json"},
                                         timeout=REPORT_TIMEOUT_S)
            response.raise_for_status()
            self.state = OwnerState.model_validate_json(response.content)
        except (httpx.HTTPError, ValidationError) as e:
            log.debug("the main worker did not take a report: %s", e)
            self._give_back(report)
            return False
        self.heard_at = time.monotonic()
        return True
