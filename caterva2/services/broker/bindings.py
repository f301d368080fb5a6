"""Root names bound to the publisher that registered them first.

A publisher proves who it is with a key of its own, made at its first start and kept in its
state directory (``STATEDIR/publisher.key``, readable by its owner only), and sent with every
registration and event in the ``Caterva2-Publisher-Key`` header.  The broker binds a root
name to the key that first registered it and keeps only the key's SHA-256 digest, in
``BROKER_STATEDIR/bindings.json``::

    {"foo": {"key_sha256": "9f86d0...", "bound_at": "2025-01-31T12:00:00Z",
             "address": "localhost:8001"}}

(``address``: where the name was first registered from, for operators.)  No other key may
take the name, whether its publisher is up or down; the same publisher, restarted with the
same state directory, gets it back from any address.  Only an operator frees a name:
``cat2admin --statedir BROKER_STATEDIR release NAME`` (see :mod:`caterva2.tools.admin`).

The admin tool and a running broker share the file.  Every change is made under a lock
(``bindings.lock``, ``flock``) by reading the file anew, changing it and replacing it
atomically; the broker reads the file again whenever it has changed (its inode, size or
time) before deciding anything, so a release takes effect at once, without a restart.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import logging
import os
import pathlib
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from caterva2.statefiles import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: one process at a time there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("caterva2.broker")
FILE, LOCK_FILE = "bindings.json", "bindings.lock"


def key_digest(key: str) -> str:
    """What the broker keeps of a publisher's key: its SHA-256, in hex.  (Keys are random
    and long, made by :func:`secrets.token_urlsafe`, so no salt or slow hash is needed.)"""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Binding:
    """A root name's owner: the digest of its publisher's key, and since when."""

    key_sha256: str
    bound_at: str  # ISO 8601, UTC
    address: str  # where the name was first registered from

    def holds(self, key: str) -> bool:
        """Whether ``key`` is the key this name is bound to (compared in constant time)."""
        return hmac.compare_digest(self.key_sha256, key_digest(key))


class NotABrokerStatedir(Exception):
    """The directory given holds no bindings file: not a broker's state directory."""


class Bindings:
    """The bindings of a broker's state directory (a broker's, or the admin tool's view).

    ``create`` makes an empty bindings file if there is none (a broker, at start); without
    it, a directory without one is refused with NotABrokerStatedir (the admin tool, so that
    a mistyped ``--statedir`` is not taken for an empty broker).  Methods may block on the
    disk: call them from a thread in async code.
    """

    def __init__(self, statedir: pathlib.Path, create: bool = False):
        self.file = pathlib.Path(statedir) / FILE
        self.lock_file = pathlib.Path(statedir) / LOCK_FILE
        self._bindings: dict[str, Binding] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._thread_lock = threading.Lock()
        if not self.file.exists():
            if not create:
                raise NotABrokerStatedir(f"{statedir} is not a broker's state directory (no "
                                         f"{FILE}): give the --statedir of cat2bro")
            self.file.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                if not self.file.exists():
                    atomic_write(self.file, "{}")
        self._stamp = self._file_stamp()
        self._bindings = self._read()  # (ValueError at start: never taken for no bindings)

    def get(self, name: str) -> Binding | None:
        """The binding of ``name``, as the file says now."""
        with self._thread_lock:
            self._reload()
            return self._bindings.get(name)

    def all(self) -> dict[str, Binding]:
        """Every binding, by name, as the file says now."""
        with self._thread_lock:
            self._reload()
            return dict(self._bindings)

    def claim(self, name: str, key: str, address: str) -> Binding | None:
        """Bind ``name`` to ``key`` unless another key holds it.  Returns None if the name
        is (now) bound to ``key``; else the binding that holds it."""
        current = self.get(name)  # (most calls: a publisher registering again)
        if current is not None:
            return None if current.holds(key) else current
        with self._changing() as bindings:
            current = bindings.get(name)
            if current is not None:
                return None if current.holds(key) else current
            now = datetime.datetime.now(datetime.timezone.utc)
            bindings[name] = Binding(key_digest(key), now.strftime("%Y-%m-%dT%H:%M:%SZ"),
                                     address)
        log.info("root name %s bound to the publisher registering it from %s", name, address)
        return None

    def release(self, name: str) -> Binding | None:
        """Free ``name`` for any publisher to take; returns the binding it had (None if it
        had none)."""
        with self._changing() as bindings:
            return bindings.pop(name, None)

    # -- the file ---------------------------------------------------------------------
    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, Binding]]:
        """The bindings as the file says now, to change; written back after the block."""
        with self._thread_lock, self._locked():
            self._reload(force=True)
            bindings = dict(self._bindings)
            yield bindings
            if bindings != self._bindings:
                data = {n: asdict(b) for n, b in sorted(bindings.items())}
                atomic_write(self.file, json.dumps(data, indent=1))
                self._bindings, self._stamp = bindings, self._file_stamp()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Held while the file is read to be changed, and written: by one process at once."""
        with open(self.lock_file, "a") as f:
            if fcntl is not None:
                fcntl.flock(f, fcntl.LOCK_EX)
            yield  # (closing the file ends the lock)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _reload(self, force: bool = False) -> None:
        """Read the file again if it changed since it was last read (or if ``force``)."""
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return
        try:
            self._bindings = self._read()
        except ValueError as e:
            # Never taken as "no bindings" (that would free every name): keep what we had.
            log.error("%s; keeping the bindings read before", e)
            return
        self._stamp = stamp

    def _read(self) -> dict[str, Binding]:
        """The bindings in the file; ValueError if it cannot be read or is malformed."""
        try:
            data = json.loads(self.file.read_text())
            return {str(name): Binding(**value) for name, value in data.items()}
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"cannot read the root name bindings in {self.file}: "
                             f"{type(e).__name__}: {e}") from None
