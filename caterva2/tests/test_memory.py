"""The subscriber's memory is bounded by the chunks in flight, not by the size of the data,
also when a client reads more slowly than the publisher sends."""
import sys

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2 import http_data
from caterva2.tests.harness import wait_until

ROWS, COLS, CHUNK_ROWS = 192 * 128, 1024, 128  # float64: 192 chunks of 1 MiB, 192 MiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
def test_a_stalled_client_does_not_make_the_subscriber_hold_the_data(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    a = np.random.default_rng(3).normal(size=(ROWS, COLS))  # incompressible
    blosc2.asarray(a, urlpath=str(src / "a.b2nd"), mode="w", chunks=(CHUNK_ROWS, COLS),
                   blocks=(32, COLS))
    stack.publisher("data", src)
    sub = stack.subscriber()
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    cat2.subscribe("data", sub.address)
    before = sub.peak_memory_mb()

    # A cold read of everything that takes its first chunk, then stops reading while the
    # subscriber fetches the rest: a download link is only given once all of it is cached.
    url = f"http://{sub.address}/api/fetch/data/a.b2nd"
    buffer = np.empty(CHUNK_ROWS * COLS)
    seen = []

    def check(n, chunk) -> None:
        blosc2.decompress2(chunk, dst=buffer)
        rows = slice(n * CHUNK_ROWS, (n + 1) * CHUNK_ROWS)
        assert np.array_equal(buffer.reshape(CHUNK_ROWS, COLS), a[rows]), n
        seen.append(n)

    with http_data.ConnectionPool() as pool, \
            pool.get(url, {"slice_": ":", "chunks": "true"}) as r:
        assert r.status == 200, f"the subscriber answered {r.status}"
        records = http_data.records(r, CHUNK_ROWS * COLS * 8 + blosc2.MAX_OVERHEAD)
        check(*next(records))
        httpx.get(f"http://{sub.address}/api/download/data/a.b2nd",
                  timeout=120).raise_for_status()
        grown = sub.peak_memory_mb() - before
        for n, chunk in records:  # the rest of the answer is still whole and right
            check(n, chunk)
    assert sorted(seen) == list(range(ROWS // CHUNK_ROWS))
    assert grown < a.nbytes / 2**20 / 2, f"the subscriber grew by {grown:.0f} MiB"
