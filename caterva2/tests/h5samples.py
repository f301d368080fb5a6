"""Sample HDF5 files for the tests of cat2import/cat2export and of HDF5 roots.

Needs h5py and hdf5plugin: import it after ``pytest.importorskip`` of both.
"""
from __future__ import annotations

import pathlib

import h5py
import hdf5plugin
import numpy as np

NUMERIC = ["i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
           "?", ">i4", ">f8"]
# Objects the importer must skip, and the words its warning must contain.
SKIPPED = {"vlen_int": "variable-length",
           "refs": "reference", "array_type": "array type", "opaque": "opaque",
           "soft_group": "soft link to a group", "dangling": "dangling soft link",
           "external": "external link"}
# Variable-length strings, converted to fixed-size ones: name -> (dtype, values).
VLEN_STRINGS = {
    "vlen_str": ("<U2", ["a", "bb"]),
    "vlen_text": ("<U6", [["héllo", "", "ü"], ["naïve!", "x", "yz"]]),
    "vlen_ascii": ("S4", [b"x", b"yyyy", b""]),
    "vlen_scalar": ("<U11", "scalar text"),
}
SOFT_LINKS = {"soft": "blosc2/line", "images/latest": "images/stack_gzip"}  # link -> target
SKIPPED_ATTRS = {"ref_attr": "reference"}


def make_h5(path: pathlib.Path) -> pathlib.Path:
    """An HDF5 file with every case cat2import must handle (and some it must skip)."""
    rng = np.random.default_rng(42)
    with h5py.File(path, "w") as f:
        f.attrs.update({"title": "test file", "version": 3, "ratio": 0.25,
                        "fixed": np.bytes_("fixed-length"), "empty": h5py.Empty("i4"),
                        "matrix": np.arange(6, dtype="i2").reshape(2, 3),
                        "names": np.array([b"alpha", b"beta"]),
                        "vnames": np.array(["x", "yz"], dtype=h5py.string_dtype()),
                        "pair": np.array([(1, 2.5)], dtype=[("a", "i4"), ("b", "f8")])[0],
                        "flag": np.bool_(True), "cplx": np.complex128(1 + 2j)})
        images = f.create_group("images")
        images.attrs["instrument"] = "camera"
        images.create_group("empty_group")
        stack = rng.integers(0, 4096, size=(24, 64, 48), dtype="u2")
        d = images.create_dataset("stack_gzip", data=stack, chunks=(1, 64, 48),
                                  compression="gzip", compression_opts=4, shuffle=True)
        d.attrs.update({"units": "counts", "exposure": 0.5, "shape_hint": [24, 64, 48]})
        # Blosc2-filtered: chunks pass through.  Edge chunks and blocks smaller than chunks.
        f.create_dataset("blosc2/cube", data=np.arange(33 * 41 * 50, dtype="f4")
                         .reshape(33, 41, 50), chunks=(10, 20, 25),
                         **hdf5plugin.Blosc2(cname="zstd", clevel=5))
        f.create_dataset("blosc2/big_chunks", data=np.linspace(0, 1, 64 * 128 * 128)
                         .reshape(64, 128, 128), chunks=(16, 128, 128),
                         **hdf5plugin.Blosc2(cname="lz4", filters=hdf5plugin.Blosc2.BITSHUFFLE))
        f.create_dataset("blosc2/line", data=np.arange(1005, dtype="i8"), chunks=(100,),
                         **hdf5plugin.Blosc2())
        f.create_dataset("contiguous", data=np.arange(300 * 200, dtype="f8").reshape(300, 200))
        f.create_dataset("checksummed", data=np.arange(5000, dtype="i4"), chunks=(512,),
                         shuffle=True, compression="gzip", fletcher32=True)
        sparse = f.create_dataset("sparse", shape=(100, 100), chunks=(10, 10), dtype="f4",
                                  fillvalue=-1)
        sparse[20:30, 40:50] = 7
        f.create_dataset("scalar", data=3.5)
        f.create_dataset("scalar_str", data=np.bytes_("hello"))
        f.create_dataset("zero_size", shape=(0, 5), chunks=(10, 5), maxshape=(None, 5),
                         dtype="i4")
        f.create_dataset("null", data=h5py.Empty("f4"))
        f.create_dataset("growable", data=np.arange(5, dtype="f4"), chunks=(16,),
                         maxshape=(None,))
        f.create_dataset("strings", data=np.array([b"a", b"bb", b"ccc"] * 20), chunks=(16,))
        compound = np.zeros(200, dtype=[("id", "i4"), ("x", "f8"), ("tag", "S4"),
                                        ("v", "f4", (3,))])
        compound["id"] = np.arange(200)
        compound["x"] = np.arange(200) / 7
        compound["tag"] = b"ab"
        compound["v"] = np.arange(600).reshape(200, 3)
        f.create_dataset("compound", data=compound, chunks=(64,))
        numeric = f.create_group("numeric")
        for code in NUMERIC:
            data = (np.arange(120) % 2).astype(code) if code == "?" else \
                np.arange(120).astype(code)
            name = np.dtype(code).name + ("_be" if code.startswith(">") else "")
            numeric.create_dataset(name, data=data.reshape(12, 10),
                                   chunks=(5, 4))
        f.create_dataset("enum", data=np.arange(3, dtype="i1"),
                         dtype=h5py.enum_dtype({"a": 0, "b": 1, "c": 2}, basetype="i1"))
        f.create_dataset("vlen_str", data=["a", "bb"], dtype=h5py.string_dtype())
        f.create_dataset("vlen_text", data=np.array(VLEN_STRINGS["vlen_text"][1], dtype=object),
                         dtype=h5py.string_dtype(), chunks=(1, 2))
        f.create_dataset("vlen_ascii", data=VLEN_STRINGS["vlen_ascii"][1],
                         dtype=h5py.string_dtype("ascii"))
        f.create_dataset("vlen_scalar", data="scalar text", dtype=h5py.string_dtype())
        for link, target in SOFT_LINKS.items():
            f[link] = h5py.SoftLink(f"/{target}")
        # What must be skipped.
        f.create_dataset("vlen_int", shape=(2,), dtype=h5py.vlen_dtype("i4"))
        f.create_dataset("refs", data=[images.ref], dtype=h5py.ref_dtype)
        f.create_dataset("array_type", shape=(3,), dtype=np.dtype(("f4", (2,))))
        f.create_dataset("opaque", data=np.zeros(3, dtype="V4"))
        f["soft_group"] = h5py.SoftLink("/images")
        f["dangling"] = h5py.SoftLink("/nowhere")
        f["external"] = h5py.ExternalLink("elsewhere.h5", "/x")
        f["contiguous"].attrs["ref_attr"] = images.ref
    return path
