"""Notifications on NATS JetStream: subjects, the stream, connections, messages.

A broker started with ``--nats nats://HOST:PORT[,nats://...]`` (``nats`` in ``[broker]``)
moves its deployment's notifications from its own WebSocket to NATS JetStream:

- one stream per deployment, ``CATERVA2_<DEPLOYMENT>``, holding the subjects
  ``caterva2.<DEPLOYMENT>.>`` (``DEPLOYMENT``: ``nats_deployment`` in ``[broker]``,
  default ``main``), kept by the broker (3 replicas when it is given 3 servers or more);
- ``caterva2.<DEPLOYMENT>.root.<ROOT>``: the broker announces a root registered, or moved
  to another address (a :class:`~caterva2.models.RootEvent`);
- ``caterva2.<DEPLOYMENT>.change.<ROOT>``: the publisher of ROOT announces datasets changed
  (a :class:`~caterva2.models.ChangeEvent`), straight to NATS: the broker need not run.

``<ROOT>`` is the root's name with each ``.`` (a subject's separator) written ``~``, a
character root names never hold: ``my.data`` is ``my~data``.  A message is taken only if
its subject is one of these and names the root its event is about, so that NATS's
per-subject permissions (see :mod:`caterva2.tools.nats_auth`) decide who may announce
what.  Publishers and subscribers learn where NATS is from their broker (a
:class:`~caterva2.models.Notifications`: the ``Caterva2-Notifications`` header of its
answers to registrations and to ``GET /api/roots``, which publishers and subscribers ask
for anyway;
remembered in their state directory for when the broker is down) or from ``nats`` in their own section.

Credentials (``USER:PASSWORD``): ``CATERVA2_NATS_CREDENTIALS``, else ``nats_credentials``
in the service's own section; none for a NATS server that asks for none.
"""
from __future__ import annotations

import asyncio
import logging
import os
import pathlib
import re
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError

from caterva2 import tls
from caterva2.config import ConfigError
from caterva2.models import ChangeEvent, Event, Notifications, RootEvent
from caterva2.statefiles import atomic_write, read_json

log = logging.getLogger("caterva2.nats")
CREDENTIALS_ENV = "CATERVA2_NATS_CREDENTIALS"
DEFAULT_DEPLOYMENT = "main"
_DEPLOYMENT = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_MESSAGE_BYTES = 512 * 1024  # NATS takes 1 MB messages by default: an event stays well below
CONNECT_WAIT_S = 5  # a publisher's wait for NATS before it tries again later
PUBLISH_TIMEOUT_S = 3  # a JetStream acknowledgement (a cluster electing a leader takes ~1-2 s)
REMEMBERED_FILE = "notifications.json"
_EVENTS: TypeAdapter[RootEvent | ChangeEvent] = TypeAdapter(Event)


# -- names ------------------------------------------------------------------------------

def check_deployment(name: Any) -> str:
    """``name`` if it can name a deployment (1 to 32 ASCII letters, digits, ``_``, ``-``:
    it is part of a stream's name and of subjects); ConfigError otherwise."""
    if not isinstance(name, str) or not _DEPLOYMENT.fullmatch(name):
        raise ConfigError(f"nats_deployment {name!r}: 1 to 32 ASCII letters, digits, '_' or "
                          "'-'")
    return name


def subject_token(root: str) -> str:
    """A root's name as one token of a subject (``.`` written ``~``)."""
    return root.replace(".", "~")


def stream_name(deployment: str) -> str:
    return f"CATERVA2_{deployment}"


def all_subjects(deployment: str) -> str:
    return f"caterva2.{deployment}.>"


def root_subject(deployment: str, root: str) -> str:
    return f"caterva2.{deployment}.root.{subject_token(root)}"


def change_subject(deployment: str, root: str) -> str:
    return f"caterva2.{deployment}.change.{subject_token(root)}"


def event_from_message(deployment: str, subject: str, data: bytes) -> RootEvent | ChangeEvent:
    """The event a message carries; ValueError unless it is valid and its subject is the
    one of its kind and root (a publisher may only publish on its own root's subject)."""
    try:
        event = _EVENTS.validate_json(data)
    except ValidationError as e:
        raise ValueError(f"malformed event on {subject}: {e.error_count()} errors") from None
    expected = (root_subject(deployment, event.root.name) if isinstance(event, RootEvent)
                else change_subject(deployment, event.root))
    if subject != expected:
        root = event.root if isinstance(event, ChangeEvent) else event.root.name
        raise ValueError(f"an event about root {root!r} on subject {subject} (taken only "
                         f"on {expected})")
    return event


def split_to_fit(event: ChangeEvent, max_bytes: int = MAX_MESSAGE_BYTES) -> list[ChangeEvent]:
    """``event`` as events of at most ``max_bytes`` of JSON each (halved until they fit)."""
    if len(event.model_dump_json()) <= max_bytes:
        return [event]
    items = [(p, v) for p, v in event.changed.items()] + [(p, None) for p in event.deleted]
    if len(items) < 2:
        return [event]  # (one path and version: at most ~1.3 kB, always fits)
    halves = items[:len(items) // 2], items[len(items) // 2:]
    return [piece for half in halves for piece in split_to_fit(ChangeEvent(
        root=event.root, changed={p: v for p, v in half if v is not None},
        deleted=[p for p, v in half if v is None]), max_bytes)]


# -- settings -----------------------------------------------------------------------------

def parse_servers(text: Any, name: str = "nats") -> list[str]:
    """``nats://HOST:PORT[,nats://...]`` as a list of URLs (``HOST:PORT`` taken as
    ``nats://HOST:PORT``; ``tls://`` for NATS over TLS).  ConfigError for anything else,
    credentials in a URL included: they go in ``nats_credentials``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{name} must be nats://HOST:PORT[,nats://HOST:PORT...]")
    servers = []
    for part in text.split(","):
        url = part.strip()
        if "://" not in url:
            url = f"nats://{url}"
        parsed = urllib.parse.urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if parsed.scheme not in ("nats", "tls") or not parsed.hostname or port is None \
                or parsed.username or parsed.password or parsed.path.strip("/") \
                or parsed.query or parsed.fragment:
            raise ConfigError(f"{name}: {part.strip()!r} is not nats://HOST:PORT (or "
                              "tls://HOST:PORT; credentials go in nats_credentials or "
                              f"{CREDENTIALS_ENV})")
        servers.append(f"{parsed.scheme}://{parsed.netloc}")
    return servers


def credentials(configured: Any = None) -> tuple[str, str] | None:
    """``(user, password)`` from ``CATERVA2_NATS_CREDENTIALS``, else ``configured``
    (``nats_credentials`` in the service's section), else None."""
    value = os.environ.get(CREDENTIALS_ENV) or configured
    if value is None:
        return None
    if not isinstance(value, str) or ":" not in value or value.startswith(":"):
        raise ConfigError(f"nats_credentials (or {CREDENTIALS_ENV}) must be USER:PASSWORD, "
                          "as cat2admin nats-publisher prints it")
    user, _, password = value.partition(":")
    return user, password


def plan(servers: list[str], deployment: str) -> Notifications:
    """Where a deployment's notifications go: NATS at ``servers``."""
    return Notifications(engine="nats", servers=servers, deployment=deployment,
                         stream=stream_name(deployment))


def remember(statedir: pathlib.Path, notifications: Notifications) -> None:
    """Keep what the broker said (for starts while it is down)."""
    atomic_write(pathlib.Path(statedir) / REMEMBERED_FILE, notifications.model_dump_json())


def remembered(statedir: pathlib.Path) -> Notifications | None:
    """What the broker said last, if it was ever asked (None if not, or unreadable)."""
    data = read_json(pathlib.Path(statedir) / REMEMBERED_FILE, None)
    try:
        return Notifications.model_validate(data) if data is not None else None
    except ValidationError:
        return None


# -- connections --------------------------------------------------------------------------

async def connect(servers: list[str], creds: tuple[str, str] | None, name: str,
                  on_disconnect: Callable[[], Awaitable[None]] | None = None,
                  on_reconnect: Callable[[], Awaitable[None]] | None = None,
                  forever: bool = True) -> Any:
    """A NATS connection to one of ``servers``: trying them in turn until one answers (if
    not ``forever``, for at most CONNECT_WAIT_S, then NoServersError); it reconnects by
    itself when lost.  Errors (a server down, a permission refused) are logged, once
    each until the connection is back."""
    import nats  # (the services extra; only a deployment on NATS needs it)

    last_error = ""

    async def error(e: Exception) -> None:
        nonlocal last_error
        # (once at warning level, not twice a second while NATS is down)
        log.log(logging.DEBUG if str(e) == last_error else logging.WARNING,
                "NATS (%s): %s", name, e)
        last_error = str(e)

    async def reconnected() -> None:
        nonlocal last_error
        last_error = ""  # (a later outage is logged again)
        if on_reconnect is not None:
            await on_reconnect()

    async def noop() -> None:
        return None

    options: dict[str, Any] = {
        "servers": servers, "name": name, "connect_timeout": 2, "reconnect_time_wait": 0.5,
        "max_reconnect_attempts": -1, "ping_interval": 5, "max_outstanding_pings": 2,
        "error_cb": error, "disconnected_cb": on_disconnect or noop,
        "reconnected_cb": reconnected}
    if creds is not None:
        options["user"], options["password"] = creds
    if any(server.startswith("tls://") for server in servers):
        options["tls"] = tls.client_context()  # (CATERVA2_CA_BUNDLE, as for the services)
    if forever:  # (nats-py tries the servers, one after the other, until one answers)
        return await nats.connect(**options)
    try:
        return await asyncio.wait_for(nats.connect(**options), CONNECT_WAIT_S)
    except asyncio.TimeoutError:
        raise nats.errors.NoServersError() from None


async def keep_stream(js: Any, deployment: str, replicas: int) -> None:
    """Create the deployment's stream, or bring its replicas to ``replicas``."""
    from nats.js import api
    from nats.js.errors import NotFoundError

    config = api.StreamConfig(
        name=stream_name(deployment), subjects=[all_subjects(deployment)],
        storage=api.StorageType.FILE, num_replicas=replicas,
        retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
        # What a subscriber away for longer than this (or this many notifications) finds
        # gone: it then reads every index again, as without NATS.
        max_age=7 * 86400, max_msgs=1_000_000, max_msg_size=MAX_MESSAGE_BYTES + 4096)
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        log.info("stream %s created (%d replicas)", config.name, replicas)
        return
    if info.config.num_replicas != replicas:
        await js.update_stream(config)
        log.info("stream %s now has %d replicas", config.name, replicas)


async def publish(js: Any, subject: str, payload: str, stream: str) -> int:
    """Publish ``payload`` on ``subject``, acknowledged by the stream; its sequence."""
    ack = await js.publish(subject, payload.encode(), stream=stream, timeout=PUBLISH_TIMEOUT_S)
    return ack.seq


def nats_errors() -> tuple[type[BaseException], ...]:
    """The exceptions a NATS operation raises when NATS cannot do it now."""
    import nats.errors

    return (nats.errors.Error, asyncio.TimeoutError, OSError)
