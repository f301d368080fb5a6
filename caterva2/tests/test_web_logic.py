"""The web interface's pure logic: planes chosen by query parameters, reads of large boxes
in slices, table labels, axis ticks and images."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from caterva2 import slicing
from caterva2.services.subscriber.web import pictures, reading, tables


class ArrayReplica:
    """Stands for a replica holding ``data`` (read_array is all read_box needs), counting
    the items each read decodes."""

    def __init__(self, data: np.ndarray):
        self.data = data
        self.items_read: list[int] = []

    def read_array(self, region):
        self.items_read.append(int(np.prod([r.stop - r.start for r in region])))
        return self.data[region]


@pytest.mark.parametrize("key", [
    (slice(None, None, 3), slice(None, None, 7), 4),
    (2, slice(None, None, -2), slice(1, 30, 4)),
    (slice(5, 6), 0, slice(None)),
    (Ellipsis, 3),
])
def test_large_boxes_are_read_one_index_at_a_time(monkeypatch, key):
    data = np.arange(20 * 30 * 40, dtype="int32").reshape(20, 30, 40)
    plan = slicing.plan(slicing.as_key(key), data.shape)
    monkeypatch.setattr(reading, "MAX_BOX_BYTES", 4 * 40 * 30)  # (one 30 x 40 plane)
    replica = ArrayReplica(data)
    result = reading.read_box(replica, plan.region, plan.within, 4)
    np.testing.assert_array_equal(result, data[key])
    assert max(replica.items_read) <= 30 * 40  # (no read of more than the bound)


def test_planes_from_query_parameters():
    shape = (10, 2000, 300, 7)
    plane = pictures.Plane.choose(shape, {})
    assert (plane.y, plane.x, plane.index, plane.colormap) == (2, 3, (5, 1000, None, None),
                                                               "viridis")
    plane = pictures.Plane.choose(shape, {"y": "1", "x": "0", "i2": "299", "cmap": "gray"})
    assert plane.index == (None, None, 299, 3)
    assert plane.key(shape) == (slice(None, None, 1), slice(None, None, 4), 299, 3)
    assert plane.oriented(np.zeros((10, 500))).shape == (500, 10)  # (rows: axis 1)
    assert pictures.Plane.choose(shape, plane.query()) == plane
    for params, words in [({"i0": "10"}, "out of range"), ({"y": "3"}, "two different"),
                          ({"x": "4"}, "out of range"), ({"i1": "1.5"}, "integer"),
                          ({"cmap": "jet"}, "unknown colormap")]:
        with pytest.raises(pictures.BadChoice, match=words):
            pictures.Plane.choose(shape, params)
    with pytest.raises(pictures.BadChoice, match="at least 2 dimensions"):
        pictures.Plane.choose((5,), {})


def test_pictures():
    plane = np.array([[0.0, 1.0], [np.nan, 2.0]])
    picture = pictures.picture(plane, "gray")
    image = Image.open(io.BytesIO(picture.png))
    assert image.size == (2, 2) and (picture.vmin, picture.vmax) == (0.0, 2.0)
    assert image.getpixel((0, 0)) == (0, 0, 0) and image.getpixel((1, 1)) == (255, 255, 255)
    assert image.getpixel((0, 1)) == pictures.NAN_COLOUR
    assert [label for _, label in picture.ticks()] == ["0", "0.5", "1", "1.5", "2"]
    assert pictures.picture(np.full((3, 3), 7 + 1j), "viridis").what == "magnitude"
    with pytest.raises(pictures.BadChoice, match="no numbers"):
        pictures.picture(np.array([["a"]]), "viridis")
    plot = pictures.line_plot(np.arange(1001.0), step=3)
    assert [label for _, label in plot.xticks] == ["0", "1000", "2000", "3000"]
    assert plot.points.count(",") == 1001 and plot.step == 3


def test_nice_ticks():
    assert pictures.nice_ticks(-1.9999, 1.9999) == [-1, 0, 1]
    assert pictures.nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1]
    assert pictures.nice_ticks(3, 3) == [3]


def test_tables():
    assert tables.default_slice(()) == ""
    assert tables.default_slice((1000,)) == "0:50"
    assert tables.default_slice((3, 4, 5)) == "0, 0:4, 0:5"
    key = slicing.parse_slice("2, 1:3, ::2")
    assert tables.indices(key, (3, 4, 5)) == [range(1, 3), range(0, 5, 2)]
    data = np.arange(60).reshape(3, 4, 5)[key]
    table = tables.table(data, tables.indices(key, (3, 4, 5)))
    assert table.columns == ["0", "2", "4"]
    assert table.rows == [("1", ["45", "47", "49"]), ("2", ["50", "52", "54"])]
    fields = np.array([(1, 0.5)], dtype=[("a", "i4"), ("b", "f8")])
    assert tables.table(fields, [range(7, 8)]).rows == [("7", ["1", "0.5"])]
    with pytest.raises(tables.BadTable, match="at most 2 dimensions"):
        tables.check_size(slicing.parse_slice("..."), (3, 4, 5), 0)
    with pytest.raises(tables.BadTable, match="at most 10000"):
        tables.check_size(slicing.parse_slice(":"), (5001,), 2)
    assert tables.format_value(np.complex64(1 - 2j)) == "1-2j"
    assert tables.format_value(np.bytes_(b"foobar")) == "foobar"
