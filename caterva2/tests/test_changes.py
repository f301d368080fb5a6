"""Datasets modified, added, renamed and deleted at the source while subscribed (a root
directory replaced or removed too): the subscriber serves the new state, never stale data."""
import shutil

import blosc2
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import PublishedRoot, wait_until


def write(path, data, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    blosc2.asarray(data, urlpath=str(path), mode="w", chunks=(10,), blocks=(5,), **kw)


@pytest.fixture
def live(stack, tmp_path) -> PublishedRoot:
    """A private root ``live`` holding ``a.b2nd`` (``arange(100)``) and ``notes.txt``,
    subscribed, the dataset's data cached."""
    src = tmp_path / "live"
    write(src / "a.b2nd", np.arange(100))
    (src / "notes.txt").write_text("first version")
    live = stack.publish_root("live", src)
    np.testing.assert_array_equal(cat2.Root("live", host=live.host)["a.b2nd"][:],
                                  np.arange(100))
    return live


def test_modified_dataset_is_served_fresh_never_stale(live):
    src, host = live.source, live.host
    write(src / "a.b2nd", np.arange(100) + 1000)
    wait_until(lambda: cat2.fetch("live/a.b2nd", host, "0:3")[0] == 1000,
               what="new data at the subscriber")
    for _ in range(20):  # once the new version is seen, the old one never comes back
        np.testing.assert_array_equal(cat2.fetch("live/a.b2nd", host, ":"),
                                      np.arange(100) + 1000)


def test_modified_shape_and_ordinary_file(live):
    src, host = live.source, live.host
    write(src / "a.b2nd", np.arange(35, dtype="f4"))
    wait_until(lambda: cat2.get_info("live/a.b2nd", host)["shape"] == [35], what="new shape")
    np.testing.assert_array_equal(cat2.Root("live", host)["a.b2nd"][:],
                                  np.arange(35, dtype="f4"))
    (src / "notes.txt").write_text("second version, longer")
    wait_until(lambda: cat2.fetch("live/notes.txt", host) == b"second version, longer",
               what="new file content")


@pytest.mark.parametrize("key", [slice(0, 5), slice(None)])  # a small read, a chunk stream
def test_dataset_object_older_than_a_change_of_layout_reads_the_new_data(live, key):
    src, host = live.source, live.host
    ds = cat2.Root("live", host=host)["a.b2nd"]  # metadata: 100 int64 in chunks of 10
    new = np.arange(100_000, dtype="f8") / 2  # other dtype (same item size), shape, chunks
    blosc2.asarray(new, urlpath=str(src / "a.b2nd"), mode="w", chunks=(5_000,), blocks=(500,))
    wait_until(lambda: cat2.get_info("live/a.b2nd", host)["shape"] == [100_000],
               what="new layout at the subscriber")
    np.testing.assert_array_equal(ds[key], new[key])
    assert ds.meta["shape"] == [100_000] and ds.dtype == "float64"


def test_added_and_deleted_datasets(live):
    src, host = live.source, live.host
    write(src / "sub" / "b.b2nd", np.ones(20))
    wait_until(lambda: "sub/b.b2nd" in cat2.get_list("live", host), what="added dataset")
    np.testing.assert_array_equal(cat2.fetch("live/sub/b.b2nd", host), np.ones(20))
    (src / "a.b2nd").unlink()
    wait_until(lambda: "a.b2nd" not in cat2.get_list("live", host), what="deleted dataset")
    with pytest.raises(cat2.ServerError) as err:
        cat2.fetch("live/a.b2nd", host)
    assert err.value.status_code == 404


def test_renamed_dataset(live):
    src, host = live.source, live.host
    (src / "a.b2nd").rename(src / "renamed.b2nd")
    wait_until(lambda: cat2.get_list("live", host) == ["notes.txt", "renamed.b2nd"],
               what="rename seen")
    np.testing.assert_array_equal(cat2.fetch("live/renamed.b2nd", host), np.arange(100))


def test_root_directory_replaced_then_removed(live):
    """``mv new live``: the directory now at the root's path is watched, so what changes in
    it is announced at once (not at the publisher's next periodic announcement, 30 s)."""
    src, host = live.source, live.host
    new = src.parent / "new"
    write(new / "b.b2nd", np.ones(20))
    src.rename(src.parent / "old")
    new.rename(src)
    wait_until(lambda: cat2.get_list("live", host) == ["b.b2nd"], timeout=10,
               what="the replacement's datasets")
    write(src / "c.b2nd", np.zeros(5))
    wait_until(lambda: cat2.get_list("live", host) == ["b.b2nd", "c.b2nd"], timeout=10,
               what="a dataset added to the replacement")
    np.testing.assert_array_equal(cat2.fetch("live/c.b2nd", host), np.zeros(5))
    shutil.rmtree(src)
    wait_until(lambda: cat2.get_list("live", host) == [], timeout=10, what="the removal")


def test_names_with_url_characters_download_and_read_correctly(live):
    src, host = live.source, live.host
    names = ["p%41.txt", "pA.txt", "a#b.txt", "q?x.txt", "sp ace.txt", "\u00fc.txt"]
    for name in names:
        (src / name).write_text(f"content of {name}")
    wait_until(lambda: set(names) <= set(cat2.get_list("live", host)), what="the new files")
    for name in names:
        assert cat2.fetch(f"live/{name}", host) == f"content of {name}".encode(), name
        local = cat2.Root("live", host=host)[name].download(src.parent / "downloads")
        assert local.read_text() == f"content of {name}", name
