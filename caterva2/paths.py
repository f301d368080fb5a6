"""Names that come from outside (URLs, other services): roots and dataset paths.

This is also where a dataset's kind is decided from its name (:func:`dataset_kind`).
"""
from __future__ import annotations

from typing import Literal

Kind = Literal["ndarray", "frame", "file"]


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
    backslashes or NUL — so that it can never name a file outside a root or a cache.
    """
    if not path or path.startswith("/") or "\\" in path or "\0" in path:
        raise ValueError(f"invalid dataset path {path!r}: must be relative")
    if any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"invalid dataset path {path!r}: no '..', '.' or empty parts")
    return path


def check_root_name(name: str) -> str:
    """Return ``name`` if it can name a root (one path component), else raise ValueError."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"invalid root name {name!r}")
    return name


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
