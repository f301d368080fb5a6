"""Many clients at once on data not cached yet: every answer is whole and right, and each
chunk crosses the publisher -> subscriber link once, however many clients need it.  And the
subscriber's cache never opens one replica twice (a unit test)."""
import threading
from concurrent.futures import ThreadPoolExecutor

import blosc2
import numpy as np

import caterva2 as cat2
from caterva2 import wire
from caterva2.roots.directory import DirectoryRoot
from caterva2.services.subscriber import cache as cache_module
from caterva2.services.subscriber.leases import leasing
from caterva2.tests.harness import wait_until


def test_concurrent_cold_reads_fetch_each_chunk_once(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    a = np.random.default_rng(1).normal(size=(800, 800))  # 64 chunks of 80 kB, incompressible
    stored = blosc2.asarray(a, urlpath=str(src / "a.b2nd"), mode="w", chunks=(100, 100),
                            blocks=(20, 20))
    sizes = [len(stored.schunk.get_chunk(n)) for n in range(stored.schunk.nchunks)]
    # The same publisher, registered again under a name whose address is the proxy:
    # whatever the subscriber fetches for that root is counted.
    proxy = stack.count_link(stack.publisher("data", src), "counted")
    try:
        sub = stack.subscriber()
        wait_until(lambda: "counted" in cat2.get_roots(sub.address), what="root counted")
        ds = cat2.Root("counted", host=sub.address)["a.b2nd"]  # (subscribing: the index)
        before = proxy.counters()

        # Whole, halves, boxes across chunks, strides, rows and columns: large selections
        # come as chunk streams, small ones in one buffer; most chunks are wanted by
        # several readers at once.
        keys = [np.s_[:], np.s_[:400], np.s_[400:], np.s_[150:650, 50:750], np.s_[::3, ::7],
                np.s_[399], np.s_[..., 123], np.s_[10:20, 790:], np.s_[:, :100],
                np.s_[700:, 100:], np.s_[1::2, 300:500], np.s_[5, 5]]
        start = threading.Barrier(len(keys))

        def read(key):
            start.wait(30)
            return ds[key]

        with ThreadPoolExecutor(len(keys)) as pool:
            results = list(pool.map(read, keys, timeout=120))
        for key, out in zip(keys, results):
            np.testing.assert_array_equal(out, a[key])

        after = proxy.counters()
        link, requests = after.down - before.down, after.requests - before.requests
        stream_overhead = len(sizes) * wire.RECORD_HEADER_SIZE
        # Every chunk came...
        assert link >= sum(sizes), \
            f"{link} bytes crossed the link, less than the {sum(sizes)} of the chunks"
        # ...once: what came beyond the chunks (HTTP headers of each answer, record
        # headers) is far less than one more chunk would be.
        extra = link - sum(sizes) - stream_overhead
        assert extra < min(sizes), \
            f"{extra} bytes beyond the chunks in {requests} requests: some chunk came twice"
        assert extra < 2000 * requests, f"{extra} bytes beyond the chunks in {requests} requests"

        # All cached now: reading everything again crosses nothing.
        np.testing.assert_array_equal(ds[:], a)
        assert proxy.counters().down == after.down, "a read of cached data went to the publisher"
    finally:
        proxy.close()


def test_a_replica_in_use_is_never_opened_twice(tmp_path, monkeypatch):
    """However many other datasets are read meanwhile, a replica still in use (leased to an
    answer in flight, e.g. a long download writing into it) is the one later reads get: two
    handles appending to one file would corrupt it.  Unit test of the subscriber's cache,
    with room for one open replica only."""
    src = tmp_path / "src"
    src.mkdir()
    names = [f"d{i}.b2nd" for i in range(3)]
    for i, name in enumerate(names):
        blosc2.asarray(np.arange(10) + i, urlpath=str(src / name), mode="w", chunks=(5,),
                       blocks=(5,))
    source = DirectoryRoot(src, tmp_path / "pub")
    entries = {name: source.entry(name) for name in names}
    monkeypatch.setattr(cache_module, "MAX_OPEN_REPLICAS", 1)
    cache = cache_module.Cache(tmp_path / "cache")
    cache.set_index("r", entries)
    with leasing():  # an answer in flight
        in_use = cache.replica("r", names[0], entries[names[0]])
        for name in names[1:]:  # the first leaves the cache's list of open replicas
            with leasing():  # (other answers, over meanwhile)
                cache.replica("r", name, entries[name])
        assert cache.replica("r", names[0], entries[names[0]]) is in_use
        in_use.store(0, source.read_chunk(names[0], 0))
    # Once nobody holds it, it is closed when it leaves the list, and opened again when
    # next needed.
    for name in names[1:]:
        cache.replica("r", name, entries[name])
    assert in_use.closed
    again = cache.replica("r", names[0], entries[names[0]])
    assert again is not in_use and again.missing([0, 1]) == [1]
