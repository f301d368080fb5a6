"""Names that come from outside (URLs, other services): roots and dataset paths.

This is also where a dataset's kind is decided from its name (:func:`dataset_kind`).
"""
from __future__ import annotations

import re
from typing import Any, Literal

Kind = Literal["ndarray", "frame", "file"]
MAX_PATH_LENGTH = 1024  # characters in a dataset path (relative to its root)


def dataset_kind(path: str) -> Kind:
    """What a dataset is, from its name: ``.b2nd`` is a Blosc2 NDArray (``"ndarray"``),
    ``.b2frame`` a Blosc2 SChunk of bytes (``"frame"``), anything else an ordinary file
    (``"file"``), which publishers serve compressed as an SChunk."""
    if path.endswith(".b2nd"):
        return "ndarray"
    if path.endswith(".b2frame"):
        return "frame"
    return "file"


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a safe relative dataset path, else raise ValueError.

    Safe means: ``/``-separated, not absolute, no ``..``, ``.`` or empty parts, no
    backslashes or NUL — so that it can never name a file outside a root or a cache —
    and at most :data:`MAX_PATH_LENGTH` characters.
    """
    if len(path) > MAX_PATH_LENGTH:
        raise ValueError(f"invalid dataset path {shorten(path)}: longer than "
                         f"{MAX_PATH_LENGTH} characters")
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise ValueError(f"invalid dataset path {shorten(path)}: must be relative")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"invalid dataset path {shorten(path)}: no '..', '.' or empty parts")
    return path


MAX_ROOT_NAME = 100  # characters in a root name
_ROOT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


def check_root_name(name: str) -> str:
    """Return ``name`` if it can name a root, else raise ValueError.

    A root name is 1 to :data:`MAX_ROOT_NAME` characters: ASCII letters, digits, ``_``,
    ``.``, ``+`` and ``-``, not starting with ``.``, ``+`` or ``-`` (so it is one path
    component, never hidden, never taken for a command-line option, and the same in
    every URL, file name and terminal).
    """
    if not isinstance(name, str) or len(name) > MAX_ROOT_NAME \
            or not _ROOT_NAME.fullmatch(name):
        raise ValueError(f"invalid root name {shorten(name)}: {_ROOT_NAME_RULE}")
    return name


_ROOT_NAME_RULE = (f"1 to {MAX_ROOT_NAME} ASCII letters, digits, '_', '.', '+' or '-', "
                   "not starting with '.', '+' or '-'")

# The same rules as JSON Schemas, for the services' OpenAPI schemas.  Their patterns end
# with _END, not $: Python's $ also matches before a final newline, JSON Schema's does not.
_END = r"(?![\s\S])"
ROOT_NAME_SCHEMA: dict[str, Any] = {
    "type": "string", "description": f"A root's name: {_ROOT_NAME_RULE}",
    "pattern": f"^{_ROOT_NAME.pattern}{_END}", "maxLength": MAX_ROOT_NAME}
_PART = r"(?:[^/\\\x00.][^/\\\x00]*|\.[^/\\\x00.][^/\\\x00]*|\.\.[^/\\\x00]+)"  # not . nor ..
DATASET_PATH_SCHEMA: dict[str, Any] = {
    "type": "string", "maxLength": MAX_PATH_LENGTH, "pattern": f"^{_PART}(?:/{_PART})*{_END}",
    "description": "A dataset's path in its root: parts separated by '/', none empty, '.' "
                   f"or '..', no '\\' or NUL; at most {MAX_PATH_LENGTH} characters"}


def shorten(text: object, most: int = 40) -> str:
    """``repr(text)``, cut to about ``most`` characters: for error messages about input
    that may be huge (which must not come back whole in the answer)."""
    shown = repr(text)
    return shown if len(shown) <= most else f"{shown[:most]}... ({len(str(text))} characters)"


def split_dataset(dataset: str) -> tuple[str, str]:
    """``"foo/dir1/a.b2nd"`` → ``("foo", "dir1/a.b2nd")``; ValueError if it is not of that
    form (an absolute path such as ``/etc/passwd`` is not)."""
    root, sep, path = str(dataset).partition("/")
    if not root or not sep or not path:
        raise ValueError(f"{dataset!r} is not ROOT/PATH (e.g. foo/dir1/ds-2d.b2nd)")
    return check_root_name(root), check_relpath(path)


def check_name(name: str) -> str:
    """Return ``name`` if it is a root name or ROOT/PATH, else raise ValueError."""
    if "/" in name:
        split_dataset(name)
    else:
        check_root_name(name)
    return name


MAX_ADDRESS_LENGTH = 300  # characters in a publisher's address (a host name has <= 253)
# A host name or IPv4 address (letters, digits, '_', '.', '-'), or an IPv6 one in brackets:
# nothing that could add a user, a path, a query or a fragment to the URLs made from it.
_HOST = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\]")


_PORT = (r"0*(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]"
         r"|6553[0-5])")
# What check_address takes, as a JSON Schema (for the broker's OpenAPI schema).
ADDRESS_SCHEMA: dict[str, Any] = {
    "type": "string", "maxLength": MAX_ADDRESS_LENGTH,
    "description": "Where the publisher is: HOST:PORT, http://HOST:PORT or https://HOST:PORT",
    "pattern": rf"^\s*(?:[Hh][Tt][Tt][Pp][Ss]?://(?:{_HOST.pattern}):{_PORT}/?"
               rf"|(?:{_HOST.pattern}):{_PORT})\s*{_END}"}


def check_address(text: str, what: str = "publisher address") -> str:
    """The address of a publisher, from ``HOST:PORT`` or ``http://HOST:PORT`` (kept as
    ``HOST:PORT``), or ``https://HOST:PORT`` for one that listens with TLS (kept so; a
    trailing ``/`` allowed); ValueError for anything else.

    Subscribers and brokers make URLs by putting a path after this address, so other
    schemes, paths, queries, fragments, user names, odd characters in the host and a
    missing or zero port are all refused.  IPv6 hosts go in brackets (``[::1]:8001``).

    >>> check_address("http://gateway.example.org:8080/")
    'gateway.example.org:8080'
    """
    bad = f"bad {what} {shorten(text)}: expected HOST:PORT or http(s)://HOST:PORT"
    if not isinstance(text, str) or len(text) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"{bad} (at most {MAX_ADDRESS_LENGTH} characters)")
    address, scheme = text.strip(), "http"
    if "://" in address:
        scheme, _, address = address.partition("://")
        scheme = scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{bad} (only http and https)")
        address = address.removesuffix("/")
        if any(c in address for c in "/?#@"):
            raise ValueError(f"{bad} (no path, query or user: subscribers add their own)")
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not port.isdecimal() or not port.isascii() \
            or not 0 < int(port) <= 65535:
        raise ValueError(f"{bad} (a host, and a port from 1 to 65535)")
    return f"{host}:{int(port)}" if scheme == "http" else f"https://{host}:{int(port)}"
