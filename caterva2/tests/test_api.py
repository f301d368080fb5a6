"""Every library call and every ``cat2cli`` command, on every dataset of the example root."""
import json
import os
import pathlib
import subprocess
import sys

import blosc2
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import cli

ARRAYS = {
    "ds-1d.b2nd": [5, -1, slice(None), slice(10, 250), slice(None, None, 7), slice(990, 2000),
                   slice(500, 100), slice(None, None, -3)],
    "ds-1d-b.b2nd": [0, slice(95, 105), slice(None, None, 250)],
    "ds-1d-fields.b2nd": [3, slice(98, 103), slice(None, None, 333)],
    "ds-sc-attr.b2nd": [()],
    "dir1/ds-2d.b2nd": [(), 1, (1, 2), (slice(1, 3), slice(None, None, 5)), (slice(None), 3),
                        (-1, slice(2, 18, 4)), (slice(20, 30),)],
    "dir1/ds-3d.b2nd": [(1, 2, 3), (slice(None), 1), (slice(0, 3, 2), slice(None), slice(1, 4)),
                        (Ellipsis, 2), (1, Ellipsis), (Ellipsis,), (0, Ellipsis, slice(None, None, 2))],
    "dir2/ds-4d.b2nd": [(1, 2, 3), (1, slice(None), 0, slice(None, None, 2)), ()],
}
BYTES = {
    "ds-hello.b2frame": [slice(None, 12), 5, slice(None, None, 100), slice(1190, 1300), ()],
    "README.md": [slice(None, 25), 0, (), slice(-10, None)],
}


def expected(example_dir, path, key):
    source = example_dir / path
    if path.endswith(".b2nd"):
        return blosc2.open(str(source))[()][key] if key != () else blosc2.open(str(source))[()]
    data = blosc2.open(str(source))[:] if path.endswith(".b2frame") else source.read_bytes()
    k = key if isinstance(key, slice) else slice(key, key + 1 or None) if key != () else slice(None)
    return data[k]


def example_files(example_dir) -> list[str]:
    """Every file of the example root, as ``cat2.get_list`` names them."""
    return sorted(p.relative_to(example_dir).as_posix()
                  for p in example_dir.rglob("*") if p.is_file())


def test_roots_lists_foo_subscribed(sub_host):
    roots = cat2.get_roots(sub_host)
    assert roots["foo"]["subscribed"] is True, roots
    assert roots["foo"]["name"] == "foo" and ":" in roots["foo"]["http"], roots


def test_list_gives_every_dataset(sub_host, example_dir):
    assert cat2.get_list("foo", sub_host) == example_files(example_dir)


@pytest.mark.parametrize("path", sorted(ARRAYS))
def test_fetch_arrays(sub_host, example_dir, path):
    ds = cat2.Root("foo", host=sub_host)[path]
    assert isinstance(ds, cat2.Dataset)
    for key in ARRAYS[path]:
        want = expected(example_dir, path, key)
        got = ds[key]
        np.testing.assert_array_equal(got, want, err_msg=f"{path}[{key}]")
        assert np.shape(got) == np.shape(want), f"{path}[{key}]"
        assert np.asarray(got).dtype == np.asarray(want).dtype, f"{path}[{key}]"
        text = cat2.slicing.format_slice(key)
        np.testing.assert_array_equal(cat2.fetch(f"foo/{path}", sub_host, text), want)


@pytest.mark.parametrize("path", sorted(BYTES))
def test_fetch_bytes(sub_host, example_dir, path):
    obj = cat2.Root("foo", host=sub_host)[path]
    for key in BYTES[path]:
        assert obj[key] == expected(example_dir, path, key), f"{path}[{key}]"
        assert isinstance(obj[key], bytes), f"{path}[{key}] is a {type(obj[key])}"


def test_single_array_element_is_a_numpy_scalar(sub_host):
    value = cat2.Root("foo", host=sub_host)["dir1/ds-2d.b2nd"][1, 2]
    assert isinstance(value, np.generic) and value == 22


def test_info_of_an_array_describes_the_source(sub_host, example_dir):
    info = cat2.get_info("foo/dir2/ds-4d.b2nd", sub_host)
    src = blosc2.open(str(example_dir / "dir2/ds-4d.b2nd"))
    assert info["dtype"] == "complex128" and info["shape"] == [2, 3, 4, 5]
    assert info["chunks"] == [1, 2, 3, 4] and info["blocks"] == [1, 2, 2, 2]
    assert info["schunk"]["cbytes"] == src.schunk.cbytes  # the source's, not the cache's
    assert info["schunk"]["nchunks"] == src.schunk.nchunks
    assert "urlpath" not in json.dumps(info)  # no server paths exposed


def test_info_of_files_and_user_attributes(sub_host, example_dir):
    readme = cat2.get_info("foo/README.md", sub_host)
    assert readme["size"] == (example_dir / "README.md").stat().st_size and "mtime" in readme
    assert "schunk" in readme and "shape" not in readme
    ds = cat2.Root("foo", host=sub_host)["ds-sc-attr.b2nd"]
    assert ds.vlmeta == {"a": 1, "b": "foo", "c": 123.456}
    assert ds.path == pathlib.Path("foo/ds-sc-attr.b2nd")


def test_download_every_dataset(sub_host, example_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = cat2.Root("foo", host=sub_host)
    umask = os.umask(0o022)
    os.umask(umask)
    assert sorted(root.node_list) == example_files(example_dir)
    for path in root.node_list:
        obj = root[path]
        saved = obj.download()
        assert saved == pathlib.Path("foo") / path
        assert saved.stat().st_mode & 0o777 == 0o666 & ~umask, \
            f"{saved} is {saved.stat().st_mode & 0o777:o}, not as any new file"  # (not 0600)
        if path.endswith(".b2nd"):
            got, want = blosc2.open(str(saved)), blosc2.open(str(example_dir / path))
            np.testing.assert_array_equal(got[()], want[()])
            assert got.vlmeta[:] == want.vlmeta[:], path
            assert (got.chunks, got.blocks) == (want.chunks, want.blocks), path
        elif path.endswith(".b2frame"):
            assert blosc2.open(str(saved))[:] == blosc2.open(str(example_dir / path))[:], path
        else:
            assert saved.read_bytes() == (example_dir / path).read_bytes(), path
    assert cat2.download("foo/dir1/ds-2d.b2nd", sub_host) == pathlib.Path("foo/dir1/ds-2d.b2nd")
    assert root["README.md"].get_download_url().endswith("/files/foo/README.md.b2")


# -- cat2cli -----------------------------------------------------------------------------

def run_cli(capsys, *args):
    cli.main(list(args))
    return capsys.readouterr().out


def test_cli_roots_subscribe_list_url(sub_host, capsys):
    assert "foo (subscribed)" in run_cli(capsys, "--host", sub_host, "roots").splitlines()
    assert json.loads(run_cli(capsys, "roots", "--host", sub_host, "--json"))["foo"]["subscribed"]
    assert run_cli(capsys, "--host", sub_host, "subscribe", "foo").strip() == "Ok"
    assert json.loads(run_cli(capsys, "--host", sub_host, "subscribe", "foo", "--json")) == "Ok"
    listing = run_cli(capsys, "--host", sub_host, "list", "foo").splitlines()
    assert "foo/dir1/ds-2d.b2nd" in listing and "foo/README.md" in listing
    assert json.loads(run_cli(capsys, "--host", sub_host, "--json", "list", "foo")) == listing
    url = run_cli(capsys, "--host", sub_host, "url", "foo").strip()
    assert url.startswith("http://") and json.loads(
        run_cli(capsys, "--host", sub_host, "url", "foo", "--json")) == [url]


def test_cli_info(sub_host, capsys):
    out = run_cli(capsys, "--host", sub_host, "info", "foo/dir2/ds-4d.b2nd")
    assert "'dtype': 'complex128'" in out and "'shape': [2, 3, 4, 5]" in out
    info = json.loads(run_cli(capsys, "--host", sub_host, "info", "foo/dir2/ds-4d.b2nd", "--json"))
    assert info["ndim"] == 4


@pytest.mark.parametrize("selection, plain, as_json", [
    ("foo/ds-hello.b2frame[:12]", "Hello world!", "Hello world!"),
    ("foo/dir2/ds-4d.b2nd[1,2,3]", "[115.+115.j 116.+116.j 117.+117.j 118.+118.j 119.+119.j]",
     None),
    ("foo/dir1/ds-2d.b2nd[1:3, ::5]", "[[20 25 30 35]\n [40 45 50 55]]",
     [[20, 25, 30, 35], [40, 45, 50, 55]]),
    ("foo/ds-1d.b2nd[::-300]", "[999 699 399  99]", [999, 699, 399, 99]),
    ("foo/ds-sc-attr.b2nd", "foobar", "foobar"),
    ("foo/README.md[:25]", "This is a simple example,", "This is a simple example,"),
    ("foo/ds-1d-b.b2nd[:2]", "[b'foobar' b'foobar']", ["foobar", "foobar"]),
    ("foo/dir1/ds-3d.b2nd[2,3,4]", "59.0", 59.0),
    ("foo/dir1/ds-3d.b2nd[2, ..., 4]", "[44. 49. 54. 59.]", [44.0, 49.0, 54.0, 59.0]),
    ("foo/ds-1d.b2nd[5:5]", "[]", []),
    ("foo/ds-1d-fields.b2nd[1]", "(1, 0.001001001001001001)",
     {"a": 1, "b": 0.001001001001001001}),
    ("foo/ds-1d-fields.b2nd[:2]", "[(0, 0.      ) (1, 0.001001)]",
     [{"a": 0, "b": 0.0}, {"a": 1, "b": 0.001001001001001001}]),
])
def test_cli_show(sub_host, capsys, selection, plain, as_json):
    assert run_cli(capsys, "--host", sub_host, "show", selection).strip() == plain
    if as_json is not None:
        assert json.loads(run_cli(capsys, "--host", sub_host, "show", selection, "--json")) \
            == as_json


def test_cli_download(sub_host, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run_cli(capsys, "--host", sub_host, "download", "foo/dir2/ds-4d.b2nd")
    assert out.strip() == "Dataset saved to foo/dir2/ds-4d.b2nd"
    assert blosc2.open("foo/dir2/ds-4d.b2nd")[1, 2, 3][0] == 115 + 115j
    out = json.loads(run_cli(capsys, "--host", sub_host, "download", "foo/README.md", "out",
                             "--json"))
    assert pathlib.Path(out["path"]).read_text().startswith("This is a simple example,")


def test_cli_as_a_program(sub_host):
    """The installed entry point, as a user runs it."""
    done = subprocess.run([sys.executable, "-m", "caterva2.cli", "--host", sub_host, "show",
                           "foo/ds-hello.b2frame[:12]"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "Hello world!\n", done.stderr
