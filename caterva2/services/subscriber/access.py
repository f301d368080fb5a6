"""Who may use a subscriber, and which roots each user may read or subscribe to.

A subscriber started with ``--require-login`` (``require_login = true`` in
``[subscriber]``) answers only requests that carry the API key of one of its users
(``Authorization: Bearer KEY``; users are made with ``cat2admin --statedir DIR adduser
NAME``, see :mod:`caterva2.users`); any other gets a 401 saying what to do.  ``/health``
stays open, for liveness probes.  Without it, the subscriber is open: anyone who reaches
it may read and subscribe to every root (its start-up line says so).

Browsers log in at ``/web/login`` (see :mod:`.web.login`), which keeps the key in an
``HttpOnly``, ``SameSite=Strict`` cookie (:data:`LOGIN_COOKIE`) taken here in place of the
header; a browser asking for a page of the web interface without a login is sent there,
where an API client would get the 401.

Per-root rules, in the configuration file (they apply to logged-in users)::

    [access]              # the rules for every root not named below
    read = ["*"]          # who may list, read and download a root's datasets
    subscribe = ["alice"] # who may make the subscriber follow a root (or stop following it)

    [access.secret]       # the rules for root "secret"
    read = ["alice", "bob"]

A rule a root's table leaves out is the ``[access]`` one; one left out there too means
every user (``"*"``).  A user who may neither read nor subscribe to a
root does not see it in the list of roots; one who tries gets a 403 that names the rule.
"""
from __future__ import annotations

import contextvars
import http.cookies
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from caterva2.config import ConfigError
from caterva2.users import UserError, Users, check_user_name

EVERYONE = "*"
OPEN_PATHS = ("/health", "/web/login")  # answered without a user even with logins required
OPEN_PREFIXES = ("/web/static/",)  # (the web pages' style and scripts: the login page's too)
LOGIN_COOKIE = "caterva2_key"  # a browser's API key, set by the login page
WEB_PAGES = ("/roots/", "/web/")  # the web interface: "/" and the paths starting so
_user: contextvars.ContextVar[str | None] = contextvars.ContextVar("caterva2_user",
                                                                   default=None)


def current_user() -> str | None:
    """The user the request being answered came from (None: no login required)."""
    return _user.get()


@dataclass(frozen=True)
class RootRules:
    """Who may read and who may subscribe to one root (None: every user)."""

    read: frozenset[str] | None = None
    subscribe: frozenset[str] | None = None


@dataclass(frozen=True)
class AccessRules:
    """The ``[access]`` rules of a configuration: a default, and per-root ones."""

    default: RootRules = RootRules()
    roots: Mapping[str, RootRules] = field(default_factory=dict)

    @classmethod
    def from_config(cls, table: Any) -> AccessRules:
        """Rules from the ``[access]`` table; ConfigError for anything malformed."""
        if not isinstance(table, dict):
            raise ConfigError("configuration: [access] must be a table")
        roots = {name: _root_rules(rules, f"access.{name}")
                 for name, rules in table.items() if isinstance(rules, dict)}
        plain = {k: v for k, v in table.items() if not isinstance(v, dict)}
        return cls(_root_rules(plain, "access"), roots)

    def may(self, user: str, action: str, root: str) -> bool:
        """Whether ``user`` may ``action`` ("read" or "subscribe") root ``root``."""
        allowed = getattr(self.roots.get(root, self.default), action)
        if allowed is None:  # (not said for this root: as for every root)
            allowed = getattr(self.default, action)
        return allowed is None or EVERYONE in allowed or user in allowed


def _root_rules(table: dict[str, Any], where: str) -> RootRules:
    unknown = set(table) - {"read", "subscribe"}
    if unknown:
        raise ConfigError(f"configuration: [{where}] has unknown keys {sorted(unknown)}; "
                          "it may have 'read' and 'subscribe'")
    rules = {}
    for action in ("read", "subscribe"):
        users = table.get(action)
        if users is None:
            continue
        if not isinstance(users, list) or not all(isinstance(u, str) for u in users):
            raise ConfigError(f"configuration: {action} in [{where}] must be a list of "
                              f"user names (or \"{EVERYONE}\" for every user)")
        try:
            rules[action] = frozenset(u if u == EVERYONE else check_user_name(u)
                                      for u in users)
        except UserError as e:
            raise ConfigError(f"configuration: [{where}]: {e}") from None
    return RootRules(**rules)


class Access:
    """The subscriber's logins and rules."""

    def __init__(self, users: Users, require_login: bool, rules: AccessRules | None = None):
        self.users, self.require_login = users, require_login
        self.rules = rules or AccessRules()

    @classmethod
    def for_settings(cls, settings: Any) -> Access:
        """The access of a subscriber with these :class:`~.node.SubscriberSettings`."""
        return cls(Users(settings.statedir), settings.require_login, settings.access_rules)

    def describe(self) -> str:
        """One line for the start-up log: whether the subscriber is open."""
        if not self.require_login:
            return ("access: open (no login required: anyone who reaches this subscriber "
                    "may read and subscribe; cat2sub --require-login changes that)")
        return f"access: login required ({len(self.users.names())} users)"

    def may(self, action: str, root: str) -> bool:
        """Whether the current request's user may ``action`` the root (always, when open)."""
        user = current_user()
        return user is None or self.rules.may(user, action, root)

    def check(self, action: str, root: str) -> None:
        """403 unless the current request's user may ``action`` the root."""
        if not self.may(action, root):
            raise HTTPException(403, f"user {current_user()!r} may not {action} root "
                                     f"{root!r} (the [access] rules of this subscriber's "
                                     "configuration)")


class RequireLogin:
    """ASGI middleware: with logins required, a request without a valid API key gets a
    401; the user of one with it is :func:`current_user` while it is answered."""

    def __init__(self, app: ASGIApp, access: Access, statedir: str):
        self.app, self.access, self.statedir = app, access, statedir

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.access.require_login
                or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES)):
            await self.app(scope, receive, send)
            return
        key = _bearer(scope) or _cookie(scope)
        try:
            user = self.access.users.user_for(key) if key else None
        except UserError as e:  # (a damaged users file: nobody gets in, and it says why)
            await _refuse(send, 503, f"this subscriber cannot check logins now: {e}")
            return
        if user is None:
            if _browser_page(scope):
                await _to_login(scope, send)
            else:
                await _refuse(send, 401, self._why(key))
            return
        token = _user.set(user)
        try:
            await self.app(scope, receive, send)
        finally:
            _user.reset(token)

    def _why(self, key: str | None) -> str:
        if key:
            return ("the API key sent is not valid at this subscriber (deleted, or replaced "
                    "with cat2admin newkey?)")
        return ("this subscriber requires a login: send a user's API key as "
                "'Authorization: Bearer KEY' (cat2cli and the Python library take it from "
                "CATERVA2_API_KEY, or cat2cli --api-key); its operator makes users with "
                f"'cat2admin --statedir {self.statedir} adduser NAME'")


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                return credentials.strip()
    return None


def _cookie(scope: Scope) -> str | None:
    """The API key of a browser that logged in, unless it sent a header (which wins)."""
    headers = dict(scope["headers"])
    if b"authorization" in headers or b"cookie" not in headers:
        return None
    cookies = http.cookies.SimpleCookie()
    try:
        cookies.load(headers[b"cookie"].decode("latin-1"))
    except http.cookies.CookieError:
        return None
    morsel = cookies.get(LOGIN_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def _browser_page(scope: Scope) -> bool:
    """Whether a request is a browser's for a page of the web interface (sent to the
    login page rather than refused)."""
    path = scope["path"]
    if not (path == "/" or path.startswith(WEB_PAGES)):
        return False
    headers = dict(scope["headers"])
    return b"hx-request" in headers or b"text/html" in headers.get(b"accept", b"")


async def _to_login(scope: Scope, send: Send) -> None:
    """Send a browser to the login page, to come back to where it was going (htmx, which
    cannot follow a redirect with the whole page, is told to go there instead)."""
    back = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}"
                            if scope.get("query_string") else "")
    target = f"/web/login?{urllib.parse.urlencode({'next': back})}".encode("latin-1")
    if (b"hx-request", b"true") in scope["headers"]:
        headers = [(b"hx-redirect", target), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
    else:
        headers = [(b"location", target), (b"content-length", b"0")]
        await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


async def _refuse(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="caterva2"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
