"""Tables of array selections for the Data tab.

A table shows a selection with at most two dimensions left (fix the others with an
index), of at most :data:`MAX_CELLS` cells; rows and columns are labelled with the
indices they have in the dataset.  Structured arrays get a column per field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from caterva2 import slicing

MAX_CELLS = 10_000  # cells of a table, at most (a larger selection: narrow it, or download)
DEFAULT_ROWS, DEFAULT_COLUMNS = 50, 12


class BadTable(ValueError):
    """A selection that cannot be shown as a table (→ 400, saying what to do)."""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[tuple[str, list[str]]]  # (label, cells)
    corner: str = ""  # what the row labels are


def default_slice(shape: tuple[int, ...]) -> str:
    """What the Data tab shows first: the first rows (and columns) of the first plane."""
    if not shape:
        return ""
    if len(shape) == 1:
        return f"0:{min(shape[0], DEFAULT_ROWS)}"
    return ", ".join(["0"] * (len(shape) - 2) + [f"0:{min(shape[-2], DEFAULT_ROWS)}",
                                                 f"0:{min(shape[-1], DEFAULT_COLUMNS)}"])


def check_size(key: slicing.Key, shape: tuple[int, ...], nfields: int) -> slicing.Plan:
    """The plan of a selection fit for a table; BadTable (or SelectionError) if not."""
    plan = slicing.plan(key, shape)
    if len(plan.result_shape) > 2:
        raise BadTable(f"a table shows at most 2 dimensions, and this selection has "
                       f"{len(plan.result_shape)}: fix the others with an index "
                       f"(e.g. {default_slice(shape)!r})")
    cells = math.prod(plan.result_shape) * max(nfields, 1)
    if cells > MAX_CELLS:
        raise BadTable(f"this selection has {cells} cells, and a table shows at most "
                       f"{MAX_CELLS}: narrow it (or download the dataset)")
    return plan


def indices(key: slicing.Key, shape: tuple[int, ...]) -> list[range]:
    """For each dimension of a selection's result, the dataset indices it holds."""
    at = next((i for i, item in enumerate(key) if item is Ellipsis), None)
    if at is not None:
        every = (slice(None),) * max(0, len(shape) - len(key) + 1)
        key = tuple(key[:at]) + every + tuple(key[at + 1:])
    key = tuple(key) + (slice(None),) * (len(shape) - len(key))
    return [range(*item.indices(n)) for item, n in zip(key, shape) if isinstance(item, slice)]


def table(data: np.ndarray, labels: list[range]) -> Table:
    """``data`` (0 to 2 dimensions) as a table, labelled with ``labels`` (see
    :func:`indices`)."""
    fields = data.dtype.names
    if data.ndim == 0:
        return Table(list(fields) if fields else ["value"], [("", _cells(data[()], fields))])
    if data.ndim == 1:
        return Table(list(fields) if fields else ["value"],
                     [(str(i), _cells(v, fields)) for i, v in zip(labels[0], data)])
    return Table([str(j) for j in labels[1]],
                 [(str(i), [format_value(v) for v in row]) for i, row in zip(labels[0], data)],
                 corner="row \\ column")


def _cells(value, fields) -> list[str]:
    if fields:
        return [format_value(value[f]) for f in fields]
    return [format_value(value)]


def format_value(value) -> str:
    """One item as a table shows it: numbers with 6 significant digits, text as text."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="backslashreplace")
    if isinstance(value, (np.floating, float)):
        return f"{value:.6g}"
    if isinstance(value, (np.complexfloating, complex)):
        return f"{value.real:.6g}{value.imag:+.6g}j"
    if isinstance(value, np.void) and value.dtype.names:
        return "(" + ", ".join(format_value(value[f]) for f in value.dtype.names) + ")"
    return str(value)
