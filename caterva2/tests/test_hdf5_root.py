"""End to end: an HDF5 file published directly as a root (``cat2pub h5 FILE.h5``).

Real broker, publisher and subscriber processes; data read through the client library and
``cat2cli`` must equal h5py's reading of the same file.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
pytest.importorskip("hdf5plugin")

import caterva2 as cat2
from caterva2 import h5convert
from caterva2.tests.h5samples import SKIPPED, SOFT_LINKS, VLEN_STRINGS, make_h5
from caterva2.tests.harness import PublishedRoot, Stack, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("CATERVA2_USE_EXTERNAL") == "1",
                                reason="needs its own services")

# dataset -> slices to fetch (text, as a user types them)
SLICES = {
    "images/stack_gzip": ["0:3", "5, 10:20, ::7", "-1", ":"],
    "blosc2/cube": ["0:12, 15:25, 20:30", "32, 40, 49", "::4, ::5, ::6"],
    "blosc2/big_chunks": ["10:20, 100:128, 0:64"],
    "blosc2/line": ["95:205", "::50"],
    "contiguous": ["100:160, 30", ":"],
    "compound": ["60:70"],
    "sparse": ["15:35, 35:55"],
    "strings": ["0:5"],
    "numeric/int16": [":, 3"],
    "numeric/complex128": ["2:4"],
    "scalar": [""],
    "zero_size": [""],
}


def parse_key(text: str) -> tuple:
    """``"5, 10:20, ::7"`` → ``(5, slice(10, 20), slice(None, None, 7))`` (test's own parser)."""
    if not text.strip():
        return ()
    return tuple(slice(*[int(x) if x.strip() else None for x in part.split(":")])
                 if ":" in part else int(part) for part in text.split(","))


def h5_read(h5file, name: str, text: str):
    with h5py.File(h5file) as f:
        return f[name][parse_key(text)]


def assert_same(got, expected, what: str = "") -> None:
    """``got`` equals ``expected`` in shape, dtype and values."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert (got.shape, got.dtype) == (expected.shape, expected.dtype), \
        f"{what}: got {got.shape} {got.dtype}, expected {expected.shape} {expected.dtype}"
    np.testing.assert_array_equal(got, expected, err_msg=what)


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Iterator[PublishedRoot]:
    """The sample file (``published.source``) published as ``h5``, subscribed."""
    tmp = tmp_path_factory.mktemp("h5root")
    stack = Stack(tmp / "state")
    try:
        h5 = stack.publish_root("h5", make_h5(tmp / "sample.h5"))
        assert cat2.subscribe("h5", h5.host) == "Ok"
        yield h5
    finally:
        stack.stop()


def test_every_convertible_dataset_is_listed(published):
    h5file, host = published.source, published.host
    expected = {h5convert.GROUP_ATTRS, f"images/{h5convert.GROUP_ATTRS}"}
    with h5py.File(h5file) as f:
        def add(name, obj):
            if isinstance(obj, h5py.Dataset) and name.split("/")[-1] not in SKIPPED:
                expected.add(f"{name}.b2nd")
        f.visititems(add)
    expected |= {f"{link}.b2nd" for link in SOFT_LINKS}  # (not visited: links, not objects)
    assert set(cat2.get_list("h5", host)) == expected


def test_variable_length_strings_and_soft_links_are_served(published):
    host = published.host
    for name, (dtype, values) in VLEN_STRINGS.items():
        assert_same(cat2.fetch(f"h5/{name}.b2nd", host=host), np.array(values, dtype=dtype),
                    name)
    for link, target in SOFT_LINKS.items():
        assert_same(cat2.fetch(f"h5/{link}.b2nd", host=host),
                    cat2.fetch(f"h5/{target}.b2nd", host=host), link)


def cat2cli(host: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caterva2.cli", "--host", host, *args],
                          check=False, capture_output=True, text=True, timeout=120, cwd=cwd)


def test_datasets_can_be_named_as_in_the_file(published, tmp_path):
    """``h5/images/stack_gzip`` is ``h5/images/stack_gzip.b2nd``, for cat2cli and the
    library alike; listings keep the suffix."""
    host = published.host
    shown = cat2cli(host, "show", "h5/blosc2/line[95:100]")
    assert shown.stdout == "[95 96 97 98 99]\n", shown.stderr
    info = cat2cli(host, "info", "h5/images/stack_gzip", "--json")
    assert json.loads(info.stdout)["shape"] == [24, 64, 48], info.stderr
    saved = cat2cli(host, "download", "h5/vlen_text", cwd=tmp_path)
    assert saved.stdout == "Dataset saved to h5/vlen_text.b2nd\n", saved.stderr
    dataset = cat2.Root("h5", host=host)["images/stack_gzip"]
    assert isinstance(dataset, cat2.Dataset) and dataset.path.name == "stack_gzip.b2nd"
    assert_same(dataset[2, 0:3, 0:4], h5_read(published.source, "images/stack_gzip",
                                              "2, 0:3, 0:4"))
    assert cat2.get_info("h5/scalar", host)["shape"] == []
    missing = cat2cli(host, "show", "h5/images/nope")
    assert missing.returncode == 1
    assert "no dataset 'images/nope' in root 'h5'" in missing.stderr, missing.stderr


def test_metadata_matches_the_file(published):
    h5file, host = published.source, published.host
    with h5py.File(h5file) as f:
        for name in ("images/stack_gzip", "blosc2/cube", "contiguous", "compound"):
            info = cat2.get_info(f"h5/{name}.b2nd", host)
            dset = f[name]
            assert info["shape"] == list(dset.shape), name
            assert info["dtype"] == str(dset.dtype), name
            if dset.chunks:
                assert info["chunks"] == list(dset.chunks), name
            assert info["schunk"]["cbytes"] == dset.id.get_storage_size(), name
        stack_info = cat2.get_info("h5/images/stack_gzip.b2nd", host)
        assert stack_info["schunk"]["vlmeta"] == {"units": "counts", "exposure": 0.5,
                                                  "shape_hint": [24, 64, 48]}
    group = cat2.Root("h5", host=host)[f"images/{h5convert.GROUP_ATTRS}"]
    assert group.vlmeta == {"instrument": "camera"}
    null = cat2.get_info("h5/null.b2nd", host)
    assert null["shape"] == [0] and null["schunk"]["vlmeta"] == {h5convert.KIND_ATTR: h5convert.NULL_KIND}
    assert cat2.fetch("h5/null.b2nd", host=host).shape == (0,)


@pytest.mark.parametrize("name", sorted(SLICES))
def test_library_slices_equal_h5py(published, name):
    h5file, host = published.source, published.host
    dataset = cat2.Root("h5", host=host)[f"{name}.b2nd"]
    for text in SLICES[name]:
        expected = h5_read(h5file, name, text)
        fetched = cat2.fetch(f"h5/{name}.b2nd", host=host, slice_=text)
        assert_same(fetched, expected, f"fetch {name}[{text}]")
        assert_same(dataset[parse_key(text)], expected, f"Root()[{name}][{text}]")


def test_cli_show_equals_h5py(published):
    h5file, host = published.source, published.host
    for name, text in [("blosc2/cube", "0:2, 3, ::10"), ("images/stack_gzip", "2, 0:3, 0:4"),
                       ("contiguous", "5:8, 0:4")]:
        expected = h5_read(h5file, name, text)
        cmd = [sys.executable, "-m", "caterva2.cli", "--host", host, "show",
               f"h5/{name}.b2nd[{text}]"]
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == str(expected), name
        r = subprocess.run(cmd + ["--json"], check=False, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == expected.tolist(), name


def test_chunks_are_converted_once_and_cached_at_the_publisher(published):
    cat2.fetch("h5/images/stack_gzip.b2nd", host=published.host, slice_="0:2")
    cached = list((published.publisher.statedir / "hdf5-cache").rglob("stack_gzip.b2nd"))
    assert len(cached) == 1, "no cache array for a converted dataset"


def write_small(path, value: int, extra: bool = False) -> None:
    with h5py.File(path, "a" if extra else "w") as f:
        if extra:
            f.create_dataset("added", data=np.full(7, value, dtype="i2"))
        else:
            f.create_dataset("data", data=np.arange(100, dtype="i4") + value, chunks=(10,))


def test_changes_to_the_file_are_announced(stack, tmp_path):
    h5file = tmp_path / "live.h5"
    write_small(h5file, 0)
    host = stack.publish_root("live", h5file).host
    assert cat2.subscribe("live", host) == "Ok"
    assert_same(cat2.fetch("live/data.b2nd", host=host), np.arange(100, dtype="i4"))
    write_small(h5file, 1000)  # rewritten in place
    wait_until(lambda: cat2.fetch("live/data.b2nd", host=host, slice_="0:1")[0] == 1000,
               what="rewritten data at the subscriber")
    assert_same(cat2.fetch("live/data.b2nd", host=host), np.arange(100, dtype="i4") + 1000)
    write_small(h5file, 5, extra=True)  # appended
    wait_until(lambda: "added.b2nd" in cat2.get_list("live", host),
               what="appended dataset listed")
    assert_same(cat2.fetch("live/added.b2nd", host=host), np.full(7, 5, dtype="i2"))
    h5file.unlink()
    wait_until(lambda: cat2.get_list("live", host) == [], what="datasets of a removed file")


def test_publishing_a_file_that_is_not_hdf5_fails_clearly(tmp_path):
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not HDF5")
    r = subprocess.run([sys.executable, "-m", "caterva2.services.publisher", "--statedir",
                        str(tmp_path / "pub"), "--http", "127.0.0.1:0", "bogus", str(bogus)],
                       check=False, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not an HDF5 file" in lines[0], r.stderr


def test_root_versions_cache_and_unclean_shutdown(tmp_path):
    """In process: version checks, chunks cached per version, cache dropped after a crash."""
    from caterva2.roots import VersionMismatch
    from caterva2.roots.hdf5_file import HDF5Root

    h5file = tmp_path / "live.h5"
    write_small(h5file, 0)
    root = HDF5Root(h5file, tmp_path / "pub")
    version = root.versions()["data.b2nd"]
    chunk = root.read_chunk("data.b2nd", 3, version)
    assert root.read_chunk("data.b2nd", 3, version) == chunk
    cache = tmp_path / "pub" / "hdf5-cache" / version / "data.b2nd"
    assert cache.exists()
    root.close()
    write_small(h5file, 7)
    root = HDF5Root(h5file, tmp_path / "pub")  # the previous one closed cleanly
    new_version = root.versions()["data.b2nd"]
    assert new_version != version and not cache.exists()  # other versions are dropped
    with pytest.raises(VersionMismatch):
        root.read_chunk("data.b2nd", 3, version)
    root.read_chunk("data.b2nd", 3, new_version)
    new_cache = tmp_path / "pub" / "hdf5-cache" / new_version / "data.b2nd"
    assert new_cache.exists()
    # Not closed (a crash): the next publisher does not trust the cache.
    HDF5Root(h5file, tmp_path / "pub")
    assert not new_cache.exists()
