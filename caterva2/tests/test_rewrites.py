"""Datasets rewritten in place, damaged, or missing for a moment at the source.

What users see then is whole versions of the data or a clear error saying why: never a
mix of two versions, a 404 for a dataset that is still there, or a 500.
"""
import os
import threading
import time

import blosc2
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import PublishedRoot, wait_until

SHAPE = (400, 1000)  # 3.2 MB of float64, in 8 chunks: full reads travel as chunk streams


def write(path, k):
    """Version ``k`` of the dataset: every item equal to ``k``."""
    blosc2.asarray(np.full(SHAPE, k, dtype="f8"), urlpath=str(path), mode="w",
                   chunks=(50, 1000), blocks=(10, 1000))


@pytest.fixture
def rewritable(stack, tmp_path) -> PublishedRoot:
    """A subscribed root ``rw`` holding ``a.b2nd`` (version 0)."""
    src = tmp_path / "rw"
    src.mkdir()
    write(src / "a.b2nd", 0)
    rw = stack.publish_root("rw", src)
    assert cat2.subscribe("rw", rw.host) == "Ok"
    return rw


def test_reads_during_rewrites_in_place_give_whole_versions_or_clear_errors(rewritable):
    src, pub, host = rewritable.source, rewritable.publisher, rewritable.host
    ds = cat2.Root("rw", host=host)["a.b2nd"]
    assert ds[:].max() == 0
    done = threading.Event()

    def rewrite() -> None:
        for k in range(1, 16):
            write(src / "a.b2nd", k)
            time.sleep(0.01)
        done.set()

    writer = threading.Thread(target=rewrite)
    writer.start()
    seen, errors = set(), []
    deadline = time.monotonic() + 120
    try:
        while not done.is_set() and time.monotonic() < deadline:
            for key in (slice(None), (slice(0, 5), slice(0, 5))):  # a stream, a small read
                try:
                    got = ds[key]
                except cat2.ServerError as e:
                    assert e.status_code == 503, e.detail  # never a 404 or a 500
                    errors.append(e.detail)
                    continue
                except ValueError as e:  # an answer cut short three times in a row
                    assert "read again" in str(e), f"a cut answer that does not say so: {e}"
                    errors.append(str(e))
                    continue
                assert got.min() == got.max(), "an answer mixed two versions"
                seen.add(int(got.min()))
    finally:
        writer.join()
    assert seen, f"no read succeeded while the file was rewritten: {errors[:3]}"
    wait_until(lambda: ds[0:1, 0:1][0, 0] == 15, what="the last version")
    np.testing.assert_array_equal(ds[:], np.full(SHAPE, 15.0))
    # Streams cut short because the file changed are logged in one line, not a traceback.
    assert "Traceback" not in pub.log_tail(100_000)


def test_unreadable_dataset_is_listed_with_its_reason_until_it_is_fixed(rewritable):
    src, pub, host = rewritable.source, rewritable.publisher, rewritable.host
    (src / "bad.b2nd").write_bytes(b"not Blosc2 at all " * 100)
    wait_until(lambda: "bad.b2nd" in cat2.get_list("rw", host), what="bad.b2nd listed")
    for read in (lambda: cat2.get_info("rw/bad.b2nd", host),
                 lambda: cat2.fetch("rw/bad.b2nd", host, "0:3")):
        with pytest.raises(cat2.ServerError) as err:
            read()
        assert err.value.status_code == 503
        assert "bad.b2nd: not readable as Blosc2" in err.value.detail
        assert str(src) not in err.value.detail  # no server path
    # The publisher said so once, and does not keep trying in a loop.  (A fixed wait: what
    # is checked is that nothing more happens in it.)
    warnings = pub.log_tail(10_000).count("bad.b2nd: not readable")
    time.sleep(1)
    again = pub.log_tail(10_000).count("bad.b2nd: not readable") - warnings
    assert again <= 1, f"the publisher warned {again} more times in 1 s"
    blosc2.asarray(np.arange(7), urlpath=str(src / "bad.b2nd"), mode="w")
    wait_until(lambda: cat2.fetch("rw/bad.b2nd", host, "0:7").tolist() == list(range(7)),
               what="the fixed dataset")


def test_file_missing_for_a_moment_never_leaves_the_listing(rewritable):
    src, host = rewritable.source, rewritable.host
    hidden = src / ".a.b2nd.moved"  # hidden files are not published
    for _ in range(3):
        os.rename(src / "a.b2nd", hidden)
        time.sleep(0.05)
        os.rename(hidden, src / "a.b2nd")
        for _ in range(20):  # while the publisher looks at it, and a while after
            assert "a.b2nd" in cat2.get_list("rw", host), "a.b2nd left the listing"
            time.sleep(0.02)
    assert cat2.fetch("rw/a.b2nd", host, "0:1, 0:2").tolist() == [[0, 0]]
