"""Selections: parsing the ``slice_`` text of the REST API and planning what it touches.

A selection is written as in Python, one item per dimension separated by commas:
``3``, ``2:10``, ``::2``, ``1, 0:5, ::3``.  Whitespace is allowed; brackets are optional.
"""
from __future__ import annotations

from dataclasses import dataclass

Key = tuple["int | slice", ...]


class SelectionError(ValueError):
    """A selection that is malformed or does not fit the dataset's shape."""


def parse_slice(text: str | None) -> Key:
    """Parse selection text into a tuple of ints and slices (empty tuple: everything)."""
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
    key = []
    for item in items:
        item = item.strip()
        try:
            if ":" in item:
                parts = [p.strip() for p in item.split(":")]
                if len(parts) > 3:
                    raise ValueError
                key.append(slice(*[int(p) if p else None for p in parts]))
            else:
                key.append(int(item))
        except ValueError:
            raise SelectionError(
                f"malformed selection {text!r}: expected items like 3, 2:10 or ::2, "
                "separated by commas") from None
    return tuple(key)


def format_slice(key) -> str:
    """The inverse of :func:`parse_slice`: selection text for ints, slices or tuples of them."""
    if key is None or key == () or key == slice(None):
        return ""
    if not isinstance(key, tuple):
        key = (key,)
    parts = []
    for item in key:
        if isinstance(item, slice):
            part = ":".join("" if v is None else str(int(v))
                            for v in (item.start, item.stop))
            if item.step not in (None, 1):
                part += f":{int(item.step)}"
            parts.append(part)
        elif item is Ellipsis:
            raise SelectionError("Ellipsis (...) is not supported in selections")
        else:
            parts.append(str(int(item)))
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
    if len(key) > len(shape):
        raise SelectionError(
            f"too many indices: {len(key)} given for a dataset with {len(shape)} dimensions")
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    region, within, result_shape = [], [], []
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
            i = int(item)
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
