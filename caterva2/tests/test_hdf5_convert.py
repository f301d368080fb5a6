"""cat2import / cat2export: round trips on HDF5 files made here with h5py, bad input, memory.

The round trip is HDF5 → root directory → HDF5: every dataset that can be converted must
come back with the same dtype, shape, chunk shape, data and attributes.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import blosc2
import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("hdf5plugin")

from caterva2 import h5convert
from caterva2.tests.h5samples import (
    NUMERIC,
    SKIPPED,
    SKIPPED_ATTRS,
    SOFT_LINKS,
    VLEN_STRINGS,
    make_h5,
)
from caterva2.tools import make_root_example
from caterva2.tools.h5export import export_root
from caterva2.tools.h5import import import_hdf5


def normalise(value):
    """Attribute values compared as plain values (HDF5 widths and string kinds aside)."""
    if isinstance(value, h5py.Empty) or value is None:
        return None
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode()
    if isinstance(value, np.void):
        return {k: normalise(value[k]) for k in value.dtype.names}
    if isinstance(value, np.ndarray):
        return [normalise(v) for v in value]
    if isinstance(value, np.generic):
        return normalise(value.item())
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value


def objects(h5file: Any) -> dict[str, Any]:  # (h5py objects)
    found = {"/": h5file}

    def add(name: str, obj) -> None:  # returning a value would stop visititems
        found[name] = obj

    h5file.visititems(add)
    return found


def assert_same_file(original: pathlib.Path, exported: pathlib.Path) -> int:
    """Every convertible object of ``original`` is in ``exported``, identical."""
    compared = 0
    with h5py.File(original) as a, h5py.File(exported) as b:
        for name, obj in objects(a).items():
            if name.split("/")[-1] in SKIPPED:
                assert name not in b, f"{name} should have been skipped"
                continue
            assert name in b, f"{name} missing after the round trip"
            other = b[name]
            attrs = {k: normalise(v) for k, v in obj.attrs.items() if k not in SKIPPED_ATTRS}
            assert {k: normalise(v) for k, v in other.attrs.items()} == attrs, \
                f"attributes of {name}"
            if isinstance(obj, h5py.Group):
                continue
            if name in VLEN_STRINGS:  # (fixed-size after the round trip: values compared)
                dtype, values = VLEN_STRINGS[name]
                assert other.shape == obj.shape, f"shape of {name}"
                assert np.array_equal(other.asstr()[()] if dtype[1] == "U" else other[()],
                                      np.array(values, dtype=dtype)), f"data of {name}"
                compared += 1
                continue
            assert other.dtype == obj.dtype, f"dtype of {name}"
            assert other.shape == obj.shape, f"shape of {name}"
            if obj.chunks is not None:
                assert other.chunks == obj.chunks, f"chunk shape of {name}"
            if obj.shape is None:
                assert isinstance(other[()], h5py.Empty), f"{name} should have no dataspace"
            else:
                assert np.array_equal(other[()], obj[()]), f"data of {name}"
            compared += 1
    return compared


@pytest.fixture(scope="module")
def h5file(tmp_path_factory) -> pathlib.Path:
    return make_h5(tmp_path_factory.mktemp("h5") / "sample.h5")


def test_round_trip_keeps_every_dataset(h5file, tmp_path):
    warnings: list[str] = []
    report = import_hdf5(h5file, tmp_path / "root", warnings.append)
    for name, words in {**SKIPPED, **SKIPPED_ATTRS}.items():
        assert any(name in w and words in w for w in warnings), f"no warning for {name}"
    assert len(warnings) == len(SKIPPED) + len(SKIPPED_ATTRS), warnings
    assert report.skipped == warnings
    export_warnings: list[str] = []
    export_root(tmp_path / "root", tmp_path / "back.h5", export_warnings.append)
    assert export_warnings == []
    compared = assert_same_file(h5file, tmp_path / "back.h5")
    # (soft links are datasets of their own after the round trip: not visited as objects)
    assert compared == report.datasets - len(SOFT_LINKS) == 19 + len(NUMERIC)
    with h5py.File(tmp_path / "back.h5") as back:
        for link, target in SOFT_LINKS.items():
            assert np.array_equal(back[link][()], back[target][()]), link
            assert back.get(link, getlink=True).__class__ is h5py.HardLink, link


def test_variable_length_strings_become_fixed_size(h5file, tmp_path):
    root = tmp_path / "root"
    import_hdf5(h5file, root, lambda m: None)
    for name, (dtype, values) in VLEN_STRINGS.items():
        array = blosc2.open(str(root / f"{name}.b2nd"))
        assert array.dtype == np.dtype(dtype), name
        assert np.array_equal(array[()] if array.ndim == 0 else array[:],
                              np.array(values, dtype=dtype)), name


def test_soft_links_to_datasets_become_those_datasets(h5file, tmp_path):
    root = tmp_path / "root"
    warnings: list[str] = []
    import_hdf5(h5file, root, warnings.append)
    for link, target in SOFT_LINKS.items():
        assert np.array_equal(blosc2.open(str(root / f"{link}.b2nd"))[:],
                              blosc2.open(str(root / f"{target}.b2nd"))[:]), link
    assert "soft_group: soft link to a group (/images), skipped" in warnings
    assert "dangling: dangling soft link (/nowhere), skipped" in warnings
    assert not (root / "soft_group").exists() and not (root / "dangling.b2nd").exists()


def test_import_layout_and_native_attributes(h5file, tmp_path):
    root = tmp_path / "root"
    import_hdf5(h5file, root, lambda m: None)
    cube = blosc2.open(str(root / "blosc2" / "cube.b2nd"))
    assert cube.shape == (33, 41, 50) and cube.chunks == (10, 20, 25)
    stack = blosc2.open(str(root / "images" / "stack_gzip.b2nd"))
    assert stack.chunks == (1, 64, 48) and stack.dtype == np.uint16
    assert stack.schunk.vlmeta["units"] == "counts"
    assert stack.schunk.vlmeta["shape_hint"] == [24, 64, 48]
    contiguous = blosc2.open(str(root / "contiguous.b2nd"))
    assert contiguous.shape == (300, 200) and np.array_equal(
        contiguous[:], np.arange(60000, dtype="f8").reshape(300, 200))
    scalar = blosc2.open(str(root / "scalar.b2nd"))
    assert scalar.shape == () and scalar[()] == 3.5
    null = blosc2.open(str(root / "null.b2nd"))
    assert null.shape == (0,) and null.schunk.vlmeta[h5convert.KIND_ATTR] == h5convert.NULL_KIND
    assert (root / "images" / "empty_group").is_dir()
    attrs_schunk = blosc2.open(str(root / h5convert.GROUP_ATTRS))
    group_attrs = attrs_schunk.vlmeta.getall()
    assert group_attrs == {
        "title": "test file", "version": 3, "ratio": 0.25, "fixed": "fixed-length",
        "empty": None, "matrix": [[0, 1, 2], [3, 4, 5]], "names": ["alpha", "beta"],
        "vnames": ["x", "yz"], "pair": {"a": 1, "b": 2.5}, "flag": True, "cplx": 1 + 2j}
    assert not (root / "images" / "empty_group" / h5convert.GROUP_ATTRS).exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def inner_chunk(raw: bytes) -> bytes:
    """The Blosc2 chunk inside a chunk stored by the HDF5 Blosc2 filter."""
    return blosc2.schunk_from_cframe(raw, copy=True).get_chunk(0)


@pytest.mark.parametrize("name", ["blosc2/cube", "blosc2/big_chunks", "blosc2/line"])
def test_blosc2_chunks_are_not_recompressed(h5file, tmp_path, name):
    import_hdf5(h5file, tmp_path / "root", lambda m: None)
    export_root(tmp_path / "root", tmp_path / "back.h5", lambda m: None)
    array = blosc2.open(str(tmp_path / "root" / f"{name}.b2nd"))
    with h5py.File(h5file) as a, h5py.File(tmp_path / "back.h5") as b:
        src, out = a[name], b[name]
        assert out.id.get_create_plist().get_filter(0)[0] == h5convert.BLOSC2_FILTER_ID
        assert array.schunk.nchunks == src.id.get_num_chunks() == out.id.get_num_chunks()
        for n in range(array.schunk.nchunks):
            info = src.id.get_chunk_info(n)
            offset = info.chunk_offset
            stored = inner_chunk(src.id.read_direct_chunk(offset)[1])
            nchunk = int(np.ravel_multi_index(
                [o // c for o, c in zip(offset, src.chunks)],
                [-(-s // c) for s, c in zip(src.shape, src.chunks)]))
            assert array.schunk.get_chunk(nchunk) == stored, f"chunk {n} recompressed"
            assert inner_chunk(out.id.read_direct_chunk(offset)[1]) == stored


def test_root_example_exports_and_imports_back(tmp_path):
    example = make_root_example.make(tmp_path / "root-example")
    warnings: list[str] = []
    export_root(example, tmp_path / "example.h5", warnings.append)
    assert warnings == []
    with h5py.File(tmp_path / "example.h5") as f:
        assert f["README.md"].attrs[h5convert.KIND_ATTR] == "file"
        assert f["ds-hello.b2frame"].attrs[h5convert.KIND_ATTR] == "b2frame"
        assert f["ds-hello.b2frame"][:].tobytes() == b"Hello world!" * 100
        assert f["dir1/ds-2d"].chunks == (5, 5)
        assert normalise(f["ds-sc-attr"][()]) == "foobar"
    import_hdf5(tmp_path / "example.h5", tmp_path / "back", warnings.append)
    assert warnings == []
    back = tmp_path / "back"
    assert (back / "README.md").read_bytes() == (example / "README.md").read_bytes()
    hello = blosc2.open(str(back / "ds-hello.b2frame"))
    assert hello[:] == b"Hello world!" * 100
    for path in example.rglob("*.b2nd"):
        rel = path.relative_to(example)
        a, b = blosc2.open(str(path)), blosc2.open(str(back / rel))
        assert (a.shape, a.chunks) == (b.shape, b.chunks), rel
        assert a.schunk.vlmeta.getall() == b.schunk.vlmeta.getall(), rel
        if a.dtype.kind == "U":  # Unicode comes back as UTF-8 bytes
            assert np.char.decode(b[()], "utf-8") == a[()], rel
        else:
            assert a.dtype == b.dtype and np.array_equal(a[()], b[()]), rel


def test_a_failure_half_way_leaves_nothing(h5file, tmp_path, monkeypatch):
    calls = []
    write_chunk = h5convert.write_chunk

    def failing_write(*args):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("disk on fire")
        return write_chunk(*args)

    monkeypatch.setattr(h5convert, "write_chunk", failing_write)
    with pytest.raises(RuntimeError, match="disk on fire"):
        import_hdf5(h5file, tmp_path / "root", lambda m: None)
    assert list(tmp_path.iterdir()) == []


def run_tool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], check=False, capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_help_explains_the_mapping():
    out = run_tool("caterva2.tools.h5import", "--help").stdout
    for words in ("Groups become directories", ".b2nd", "chunk shape", "Blosc2 HDF5 filter",
                  "without recompressing", "skipped", "references", "variable-length",
                  "external", "memory"):
        assert words in out.replace("\n    ", " "), words
    out = run_tool("caterva2.tools.h5export", "--help").stdout
    for words in ("become groups", "Blosc2 HDF5 filter", "uint8", "caterva2_kind"):
        assert words in out, words


@pytest.mark.parametrize("case", ["not_hdf5", "missing", "directory", "output_exists"])
def test_import_bad_input_is_one_clear_line(h5file, tmp_path, case):
    source, target = h5file, tmp_path / "out"
    if case == "not_hdf5":
        source = tmp_path / "fake.h5"
        source.write_text("this is not HDF5\n")
    elif case == "missing":
        source = tmp_path / "nope.h5"
    elif case == "directory":
        source = tmp_path
    else:
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_tool("caterva2.tools.h5import", str(source), str(target))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cat2import: error:"), r.stderr
    expected = {"not_hdf5": "not an HDF5 file", "missing": "no such file",
                "directory": "is a directory", "output_exists": "already exists"}[case]
    assert expected in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written
    if case == "output_exists":
        assert (target / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("case", ["missing", "output_exists", "not_a_directory"])
def test_export_bad_input_is_one_clear_line(tmp_path, case):
    source, target = tmp_path / "root", tmp_path / "out.h5"
    source.mkdir()
    blosc2.asarray(np.arange(10), urlpath=str(source / "a.b2nd"), mode="w")
    if case == "missing":
        source = tmp_path / "nope"
    elif case == "not_a_directory":
        source = source / "a.b2nd"
    else:
        target.write_bytes(b"precious")
    before = sorted(p.name for p in tmp_path.iterdir())
    r = run_tool("caterva2.tools.h5export", str(source), str(target))
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cat2export: error:"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "output_exists":
        assert target.read_bytes() == b"precious"


def test_cli_round_trip_reports_what_it_skipped(h5file, tmp_path):
    r = run_tool("caterva2.tools.h5import", str(h5file), str(tmp_path / "root"))
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == len(SKIPPED) + len(SKIPPED_ATTRS)
    assert all(w.startswith("cat2import: warning:") for w in warnings)
    summary = r.stdout[r.stdout.index("Skipped"):]
    assert summary.startswith(f"Skipped {len(warnings)} objects:")
    for name in SKIPPED:
        assert name in summary
    r = run_tool("caterva2.tools.h5export", str(tmp_path / "root"), str(tmp_path / "b.h5"))
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert assert_same_file(h5file, tmp_path / "b.h5") > 0


MEMORY_LIMIT_MB = 320
BIG_FILE_MB = 400

LIMITED_IMPORT = textwrap.dedent("""
    import resource, sys
    import blosc2, h5py, numpy as np
    from caterva2.tools.h5import import import_hdf5
    from caterva2.tools.h5export import export_root
    blosc2.set_nthreads(2)  # each thread reserves a stack: keep the count machine-independent
    limit = int(sys.argv[1]) << 20
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    baseline = int(status["VmSize"].split()[0]) << 10
    if baseline > limit - (64 << 20):
        print(f"baseline {baseline >> 20} MB leaves no room under the limit")
        sys.exit(3)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = import_hdf5(sys.argv[2], sys.argv[3], print)
    print("imported", report.nbytes)
    export_root(sys.argv[3], sys.argv[4], print)
    print("exported")
    try:  # the control: reading the whole dataset at once must not fit
        h5py.File(sys.argv[2])["big"][...]
        print("whole read fitted")
    except MemoryError:
        print("whole read failed")
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS is Linux's")
def test_memory_stays_bounded_on_a_file_larger_than_the_limit(tmp_path):
    path = tmp_path / "big.h5"
    rows = BIG_FILE_MB * (1 << 20) // (1024 * 8)
    with h5py.File(path, "w") as f:
        big = f.create_dataset("big", shape=(rows, 1024), dtype="f8", chunks=(256, 1024))
        flat = f.create_dataset("flat", shape=(rows // 8, 1024), dtype="f8")  # contiguous
        for start in range(0, rows, 4096):
            stop = min(start + 4096, rows)
            block = np.arange(start * 1024, stop * 1024, dtype="f8").reshape(-1, 1024)
            big[start:stop] = block
            if start < rows // 8:
                flat[start:min(stop, rows // 8)] = block[:rows // 8 - start]
    assert path.stat().st_size > MEMORY_LIMIT_MB << 20
    env = {**os.environ, "MALLOC_ARENA_MAX": "1"}  # per-thread arenas reserve address space
    r = subprocess.run([sys.executable, "-c", LIMITED_IMPORT, str(MEMORY_LIMIT_MB), str(path),
                        str(tmp_path / "root"), str(tmp_path / "back.h5")],
                       check=False, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode == 3:
        pytest.skip(r.stdout.strip())
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0] == f"imported {(rows + rows // 8) * 1024 * 8}"
    assert lines[1:] == ["exported", "whole read failed"]
    array = blosc2.open(str(tmp_path / "root" / "big.b2nd"))
    assert array.chunks == (256, 1024)
    assert array[rows - 1, 1023] == rows * 1024 - 1
    with h5py.File(tmp_path / "back.h5") as f:
        assert f["big"].chunks == (256, 1024)
        assert f["big"][rows - 1, 1023] == rows * 1024 - 1
        assert np.array_equal(f["flat"][-3:], np.arange((rows // 8 - 3) * 1024,
                                                        rows // 8 * 1024).reshape(3, 1024))


def test_unicode_arrays_export_as_utf8(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    text = np.array(["ça", "va", "très", "bien"] * 30)
    blosc2.asarray(text, chunks=(16,), urlpath=str(root / "text.b2nd"), mode="w")
    export_root(root, tmp_path / "t.h5", lambda m: None)
    with h5py.File(tmp_path / "t.h5") as f:
        dset = f["text"]
        assert h5py.check_string_dtype(dset.dtype).encoding == "utf-8"
        assert dset.chunks == (16,)
        assert np.array_equal(np.char.decode(dset[:], "utf-8"), text)


def test_export_pass_through_padded_blocks_and_fallback_codecs(tmp_path):
    """Chunks whose blocks do not divide them still pass through; other codecs recompress."""
    root = tmp_path / "root"
    root.mkdir()
    data = np.arange(37 * 23 * 11, dtype="f8").reshape(37, 23, 11)
    padded = blosc2.asarray(data, chunks=(10, 10, 11), blocks=(4, 3, 5),
                            urlpath=str(root / "padded.b2nd"), mode="w")
    blosc2.asarray(data, chunks=(10, 10, 11), urlpath=str(root / "bytedelta.b2nd"), mode="w",
                   cparams=blosc2.CParams(codec=blosc2.Codec.LZ4,
                                          filters=[blosc2.Filter.BYTEDELTA]))
    (root / "empty.txt").write_bytes(b"")
    export_root(root, tmp_path / "t.h5", lambda m: None)
    with h5py.File(tmp_path / "t.h5") as f:
        for name in ("padded", "bytedelta"):
            assert f[name].chunks == (10, 10, 11), name
            assert np.array_equal(f[name][...], data), name
        raw = f["padded"].id.read_direct_chunk((10, 10, 0))[1]
        assert inner_chunk(raw) == padded.schunk.get_chunk(4)  # passed through
        assert f["empty.txt"].shape == (0,)
    import_hdf5(tmp_path / "t.h5", tmp_path / "back", lambda m: None)
    assert (tmp_path / "back" / "empty.txt").read_bytes() == b""
    back = blosc2.open(str(tmp_path / "back" / "padded.b2nd"))
    assert back.blocks == (4, 3, 5) and np.array_equal(back[...], data)
    assert back.schunk.get_chunk(4) == padded.schunk.get_chunk(4)
