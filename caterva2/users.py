"""The users of a subscriber and their API keys, kept in ``STATEDIR/users.json``.

A user is a name and one API key.  A key is 256 random bits (:func:`secrets.token_urlsafe`)
shown once, when made (``cat2admin --statedir DIR adduser NAME``, or ``newkey NAME``);
the file keeps only each key's SHA-256, so a copy of it lets nobody in.  Clients present
their key as ``Authorization: Bearer KEY``.

The file is written whole under a new name, then renamed over the old one, so a running
subscriber reading it sees the users before or after a change, never half of one; it
notices the change on the next request (a ``stat`` per request), so users added or
deleted take effect without a restart.  Changes by ``cat2admin`` hold a lock, so two at
once do not lose one another's.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import pathlib
import re
import secrets
import threading
from collections.abc import Iterator
from typing import Any

from caterva2.statefiles import atomic_write

USERS_FILE = "users.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class UserError(ValueError):
    """A user that cannot be added, found or changed (the message says why)."""


def check_user_name(name: str) -> str:
    """``name`` if it can name a user (letters, digits, ``_.@-``, at most 64), else
    UserError."""
    if not _NAME.fullmatch(name):
        raise UserError(f"invalid user name {name!r}: use 1 to 64 letters, digits and "
                        "_.@- (starting with a letter or digit)")
    return name


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Users:
    """The users kept in ``statedir``: for ``cat2admin`` to change, for the subscriber to
    check keys against (re-read whenever the file changes)."""

    def __init__(self, statedir: pathlib.Path):
        self.file = pathlib.Path(statedir) / USERS_FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None  # (inode, size, mtime) last read
        self._users: dict[str, dict[str, Any]] = {}
        self._by_hash: dict[str, str] = {}

    # -- reading ---------------------------------------------------------------------
    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.file.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {self.file}: {e}") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise UserError(f"{self.file} is not a users file")
        return users

    def _current(self) -> dict[str, dict[str, Any]]:
        """The users as the file says now (read again only if it changed)."""
        try:
            st = self.file.stat()
            seen: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            seen = None
        with self._lock:
            if seen != self._seen or seen is None:
                self._users = self._read() if seen is not None else {}
                self._by_hash = {u.get("key_sha256", ""): name
                                 for name, u in self._users.items()}
                self._seen = seen
            return self._users

    def names(self) -> list[str]:
        """Every user's name, sorted."""
        return sorted(self._current())

    def user_for(self, key: str) -> str | None:
        """The user whose API key is ``key``, or None."""
        self._current()
        return self._by_hash.get(_key_hash(key)) if key else None

    # -- changing (cat2admin) --------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The users, to change in place; written back when the block ends well."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        lock_file = self.file.with_name(self.file.name + ".lock")
        with open(lock_file, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = self._read()
            yield users
            # (readable by its owner only, as atomic_write's files are)
            atomic_write(self.file, json.dumps({"users": users}, indent=1, sort_keys=True))

    def add(self, name: str) -> str:
        """Add user ``name``; returns its API key (shown only now)."""
        check_user_name(name)
        with self._changing() as users:
            if name in users:
                raise UserError(f"user {name!r} exists already (newkey gives it a new key)")
            key = secrets.token_urlsafe(32)
            users[name] = {"key_sha256": _key_hash(key), "created": _now()}
        return key

    def new_key(self, name: str) -> str:
        """Give user ``name`` a new API key (the old one stops working); returns it."""
        with self._changing() as users:
            if name not in users:
                raise UserError(f"no user {name!r}")
            key = secrets.token_urlsafe(32)
            users[name] = {**users[name], "key_sha256": _key_hash(key), "key_made": _now()}
        return key

    def remove(self, name: str) -> None:
        """Delete user ``name`` (its key stops working)."""
        with self._changing() as users:
            if users.pop(name, None) is None:
                raise UserError(f"no user {name!r}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
