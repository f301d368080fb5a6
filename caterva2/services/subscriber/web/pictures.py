"""Pictures of arrays for the web pages: planes as PNG images with a colormap, 1-D data as
an SVG line plot.

Both are made on the server from a bounded read: a plane is read with a step so that
neither side of the image exceeds :data:`MAX_SIDE` pixels, a line with a step so that it
has at most :data:`MAX_POINTS` points.  Colormaps come from the ``cmap`` package (the
matplotlib and CET tables); images are encoded by Pillow.
"""
from __future__ import annotations

import functools
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import cmap
import numpy as np
from PIL import Image

from caterva2 import slicing

MAX_SIDE = 600  # pixels along each side of an image, at most
MAX_POINTS = 2000  # points of a line plot, at most
COLORMAPS = ("viridis", "magma", "cividis", "gray", "RdBu")
PLOT_WIDTH, PLOT_HEIGHT = 720, 280  # the SVG plot's own units (it scales with the page)


class BadChoice(ValueError):
    """A choice of plane, index or colormap that does not fit the dataset (→ 400)."""


@dataclass(frozen=True)
class Plane:
    """Which 2-D plane of an N-D array to show: axes ``y`` (rows) and ``x`` (columns), the
    index along every other axis (None on the plane's own axes), and the colormap."""

    y: int
    x: int
    index: tuple[int | None, ...]
    colormap: str

    @classmethod
    def choose(cls, shape: tuple[int, ...], params: Mapping[str, str]) -> Plane:
        """The plane asked for by query parameters ``y``, ``x``, ``i0``, ``i1``... and
        ``cmap`` (defaults: the last two axes, the middle of every other one, viridis).
        BadChoice for anything that does not fit ``shape``."""
        ndim = len(shape)
        if ndim < 2:
            raise BadChoice(f"an image needs at least 2 dimensions; this dataset has {ndim}")
        y = _int_param(params, "y", ndim - 2, 0, ndim - 1, "axis")
        x = _int_param(params, "x", ndim - 1, 0, ndim - 1, "axis")
        if y == x:
            raise BadChoice(f"the rows and the columns of the image need two different "
                            f"axes (both are {y})")
        index = tuple(None if d in (y, x) else
                      _int_param(params, f"i{d}", n // 2, 0, n - 1, f"index along axis {d}")
                      for d, n in enumerate(shape))
        colormap = params.get("cmap", COLORMAPS[0])
        if colormap not in COLORMAPS:
            raise BadChoice(f"unknown colormap {colormap[:40]!r}; choose one of "
                            f"{', '.join(COLORMAPS)}")
        return cls(y, x, index, colormap)

    def steps(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """The read steps along ``y`` and ``x`` that keep each side within MAX_SIDE."""
        return (max(1, math.ceil(shape[self.y] / MAX_SIDE)),
                max(1, math.ceil(shape[self.x] / MAX_SIDE)))

    def key(self, shape: tuple[int, ...]) -> slicing.Key:
        """The selection to read: the plane, with a step along its axes."""
        steps = dict(zip((self.y, self.x), self.steps(shape)))
        return tuple(slice(None, None, steps[d]) if i is None else i
                     for d, i in enumerate(self.index))

    def oriented(self, data: np.ndarray) -> np.ndarray:
        """The plane as read (axes in the array's order), with ``y`` as its rows."""
        return data.T if self.y > self.x else data

    def query(self) -> dict[str, str]:
        """The query parameters that choose this plane."""
        params = {"y": str(self.y), "x": str(self.x), "cmap": self.colormap}
        params.update({f"i{d}": str(i) for d, i in enumerate(self.index) if i is not None})
        return params


def _int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int,
               what: str) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadChoice(f"{name} must be an integer ({what}), not {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise BadChoice(f"{name}={value} is out of range: the {what} goes from {lo} to {hi}")
    return value


def numeric(data: np.ndarray) -> tuple[np.ndarray, str]:
    """``data`` as floats for a picture, and what they are (complex numbers: their
    magnitude).  BadChoice for data that has no numbers to draw (strings, records)."""
    kind = data.dtype.kind
    if kind in "biuf":
        return data.astype(np.float64, copy=False), "value"
    if kind == "c":
        return np.abs(data), "magnitude"
    raise BadChoice(f"{data.dtype} data has no numbers to draw: see the Data tab")


@dataclass(frozen=True)
class Picture:
    """A PNG image of a plane and its colour scale."""

    png: bytes
    vmin: float
    vmax: float
    what: str  # what the colours stand for ("value", "magnitude")
    shape: tuple[int, int]  # rows and columns of the image

    def ticks(self) -> list[tuple[float, str]]:
        """Labels along the colour bar: (percent from its left end, label)."""
        span = self.vmax - self.vmin
        if span == 0:
            return [(50.0, label(self.vmin))]
        return [(100 * (v - self.vmin) / span, label(v))
                for v in nice_ticks(self.vmin, self.vmax)]


def nice_ticks(lo: float, hi: float, most: int = 6) -> list[float]:
    """Round values between ``lo`` and ``hi`` (1, 2 or 5 times a power of ten apart), at
    most ``most`` of them, for the labels of an axis."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = math.floor((hi - first) / step + 1e-9) + 1
    # (rounded to 12 digits: 0.6, not the 0.6000000000000001 of 3 * 0.2)
    return [0.0 if abs(v) < step * 1e-9 else float(f"{v:.12g}")
            for v in (first + i * step for i in range(count))]


def label(value: float) -> str:
    """A tick's label: short, with no needless digits."""
    return f"{value:.6g}"


@functools.lru_cache(maxsize=len(COLORMAPS))
def lut(name: str) -> np.ndarray:
    """256 RGB colours (uint8) of colormap ``name``."""
    rgba = cmap.Colormap(name).lut(256)
    return np.round(np.asarray(rgba)[:, :3] * 255).astype(np.uint8)


def gradient(name: str, stops: int = 16) -> str:
    """A CSS ``linear-gradient`` of colormap ``name``, for a colour bar."""
    colours = lut(name)[np.linspace(0, 255, stops).round().astype(int)]
    return "linear-gradient(to right, " + ", ".join(
        f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


NAN_COLOUR = (200, 200, 200)  # NaN and infinities: light grey


def picture(plane: np.ndarray, colormap: str) -> Picture:
    """A 2-D array as a PNG image in ``colormap``, scaled from its least to its greatest
    finite value."""
    values, what = numeric(plane)
    finite = np.isfinite(values)
    vmin = float(values[finite].min()) if finite.any() else 0.0
    vmax = float(values[finite].max()) if finite.any() else 0.0
    span = vmax - vmin
    scaled = np.zeros(values.shape) if span == 0 else (np.where(finite, values, vmin)
                                                        - vmin) / span
    rgb = lut(colormap)[np.clip((scaled * 255).round(), 0, 255).astype(np.uint8)]
    rgb[~finite] = NAN_COLOUR
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(out, "PNG", compress_level=6)
    return Picture(out.getvalue(), vmin, vmax, what, (plane.shape[0], plane.shape[1]))


@dataclass(frozen=True)
class LinePlot:
    """A line plot in SVG units: the polyline's points and the axes' labels."""

    points: str
    xticks: list[tuple[float, str]]  # (position, label)
    yticks: list[tuple[float, str]]
    what: str
    step: int  # one point every ``step`` elements
    width: int = PLOT_WIDTH
    height: int = PLOT_HEIGHT


def plot_step(n: int) -> int:
    """The read step that gives a line of ``n`` elements at most MAX_POINTS points."""
    return max(1, math.ceil(n / MAX_POINTS))


def line_plot(data: np.ndarray, step: int = 1) -> LinePlot:
    """An SVG line plot of 1-D ``data`` (read with ``step``: point k is element k*step)."""
    values, what = numeric(data)
    finite = np.isfinite(values)
    lo = float(values[finite].min()) if finite.any() else 0.0
    hi = float(values[finite].max()) if finite.any() else 1.0
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    n = max(len(values) - 1, 1)
    xs = np.arange(len(values)) / n * PLOT_WIDTH
    ys = PLOT_HEIGHT - (np.where(finite, values, lo) - lo) / (hi - lo) * PLOT_HEIGHT
    points = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys))
    last = max((len(values) - 1) * step, 1)
    xticks = [(v / last * PLOT_WIDTH, label(v)) for v in nice_ticks(0, last)
              if v == int(v)]
    yticks = [(PLOT_HEIGHT - (v - lo) / (hi - lo) * PLOT_HEIGHT, label(v))
              for v in nice_ticks(lo, hi, 5)]
    return LinePlot(points, xticks, yticks, what, step)
