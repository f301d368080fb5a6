"""``cat2admin``: an operator's commands on a service's state directory.

Examples::

    cat2admin --statedir _caterva2/bro bindings
    cat2admin --statedir _caterva2/bro release foo
    cat2admin --statedir _caterva2/sub adduser alice

Subscriber commands (``--statedir`` is the subscriber's; changes take effect on a running
subscriber at once, see :mod:`caterva2.users`): ``adduser NAME`` (prints the new user's
API key as its last line), ``listusers``, ``deluser NAME``, ``newkey NAME`` (a new key;
the old one stops working).

Broker commands (``--statedir`` is the broker's):

``bindings``
    Every root name and the publisher it is bound to: where that publisher first
    registered it from, and when.
``release NAME``
    Free a root name, so that the next publisher to register it takes it (one whose
    own publisher is gone for good, or moved to a new state directory, and so a new key).
    It takes effect at once on a running broker, which reads its bindings again when they
    change.  If the old publisher still runs, it takes the name back at its next
    registration (within 30 s): stop it first.

NATS commands (``--statedir`` is the broker's; for a deployment on NATS, see
:mod:`caterva2.tools.nats_auth`): ``nats-broker`` (writes ``nats-auth.conf`` for
``nats-server -c`` and prints the broker's ``nats_credentials`` as its last line),
``nats-publisher ROOT`` (a NATS user that may announce changes in ROOT only; prints its
credentials as the last line), ``nats-remove ROOT``, ``nats-users``.

The tool works on the files of the state directory, so it needs to run where they are, as
a user who may write them; it never talks to a service.

Each command is a :class:`Command` in :data:`COMMANDS`: a function given the parsed
arguments, with its own arguments and help.  Commands for other services' state (users of
a subscriber, say) are added the same way.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from caterva2 import paths
from caterva2.services.broker.bindings import Bindings, NotABrokerStatedir
from caterva2.tools.nats_auth import BROKER_USER, NatsUsers
from caterva2.users import UserError, Users


class AdminError(Exception):
    """A command that cannot be done: one line for the operator."""


@dataclass(frozen=True)
class Command:
    """A ``cat2admin`` command: ``run(args)`` prints its outcome, or raises AdminError."""

    name: str
    help: str
    run: Callable[[argparse.Namespace], None]
    arguments: tuple[tuple[str, str], ...] = ()  # (name, help) of each positional argument


# -- broker ---------------------------------------------------------------------------

def broker_bindings(args: argparse.Namespace) -> Bindings:
    try:
        return Bindings(args.statedir)
    except (NotABrokerStatedir, ValueError) as e:  # (ValueError: a damaged file)
        raise AdminError(str(e)) from None


def cmd_bindings(args: argparse.Namespace) -> None:
    bindings = broker_bindings(args).all()
    if args.json:
        print(json.dumps({name: {k: v for k, v in asdict(b).items() if k != "key_sha256"}
                          for name, b in sorted(bindings.items())}))
        return
    if not bindings:
        print("no root names are bound")
    for name, binding in sorted(bindings.items()):
        print(f"{name}  bound {binding.bound_at}  first registered from {binding.address}")


def cmd_release(args: argparse.Namespace) -> None:
    try:
        name = paths.check_root_name(args.name)
    except ValueError as e:
        raise AdminError(str(e)) from None
    released = broker_bindings(args).release(name)
    if released is None:
        raise AdminError(f"root name {name!r} is not bound to any publisher: nothing to "
                         "release")
    if args.json:
        print(json.dumps({"released": name}))
        return
    print(f"released root name {name!r} (bound {released.bound_at}, first registered from "
          f"{released.address}): the next publisher to register it takes it")


# -- NATS -------------------------------------------------------------------------------

def nats_users(args: argparse.Namespace) -> NatsUsers:
    if (args.statedir / "users.json").exists():
        raise AdminError(f"{args.statedir} is a subscriber's state directory: NATS users "
                         "live in the broker's (e.g. _caterva2/bro)")
    try:
        return NatsUsers.load(args.statedir, args.deployment)
    except ValueError as e:
        raise AdminError(str(e)) from None


def _print_nats(args: argparse.Namespace, users: NatsUsers, who: str, section: str,
                user: str) -> None:
    conf = users.save()
    credentials = users.credentials(user)
    if args.json:
        print(json.dumps({"conf": str(conf), "credentials": credentials,
                          "deployment": users.deployment}))
        return
    print(f"NATS users of deployment {users.deployment!r} written to {conf} (start "
          f"nats-server with -c {conf}, or include it; a running one reads it again on: "
          "nats-server --signal reload)")
    print(f"credentials of {who} (CATERVA2_NATS_CREDENTIALS, or nats_credentials in "
          f"[{section}]):")
    print(credentials)


def cmd_nats_broker(args: argparse.Namespace) -> None:
    _print_nats(args, nats_users(args), "the broker", "broker", BROKER_USER)


def cmd_nats_publisher(args: argparse.Namespace) -> None:
    users = nats_users(args)
    try:
        credentials = users.add_publisher(args.root)
    except ValueError as e:
        raise AdminError(str(e)) from None
    _print_nats(args, users, f"the publisher of root {args.root!r}, which may announce "
                             "changes in that root only", "publisher",
                credentials.partition(":")[0])


def cmd_nats_remove(args: argparse.Namespace) -> None:
    users = nats_users(args)
    if not users.remove_publisher(args.root):
        raise AdminError(f"no NATS user for the publisher of root {args.root!r}")
    conf = users.save()
    print(json.dumps({"removed": args.root}) if args.json else
          f"the publisher of root {args.root!r} may no longer announce on NATS once "
          f"nats-server reads {conf} again (nats-server --signal reload)")


def cmd_nats_users(args: argparse.Namespace) -> None:
    users = nats_users(args)
    users.save()
    if args.json:
        print(json.dumps({"deployment": users.deployment, "publishers": users.roots}))
        return
    print(f"deployment {users.deployment!r}: the broker, the reader (anyone without "
          "credentials)" + "".join(f", {u} (root {r})" for u, r in sorted(users.roots.items())))


# -- subscriber ---------------------------------------------------------------------

def subscriber_users(args: argparse.Namespace) -> Users:
    if (args.statedir / "bindings.json").exists():
        raise AdminError(f"{args.statedir} is a broker's state directory: users live in a "
                         "subscriber's (e.g. _caterva2/sub)")
    return Users(args.statedir)


def _print_key(args: argparse.Namespace, name: str, key: str, done: str) -> None:
    if args.json:
        print(json.dumps({"user": name, "key": key}))
        return
    print(f"{done}; its API key, shown only now (give it to {name}, to use as "
          "CATERVA2_API_KEY):")
    print(key)


def cmd_adduser(args: argparse.Namespace) -> None:
    key = subscriber_users(args).add(args.name)
    _print_key(args, args.name, key, f"user {args.name!r} added")


def cmd_newkey(args: argparse.Namespace) -> None:
    key = subscriber_users(args).new_key(args.name)
    _print_key(args, args.name, key, f"user {args.name!r} has a new key (the old one no "
                                     "longer works)")


def cmd_deluser(args: argparse.Namespace) -> None:
    subscriber_users(args).remove(args.name)
    print(json.dumps({"deleted": args.name}) if args.json
          else f"user {args.name!r} deleted (its key no longer works)")


def cmd_listusers(args: argparse.Namespace) -> None:
    names = subscriber_users(args).names()
    if args.json:
        print(json.dumps(names))
    elif not names:
        print("no users (cat2admin --statedir DIR adduser NAME makes one)")
    for name in names:
        print(name)


USER = (("name", "the user's name, e.g. alice"),)
COMMANDS = [
    Command("bindings", "list root names and the publishers they are bound to (broker)",
            cmd_bindings),
    Command("release", "free a root name for another publisher to take (broker)",
            cmd_release, (("name", "the root name, e.g. foo"),)),
    Command("adduser", "add a user and print its API key, as the last line (subscriber)",
            cmd_adduser, USER),
    Command("listusers", "list the users (subscriber)", cmd_listusers),
    Command("deluser", "delete a user (subscriber)", cmd_deluser, USER),
    Command("newkey", "give a user a new API key, printed as the last line; the old one "
            "stops working (subscriber)", cmd_newkey, USER),
    Command("nats-broker", "write the NATS users' nats-server configuration; print the "
            "broker's NATS credentials as the last line (broker)", cmd_nats_broker),
    Command("nats-publisher", "a NATS user that may announce changes in ROOT only (a new "
            "password if it has one); its credentials are the last line (broker)",
            cmd_nats_publisher, (("root", "the root's name, e.g. foo"),)),
    Command("nats-remove", "remove the NATS user of ROOT's publisher (broker)",
            cmd_nats_remove, (("root", "the root's name, e.g. foo"),)),
    Command("nats-users", "list the NATS users (broker)", cmd_nats_users),
]


# -- the program ----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cat2admin", description="Caterva2 administration: commands on the state "
        "directory of a service (run them where it is).")
    parser.add_argument("--statedir", required=True, type=pathlib.Path,
                        help="the service's state directory, e.g. _caterva2/bro for cat2bro")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--deployment", help="NATS commands: the deployment's name "
                                             "(nats_deployment of cat2bro; default: main)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        for name, help_ in command.arguments:
            p.add_argument(name, help=help_)
        p.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if not args.statedir.is_dir():
            raise AdminError(f"{args.statedir} is not a directory")
        args.run(args)
    except (AdminError, UserError) as e:
        print(f"cat2admin: error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"cat2admin: error: {e.strerror or e} ({args.statedir})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
