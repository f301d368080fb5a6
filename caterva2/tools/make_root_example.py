"""Write the example root (``root-example/``) used by the quick start and the tests.

    python -m caterva2.tools.make_root_example [DIRECTORY]   (default: root-example)
"""
from __future__ import annotations

import pathlib
import sys

import blosc2
import numpy as np

README = "This is a simple example,\nwith several lines,\nfor showing purposes.\n"


def make(directory: str | pathlib.Path) -> pathlib.Path:
    """Create every dataset of the example root under ``directory`` (overwriting)."""
    d = pathlib.Path(directory)
    (d / "dir1").mkdir(parents=True, exist_ok=True)
    (d / "dir2").mkdir(exist_ok=True)
    (d / "README.md").write_text(README)

    def array(name, data, **kw):
        return blosc2.asarray(data, urlpath=str(d / name), mode="w", **kw)

    blosc2.SChunk(chunksize=100, data=b"Hello world!" * 100,
                  urlpath=str(d / "ds-hello.b2frame"), mode="w")
    array("ds-1d.b2nd", np.arange(1000, dtype="int64"), chunks=(100,), blocks=(10,))
    array("ds-1d-b.b2nd", np.array([b"foobar"] * 1000), chunks=(100,), blocks=(10,))
    fields = np.zeros(1000, dtype=[("a", "int32"), ("b", "float64")])
    fields["a"] = np.arange(1000)
    fields["b"] = np.linspace(0, 1, 1000)
    array("ds-1d-fields.b2nd", fields, chunks=(100,), blocks=(10,))
    scalar = array("ds-sc-attr.b2nd", np.array(np.str_("foobar")))
    for key, value in {"a": 1, "b": "foo", "c": 123.456}.items():
        scalar.vlmeta[key] = value
    array("dir1/ds-2d.b2nd", np.arange(200, dtype="uint16").reshape(10, 20),
          chunks=(5, 5), blocks=(2, 3))
    array("dir1/ds-3d.b2nd", np.arange(60, dtype="float32").reshape(3, 4, 5),
          chunks=(2, 3, 4), blocks=(2, 2, 2))
    a = np.arange(120, dtype="complex128").reshape(2, 3, 4, 5)
    array("dir2/ds-4d.b2nd", a + a * 1j, chunks=(1, 2, 3, 4), blocks=(1, 2, 2, 2))
    return d


def main() -> None:
    target = make(sys.argv[1] if len(sys.argv) > 1 else "root-example")
    print(f"example root written to {target}")


if __name__ == "__main__":
    main()
