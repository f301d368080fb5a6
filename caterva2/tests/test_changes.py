"""Datasets modified, added and deleted at the source while subscribed."""
import blosc2
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import wait_until


def write(path, data, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    blosc2.asarray(data, urlpath=str(path), mode="w", chunks=(10,), blocks=(5,), **kw)


@pytest.fixture
def live(stack, tmp_path):
    """A private root ``live`` with one dataset, subscribed, its data cached."""
    src = tmp_path / "live"
    write(src / "a.b2nd", np.arange(100))
    (src / "notes.txt").write_text("first version")
    stack.publisher("live", src)
    sub = stack.subscriber()
    wait_until(lambda: "live" in cat2.get_roots(sub.address), what="root live")
    root = cat2.Root("live", host=sub.address)
    np.testing.assert_array_equal(root["a.b2nd"][:], np.arange(100))
    return src, sub.address, root


def test_modified_dataset_is_served_fresh_never_stale(live):
    src, host, root = live
    write(src / "a.b2nd", np.arange(100) + 1000)
    wait_until(lambda: cat2.fetch("live/a.b2nd", host, "0:3")[0] == 1000,
               what="new data at the subscriber")
    for _ in range(20):  # once the new version is seen, the old one never comes back
        np.testing.assert_array_equal(cat2.fetch("live/a.b2nd", host, ":"),
                                      np.arange(100) + 1000)


def test_modified_shape_and_ordinary_file(live):
    src, host, root = live
    write(src / "a.b2nd", np.arange(35, dtype="f4"))
    wait_until(lambda: cat2.get_info("live/a.b2nd", host)["shape"] == [35], what="new shape")
    np.testing.assert_array_equal(cat2.Root("live", host)["a.b2nd"][:],
                                  np.arange(35, dtype="f4"))
    (src / "notes.txt").write_text("second version, longer")
    wait_until(lambda: cat2.fetch("live/notes.txt", host) == b"second version, longer",
               what="new file content")


def test_added_and_deleted_datasets(live):
    src, host, root = live
    write(src / "sub" / "b.b2nd", np.ones(20))
    wait_until(lambda: "sub/b.b2nd" in cat2.get_list("live", host), what="added dataset")
    np.testing.assert_array_equal(cat2.fetch("live/sub/b.b2nd", host), np.ones(20))
    (src / "a.b2nd").unlink()
    wait_until(lambda: "a.b2nd" not in cat2.get_list("live", host), what="deleted dataset")
    with pytest.raises(cat2.ServerError) as err:
        cat2.fetch("live/a.b2nd", host)
    assert err.value.status_code == 404


def test_renamed_dataset(live):
    src, host, root = live
    (src / "a.b2nd").rename(src / "renamed.b2nd")
    wait_until(lambda: cat2.get_list("live", host) == ["notes.txt", "renamed.b2nd"],
               what="rename seen")
    np.testing.assert_array_equal(cat2.fetch("live/renamed.b2nd", host), np.arange(100))
