"""Delta re-sync: when a dataset changes at its source, only its changed chunks cross the
publisher link again; the rest are kept from the version before (by their digests)."""
import blosc2
import numpy as np

import caterva2 as cat2
from caterva2.tests.harness import wait_until

CHUNK_ROWS, COLS, NCHUNKS = 100, 100, 64  # 64 chunks of 80 kB (random: incompressible)


def test_one_changed_chunk_is_all_that_moves_again(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    rng = np.random.default_rng(5)
    data = rng.normal(size=(CHUNK_ROWS * NCHUNKS, COLS))
    blosc2.asarray(data, urlpath=str(src / "a.b2nd"), mode="w", chunks=(CHUNK_ROWS, COLS),
                   blocks=(10, COLS))
    _, link = stack.counted_publisher("data", src)  # the publisher link, counted
    try:
        sub = stack.subscriber()
        wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
        assert cat2.subscribe("data", sub.address) == "Ok"
        ds = cat2.Root("data", host=sub.address)["a.b2nd"]
        np.testing.assert_array_equal(ds[:], data)  # all cached

        # One chunk (rows 300:400, chunk 3) changes at the source.
        before = link.counters().down
        changed = rng.normal(size=(CHUNK_ROWS, COLS))
        source = blosc2.open(str(src / "a.b2nd"), mode="a")
        source[3 * CHUNK_ROWS:4 * CHUNK_ROWS] = changed
        chunk_size = len(source.schunk.get_chunk(3))
        del source
        data[3 * CHUNK_ROWS:4 * CHUNK_ROWS] = changed
        wait_until(lambda: np.array_equal(ds[3 * CHUNK_ROWS, :5], changed[0, :5]),
                   what="the change at the subscriber")
        np.testing.assert_array_equal(ds[:], data)
        moved = link.counters().down - before
        assert chunk_size <= moved <= 1.1 * chunk_size, \
            f"{moved} bytes crossed the link after one chunk of {chunk_size} bytes changed"
    finally:
        link.close()
    log = (sub.statedir / "service.log").read_text()
    assert f"63 of {NCHUNKS} chunks kept from the previous version" in log, log[-2000:]
