"""NATS users for a deployment on NATS, and the ``nats-server`` configuration that holds them.

``cat2admin --statedir BROKER_STATEDIR nats-publisher ROOT`` (and ``nats-broker``) keep
the users in ``BROKER_STATEDIR/nats-users.json`` and write
``BROKER_STATEDIR/nats-auth.conf`` (both readable by their owner only), a configuration
that ``nats-server -c`` takes as it is, or that the operator's own includes
(``include nats-auth.conf``).  Each user may do only its part (subjects as in
:mod:`caterva2.services.nats_bus`, for the deployment ``D``, ``main`` unless
``cat2admin --deployment D`` said otherwise the first time):

- ``caterva2-broker``: keeps the stream (the JetStream API) and announces roots, on
  ``caterva2.D.root.*``;
- ``caterva2-pub-ROOT``, one per root (a publisher serves one): announces the changes of
  ROOT on ``caterva2.D.change.ROOT`` and nothing else;
- ``caterva2-reader``: reads the stream (creates consumers on it, nothing more) and
  publishes nowhere; connections without credentials are taken as this user
  (``no_auth_user``), so subscribers need none, as they need none at the broker.

Nobody else may connect: so nobody without credentials announces or forges a change.
Passwords are made here (32 random URL-safe characters) and kept as they are, since
``nats-server`` must compare them; they are shown once, when made, as
``USER:PASSWORD``, the form ``CATERVA2_NATS_CREDENTIALS`` (or ``nats_credentials``) takes.
A running ``nats-server`` reads the file again on ``nats-server --signal reload`` (or
SIGHUP).
"""
from __future__ import annotations

import json
import pathlib
import secrets
from dataclasses import dataclass
from typing import Any

from caterva2 import paths
from caterva2.services import nats_bus
from caterva2.statefiles import atomic_write, read_json

USERS_FILE = "nats-users.json"
CONF_FILE = "nats-auth.conf"
BROKER_USER = "caterva2-broker"
READER_USER = "caterva2-reader"
PUBLISHER_PREFIX = "caterva2-pub-"


@dataclass
class NatsUsers:
    """The deployment's NATS users: the broker's, the reader's and one per root."""

    statedir: pathlib.Path
    deployment: str
    passwords: dict[str, str]  # user: password
    roots: dict[str, str]  # publisher user: its root

    @classmethod
    def load(cls, statedir: pathlib.Path, deployment: str | None = None) -> NatsUsers:
        """The users on file (the broker's and the reader's made if missing).
        ValueError if ``deployment`` is not the one they were made for."""
        data = read_json(pathlib.Path(statedir) / USERS_FILE, {})
        data = data if isinstance(data, dict) else {}
        on_file = data.get("deployment")
        if deployment is not None and on_file is not None and deployment != on_file:
            raise ValueError(f"the NATS users of {statedir} are for deployment {on_file!r}, "
                             f"not {deployment!r}")
        users = cls(pathlib.Path(statedir),
                    nats_bus.check_deployment(deployment or on_file or
                                              nats_bus.DEFAULT_DEPLOYMENT),
                    dict(data.get("passwords", {})), dict(data.get("roots", {})))
        for user in (BROKER_USER, READER_USER):
            users.passwords.setdefault(user, secrets.token_urlsafe(24))
        return users

    def add_publisher(self, root: str) -> str:
        """A user for the publisher of ``root`` (a new password if it had one); its
        ``USER:PASSWORD``."""
        paths.check_root_name(root)
        user = PUBLISHER_PREFIX + root
        self.passwords[user] = secrets.token_urlsafe(24)
        self.roots[user] = root
        return f"{user}:{self.passwords[user]}"

    def remove_publisher(self, root: str) -> bool:
        user = PUBLISHER_PREFIX + root
        self.roots.pop(user, None)
        return self.passwords.pop(user, None) is not None

    def credentials(self, user: str) -> str:
        return f"{user}:{self.passwords[user]}"

    def save(self) -> pathlib.Path:
        """Write the users and the server's configuration; the configuration's path."""
        data = {"deployment": self.deployment, "passwords": self.passwords,
                "roots": self.roots}
        atomic_write(self.statedir / USERS_FILE, json.dumps(data, indent=1))
        conf = self.statedir / CONF_FILE
        atomic_write(conf, self.server_conf())
        return conf

    def server_conf(self) -> str:
        """The ``authorization`` block of ``nats-server``'s configuration."""
        d, stream = self.deployment, nats_bus.stream_name(self.deployment)
        users = [self._user(BROKER_USER, [f"caterva2.{d}.root.*", "$JS.API.>"]),
                 self._user(READER_USER, [
                     "$JS.API.INFO", f"$JS.API.STREAM.INFO.{stream}",
                     f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
                     f"$JS.FC.{stream}.>"])]
        users += [self._user(user, [nats_bus.change_subject(d, root)])
                  for user, root in sorted(self.roots.items())]
        lines = "\n".join(f"    {json.dumps(u)}" for u in users)
        return (f"# Caterva2's NATS users for deployment {d!r}, written by cat2admin: "
                "do not edit,\n# change them with cat2admin (nats-publisher, "
                "nats-remove), then: nats-server --signal reload\n"
                f"authorization {{\n  users = [\n{lines}\n  ]\n}}\n"
                f"no_auth_user: {json.dumps(READER_USER)}\n")

    def _user(self, user: str, publish: list[str]) -> dict[str, Any]:
        # Replies (JetStream's acknowledgements, a consumer's messages) come to _INBOX.
        return {"user": user, "password": self.passwords[user], "permissions": {
            "publish": {"allow": publish}, "subscribe": {"allow": ["_INBOX.>"]}}}
