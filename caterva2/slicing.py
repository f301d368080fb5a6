"""Selections: parsing the ``slice_`` text of the REST API and planning what it touches.

A selection is written as in Python, one item per dimension separated by commas:
``3``, ``2:10``, ``::2``, ``1, 0:5, ::3``, and at most one ``...`` standing for every
dimension not written.  Whitespace is allowed; brackets are optional.  This is NumPy's
basic indexing without new axes: lists, arrays and masks select nothing here (index the
result with NumPy instead).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from types import EllipsisType

KeyItem = int | slice | EllipsisType
Key = tuple[KeyItem, ...]


class SelectionError(ValueError, IndexError):
    """A selection that is malformed or does not fit the dataset's shape.

    It is also an IndexError, as NumPy raises for indices that do not fit."""


def as_key(obj) -> Key:
    """A selection given as Python indexing (``obj[key]``), checked: a tuple of ints,
    slices of ints and at most one Ellipsis (``None``: everything)."""
    if obj is None:
        return ()
    items = obj if isinstance(obj, tuple) else (obj,)
    key: list[KeyItem] = []
    for item in items:
        if isinstance(item, slice):
            key.append(slice(*(None if v is None else _integer(v, "slice bounds")
                               for v in (item.start, item.stop, item.step))))
        elif item is Ellipsis:
            key.append(item)
        else:
            key.append(_integer(item, "indices"))
    if sum(item is Ellipsis for item in key) > 1:
        raise SelectionError("a selection can hold only one '...'")
    return tuple(key)


def _integer(value, what: str) -> int:
    if isinstance(value, bool) or value is None:  # (NumPy takes these as a mask, a new axis)
        shown = "None (a new axis)" if value is None else f"{value} (a boolean)"
        raise SelectionError(f"{shown} is not a valid selection item: use integers, "
                             "slices (start:stop:step) and '...'")
    try:
        return operator.index(value)
    except TypeError:
        shown = repr(value) if len(repr(value)) <= 40 else type(value).__name__
        raise SelectionError(
            f"{what} must be integers, not {shown}: select with integers, slices "
            "(start:stop:step) and '...', then index the result with NumPy for lists, "
            "arrays or masks") from None


def parse_slice(text: str | None) -> Key:
    """Parse selection text into a key (see :func:`as_key`; empty tuple: everything)."""
    if text is None:
        return ()
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1].strip()
    if not text:
        return ()
    items = text.split(",")
    if len(items) > 1 and not items[-1].strip():
        items.pop()  # one trailing comma, as in Python: "1," is (1,)
    key: list[KeyItem] = []
    for item in items:
        item = item.strip()
        try:
            if item == "...":
                key.append(Ellipsis)
            elif ":" in item:
                parts = [p.strip() for p in item.split(":")]
                if len(parts) > 3:
                    raise ValueError
                key.append(slice(*[int(p) if p else None for p in parts]))
            else:
                key.append(int(item))
        except ValueError:
            raise SelectionError(
                f"malformed selection {text!r}: expected items like 3, 2:10, ::2 or ..., "
                "separated by commas") from None
    return as_key(tuple(key))


def format_slice(key) -> str:
    """The inverse of :func:`parse_slice`: selection text for ints, slices or tuples of them."""
    parts = []
    for item in as_key(key):
        if isinstance(item, slice):
            part = ":".join("" if v is None else str(v) for v in (item.start, item.stop))
            if item.step not in (None, 1):
                part += f":{item.step}"
            parts.append(part)
        else:
            parts.append("..." if item is Ellipsis else str(item))
    return ",".join(parts)


@dataclass(frozen=True)
class Plan:
    """How to answer a selection on an array of ``shape``.

    ``region`` is the smallest box (one ``slice(start, stop)`` per dimension) holding
    every selected element; ``within`` selects the answer from that box with NumPy
    (steps, reversals and dropped integer dimensions included).
    """

    region: tuple[slice, ...]
    within: tuple
    result_shape: tuple[int, ...]


def plan(key: Key, shape: tuple[int, ...]) -> Plan:
    """Plan a selection on ``shape``; raises SelectionError when it does not fit."""
    at = next((i for i, item in enumerate(key) if item is Ellipsis), None)
    if at is not None:
        every = (slice(None),) * max(0, len(shape) - len(key) + 1)
        key = tuple(key[:at]) + every + tuple(key[at + 1:])
    if len(key) > len(shape):
        raise SelectionError(
            f"too many indices: {len(key)} given for a dataset with {len(shape)} dimensions")
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    region: list[slice] = []
    within: list[int | slice] = []
    result_shape: list[int] = []
    for dim, (item, n) in enumerate(zip(key, shape)):
        if isinstance(item, slice):
            if item.step == 0:
                raise SelectionError("slice step cannot be zero")
            r = range(*item.indices(n))
            if len(r) == 0:
                region.append(slice(0, 0))
                within.append(slice(0, 0))
                result_shape.append(0)
                continue
            lo, hi = min(r[0], r[-1]), max(r[0], r[-1]) + 1
            stop = r[-1] - lo + (1 if r.step > 0 else -1)
            region.append(slice(lo, hi))
            within.append(slice(r[0] - lo, None if stop < 0 else stop, r.step))
            result_shape.append(len(r))
        else:
            assert isinstance(item, int)  # (the ellipsis was expanded above)
            i = item
            if not -n <= i < n:
                raise SelectionError(
                    f"index {i} is out of range for dimension {dim} of size {n}")
            i %= n
            region.append(slice(i, i + 1))
            within.append(0)
    return Plan(tuple(region), tuple(within), tuple(result_shape))


def plan_bytes(key: Key, nitems: int) -> Plan:
    """Plan a selection on a one-dimensional sequence of ``nitems`` items (SChunks)."""
    return plan(key, (nitems,))
