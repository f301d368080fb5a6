"""Freshness without the broker: with the broker stopped, a subscriber checks a dataset's
version with its publisher before serving it, so a change at the source is seen within
about a second; with the publisher stopped too, it serves its cache and says the answer
could not be checked (a header, a warning in the library, a line from ``cat2cli``).  With
the broker there, reads of cached data ask the publisher nothing.
"""
from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import wire
from caterva2.tests.harness import PublishedRoot, wait_until

PACKAGE_PARENT = pathlib.Path(cat2.__file__).resolve().parents[1]
OLD = np.arange(1000)
# A change is seen within REVALIDATE_INTERVAL_S (0.5) of it, plus a request, plus up to
# GONE_GRACE_S (0.5) when the file is rewritten in place; a margin for a loaded machine.
SEEN_WITHIN_S = 3
NOTICE = ("the broker and the publisher of root 'data' are unreachable; "
          "served from the cache, this may be out of date")


def write(path: pathlib.Path, data: np.ndarray, chunks: tuple[int, ...] = (100,)) -> None:
    blosc2.asarray(data, urlpath=str(path), mode="w", chunks=chunks, blocks=(10,))


@pytest.fixture
def cached(stack, tmp_path) -> PublishedRoot:
    """Root ``data``, subscribed, with ``a.b2nd`` and ``b.b2nd`` (``OLD``) and ``notes.txt``
    read whole (so cached), and ``uncached.b2nd`` never read."""
    src = tmp_path / "data"
    src.mkdir()
    for name in ("a.b2nd", "b.b2nd", "uncached.b2nd"):
        write(src / name, OLD)
    (src / "notes.txt").write_text("first version")
    data = stack.publish_root("data", src)
    root = cat2.Root("data", host=data.host)
    for name in ("a.b2nd", "b.b2nd"):
        np.testing.assert_array_equal(root[name][:], OLD)
    assert root["notes.txt"][:] == b"first version"
    return data


def one_version(read, versions: list[np.ndarray]):
    """A predicate for wait_until: whether ``read()`` gives the last of ``versions`` yet;
    any read that is none of them (a mix, a part) fails the test at once."""
    def seen() -> bool:
        got = read()
        for n, version in enumerate(versions):
            if got.shape == version.shape and np.array_equal(got, version):
                return n == len(versions) - 1
        pytest.fail(f"a read gave none of the versions of the dataset: {got!r}")
    return seen


def test_broker_down_a_rewrite_is_served_within_a_second(cached, stack):
    """Same shape, new values: every read is the old version or the new one, whole, and the
    new one comes within about a second (the broker cannot announce it)."""
    stack.broker.stop()
    new = OLD * 3
    write(cached.source / "a.b2nd", new)
    start = time.monotonic()
    wait_until(one_version(lambda: cat2.fetch("data/a.b2nd", cached.host), [OLD, new]),
               timeout=SEEN_WITHIN_S, what="the rewritten dataset at the subscriber")
    seen_after = time.monotonic() - start
    for _ in range(10):  # and the old version never comes back
        np.testing.assert_array_equal(cat2.fetch("data/a.b2nd", cached.host), new)
    np.testing.assert_array_equal(cat2.fetch("data/b.b2nd", cached.host), OLD)  # untouched
    log = cached.subscriber.log_tail(10_000)
    assert "data/a.b2nd changed at its source" in log, \
        f"the new version was seen after {seen_after:.2f}s but the log does not say how"


def test_broker_down_a_new_shape_is_served_within_a_second(cached, stack):
    """A new shape and chunking: a Dataset made before the change reads the new data, and
    the metadata says the new shape."""
    ds = cat2.Root("data", host=cached.host)["a.b2nd"]
    stack.broker.stop()
    new = np.arange(1500) * 2
    write(cached.source / "a.b2nd", new, chunks=(300,))
    wait_until(one_version(lambda: ds[:], [OLD, new]), timeout=SEEN_WITHIN_S,
               what="the reshaped dataset at the subscriber")
    assert ds.meta["shape"] == [1500] and ds.meta["chunks"] == [300], ds.meta
    assert cat2.get_info("data/a.b2nd", cached.host)["shape"] == [1500]
    np.testing.assert_array_equal(cat2.fetch("data/a.b2nd", cached.host, "1000:1003"),
                                  [2000, 2002, 2004])


def test_broker_down_a_deleted_dataset_is_404(cached, stack):
    stack.broker.stop()
    (cached.source / "b.b2nd").unlink()

    def status() -> int:
        try:
            cat2.fetch("data/b.b2nd", cached.host)
        except cat2.ServerError as e:
            return e.status_code
        return 200

    wait_until(lambda: status() == 404, timeout=SEEN_WITHIN_S, what="a 404 for the deletion")
    with pytest.raises(cat2.ServerError) as err:
        cat2.get_info("data/b.b2nd", cached.host)
    assert err.value.status_code == 404 and "no longer exists" in err.value.detail
    np.testing.assert_array_equal(cat2.fetch("data/a.b2nd", cached.host), OLD)


def headers_of_answers(host: str) -> dict[str, str | None]:
    """The unverified header of each kind of answer about cached datasets, by endpoint."""
    urls = {
        "info": f"http://{host}/api/info/data/a.b2nd",
        "fetch": f"http://{host}/api/fetch/data/a.b2nd?slice_=0:5",
        "fetch chunks": f"http://{host}/api/fetch/data/a.b2nd?slice_=0:500&chunks=true",
        "fetch bytes": f"http://{host}/api/fetch/data/notes.txt?slice_=0:5",
        "download": f"http://{host}/api/download/data/a.b2nd",
        "files": f"http://{host}/files/data/a.b2nd",
        "files .b2": f"http://{host}/files/data/notes.txt.b2",
    }
    headers = {}
    for what, url in urls.items():
        r = httpx.get(url, timeout=30)
        assert r.status_code == 200, f"{what}: {r.status_code} {r.text}"
        headers[what] = r.headers.get(wire.UNVERIFIED_HEADER)
    return headers


def cat2cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}  # this checkout's caterva2
    return subprocess.run([sys.executable, "-m", "caterva2.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_broker_and_publisher_down_cache_served_and_marked_unverified(cached, stack, tmp_path):
    host = cached.host
    with warnings.catch_warnings():  # (connected: answers are what they always were)
        warnings.simplefilter("error", cat2.UnverifiedWarning)
        assert set(headers_of_answers(host).values()) == {None}
        cat2.fetch("data/a.b2nd", host, "0:5")
    stack.broker.stop()
    cached.publisher.stop()

    got = headers_of_answers(host)
    assert got == dict.fromkeys(got, NOTICE), got
    with pytest.warns(cat2.UnverifiedWarning, match=f"^data/a.b2nd: {NOTICE}$"):
        np.testing.assert_array_equal(cat2.fetch("data/a.b2nd", host, "10:20"), OLD[10:20])
    with pytest.warns(cat2.UnverifiedWarning, match="^data/a.b2nd: "):
        assert cat2.get_info("data/a.b2nd", host)["shape"] == [1000]
    with pytest.warns(cat2.UnverifiedWarning, match="^data/a.b2nd: ") as caught:
        ds = cat2.Root("data", host=host)["a.b2nd"]
    assert caught[0].filename == __file__, "the warning does not point at the caller"
    for key in (slice(None, None, 100), 7):
        with pytest.warns(cat2.UnverifiedWarning, match="^data/a.b2nd: ") as caught:
            got = ds[key]
        np.testing.assert_array_equal(got, OLD[key])
        assert caught[0].filename == __file__, "the warning does not point at the caller"
    with cat2.Client(host) as client, \
            pytest.warns(cat2.UnverifiedWarning, match="^data/notes.txt: ") as caught:
        saved = client.download("data/notes.txt", tmp_path)
    assert saved.read_text() == "first version"
    assert len(caught) == 1, [str(w.message) for w in caught]  # one download, one warning

    done = cat2cli("--host", host, "show", "data/a.b2nd[0:5]")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[0 1 2 3 4]\n"
    assert done.stderr == f"cat2cli: warning: data/a.b2nd: {NOTICE}\n"

    with pytest.raises(cat2.ServerError) as err:  # what is not cached: as ever
        cat2.fetch("data/uncached.b2nd", host, "0:5")
    assert err.value.status_code in (503, 504) and "unreachable" in err.value.detail, \
        err.value.detail

    cached.publisher.start()  # the broker still down: answers are checked again
    wait_until(lambda: set(headers_of_answers(host).values()) == {None}, timeout=10,
               what="answers no longer marked unverified")
    np.testing.assert_array_equal(cat2.fetch("data/uncached.b2nd", host, "0:5"), OLD[:5])


def test_reads_ask_the_publisher_only_while_the_broker_is_down(stack, tmp_path):
    """Broker connected: cached reads (metadata, selections, chunk streams, downloads)
    cross the publisher link not once.  Broker down: concurrent reads of a dataset share
    one small revalidation per REVALIDATE_INTERVAL_S (0.5 s)."""
    src = tmp_path / "data"
    src.mkdir()
    data = np.random.default_rng(3).normal(size=100_000)  # 800 kB: large reads stream chunks
    blosc2.asarray(data, urlpath=str(src / "a.b2nd"), mode="w", chunks=(10_000,),
                   blocks=(1000,))
    link = stack.count_link(stack.publisher("data", src), "counted")
    try:
        host = stack.subscriber().address
        wait_until(lambda: "counted" in cat2.get_roots(host), what="root counted")
        assert cat2.subscribe("counted", host) == "Ok"
        ds = cat2.Root("counted", host=host)["a.b2nd"]
        np.testing.assert_array_equal(ds[:], data)  # now all cached

        def reads() -> None:
            np.testing.assert_array_equal(ds[:], data)
            np.testing.assert_array_equal(ds[5:9], data[5:9])
            np.testing.assert_array_equal(cat2.fetch("counted/a.b2nd", host, "7"), data[7])
            assert cat2.get_info("counted/a.b2nd", host)["shape"] == [100_000]
            with cat2.Client(host) as client:
                client.download("counted/a.b2nd", tmp_path)

        before = link.counters()
        for _ in range(3):
            reads()
        assert link.counters() == before, \
            f"cached reads with the broker connected crossed the publisher link: {before} -> " \
            f"{link.counters()}"

        stack.broker.stop()
        wait_until(lambda: cat2.get_info("counted/a.b2nd", host) and
                   link.counters().requests > before.requests,
                   what="a read checked with the publisher once the broker stopped")
        time.sleep(0.6)  # the last check is out of date now
        before, start = link.counters(), time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda n: cat2.fetch("counted/a.b2nd", host, f"{n}"), range(32)))
        took = time.monotonic() - start
        assert got == list(data[:32])
        after = link.counters()
        requests = after.requests - before.requests
        assert 1 <= requests <= 1 + int(took / 0.5), \
            f"{requests} requests to the publisher for 32 reads in {took:.2f}s"
        assert after.down - before.down < 400 * requests, \
            f"revalidations brought {after.down - before.down} bytes: not just 304s"
    finally:
        link.close()
