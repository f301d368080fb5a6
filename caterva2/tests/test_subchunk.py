"""Sub-chunk transfer: a small read inside a big chunk moves the blocks it touches, not
the chunk; what moved is kept, checked, and never moves again."""
import struct

import blosc2
import httpx
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.blocks import block_layout, blocks_touched
from caterva2.tests.harness import wait_until

SHAPE, BLOCKS = (1000, 1000), (50, 1000)  # one 8 MB chunk of 20 blocks of 400 kB
SMALL = (slice(500, 510), slice(500, 510))  # inside block 10
OVERHEAD = 2000  # HTTP request and answer headers, records' headers


@pytest.fixture
def site(stack, tmp_path):
    """A root ``data`` published behind a counting proxy, and a subscriber following it."""
    src = tmp_path / "data"
    src.mkdir()
    serving, link = stack.counted_publisher("data", src)

    class Site:
        source = src
        publisher = serving
        sub = stack.subscriber()
        counted = link

        def moved(self, action):
            before = link.counters().down
            action()
            return link.counters().down - before

        def dataset(self, name):
            wait_until(lambda: name in cat2.get_list("data", self.sub.address),
                       what=f"{name} at the subscriber")
            return cat2.Root("data", host=self.sub.address)[name]

    wait_until(lambda: "data" in cat2.get_roots(Site.sub.address), what="root data")
    assert cat2.subscribe("data", Site.sub.address) == "Ok"
    try:
        yield Site()
    finally:
        link.close()


def big_array(site, name="big.b2nd", seed=1, **kwargs):
    data = np.random.default_rng(seed).normal(size=SHAPE)
    array = blosc2.asarray(data, urlpath=str(site.source / name), mode="w", chunks=SHAPE,
                           blocks=BLOCKS, **kwargs)
    return data, array.schunk.get_chunk(0)


def touched_bytes(chunk: bytes, region) -> int:
    """The head of ``chunk`` and the stored blocks ``region`` touches."""
    layout = block_layout(chunk)
    touched = blocks_touched(SHAPE, BLOCKS, region)
    return layout.head + sum(stop - start for start, stop in
                             {layout.extents[b] for b in touched})


def test_a_small_read_moves_its_blocks_and_the_rest_moves_once(site):
    data, chunk = big_array(site)
    ds = site.dataset("big.b2nd")

    ideal = touched_bytes(chunk, SMALL)
    moved = site.moved(lambda: np.testing.assert_array_equal(ds[SMALL], data[SMALL]))
    assert ideal <= moved <= 2 * ideal + OVERHEAD, f"{moved} bytes for {ideal} needed"
    assert moved < len(chunk) / 10

    # The same blocks again: nothing moves.
    assert site.moved(lambda: np.testing.assert_array_equal(ds[SMALL], data[SMALL])) == 0

    # The whole array: only what is still missing moves.
    rest = site.moved(lambda: np.testing.assert_array_equal(ds[:], data))
    assert moved + rest <= 1.1 * len(chunk), f"{moved} + {rest} for a {len(chunk)} B chunk"
    assert site.moved(lambda: np.testing.assert_array_equal(ds[:], data)) == 0
    # Held whole now: its blocks held in part are gone.
    assert not list(site.sub.statedir.rglob("*.part-*"))


def test_blocks_held_survive_a_restart(site, stack):
    data, _ = big_array(site)
    ds = site.dataset("big.b2nd")
    np.testing.assert_array_equal(ds[SMALL], data[SMALL])
    assert list(site.sub.statedir.rglob("*.part-0"))
    site.sub.restart()
    wait_until(lambda: "data" in cat2.get_roots(site.sub.address), what="root data")
    assert site.moved(lambda: np.testing.assert_array_equal(ds[SMALL], data[SMALL])) == 0


def test_a_damaged_block_is_fetched_again_never_served(site):
    data, chunk = big_array(site)
    ds = site.dataset("big.b2nd")
    np.testing.assert_array_equal(ds[SMALL], data[SMALL])
    [part] = site.sub.statedir.rglob("*.part-0")
    layout = block_layout(chunk)
    [block] = blocks_touched(SHAPE, BLOCKS, SMALL)
    start, stop = layout.extents[block]
    with open(part, "r+b") as f:  # one byte flipped in the middle of the block
        f.seek((start + stop) // 2)
        byte = f.read(1)
        f.seek((start + stop) // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    for _ in range(3):
        np.testing.assert_array_equal(ds[SMALL], data[SMALL])
    metrics = httpx.get(f"http://{site.sub.address}/metrics").text
    assert 'caterva2_digest_mismatches_total{root="data"} 1.0' in metrics


def test_unsplittable_chunks_move_whole(site):
    # Stored uncompressed (clevel 0): its blocks cannot be cut out of it.
    data, chunk = big_array(site, cparams={"clevel": 0})
    assert chunk[2] & 0x02  # memcpyed
    ds = site.dataset("big.b2nd")
    moved = site.moved(lambda: np.testing.assert_array_equal(ds[SMALL], data[SMALL]))
    assert len(chunk) <= moved <= len(chunk) + OVERHEAD
    assert site.moved(lambda: np.testing.assert_array_equal(ds[:], data)) == 0


def test_reads_across_chunks_mix_blocks_and_whole_chunks(site):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(1000, 1200))
    blosc2.asarray(data, urlpath=str(site.source / "grid.b2nd"), mode="w",
                   chunks=(500, 600), blocks=(25, 600))
    ds = site.dataset("grid.b2nd")
    for region in [(slice(490, 510), slice(590, 610)),  # a corner of 4 chunks
                   (slice(0, 500), slice(0, 10)),  # all of chunk 0's blocks
                   (slice(495, 505), slice(None)),  # two chunk rows' edges
                   (slice(None), slice(None))]:
        np.testing.assert_array_equal(ds[region], data[region])


def test_the_publisher_refuses_bad_block_requests(site):
    big_array(site)
    url = f"http://{site.publisher.address}/api/blocks/big.b2nd"
    for params, status in [({"nchunk": "0", "blocks": "0-99"}, 400),
                           ({"nchunk": "0", "blocks": "x"}, 400),
                           ({"nchunk": "1", "blocks": "0"}, 400),
                           ({"nchunk": "0", "blocks": "0", "version": "nope"}, 412)]:
        r = httpx.get(url, params=params)
        assert r.status_code == status, r.text
        assert "detail" in r.json()
    r = httpx.get(url, params={"nchunk": "0", "blocks": "3"})
    assert r.status_code == 200
    offset, length, _ = struct.unpack_from("<QQQ", r.content)
    assert (offset, length) == (0, 32 + 4 * 20)  # the head comes first


def test_concurrent_small_reads_move_each_block_once(site):
    from concurrent.futures import ThreadPoolExecutor

    data, chunk = big_array(site)
    ds = site.dataset("big.b2nd")
    # Eight reads in four blocks (two reads each), all at once.
    regions = [(slice(r, r + 5), slice(c, c + 5)) for r in (60, 260, 460, 660)
               for c in (10, 900)]

    def read(region):
        np.testing.assert_array_equal(ds[region], data[region])

    with ThreadPoolExecutor(8) as pool:
        moved = site.moved(lambda: list(pool.map(read, regions, timeout=60)))
    layout = block_layout(chunk)
    blocks = {b for region in regions for b in blocks_touched(SHAPE, BLOCKS, region)}
    ideal = sum(stop - start for start, stop in {layout.extents[b] for b in blocks})
    assert ideal <= moved <= ideal + len(blocks) * (layout.head + OVERHEAD), (moved, ideal)


def test_blocks_held_count_against_the_cache_bound(stack, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    data = np.random.default_rng(4).normal(size=SHAPE)
    blosc2.asarray(data, urlpath=str(src / "big.b2nd"), mode="w", chunks=SHAPE,
                   blocks=BLOCKS)
    stack.publisher("data", src)
    sub = stack.subscriber(args=["--cache-size", "3MB"])  # less than the 8 MB chunk
    wait_until(lambda: "data" in cat2.get_roots(sub.address), what="root data")
    cat2.subscribe("data", sub.address)
    ds = cat2.Root("data", host=sub.address)["big.b2nd"]
    for rows in (slice(0, 3), slice(400, 403), slice(900, 903)):  # three blocks
        np.testing.assert_array_equal(ds[rows, :7], data[rows, :7])
    with cat2.Client(sub.address) as client:
        usage = client.cache()["usage"]
    assert 3 * 300_000 < usage <= 3_000_000, usage  # (each block: ~350 kB stored)
    with pytest.raises(cat2.ServerError) as error:  # the whole chunk cannot fit
        ds[:]
    assert error.value.status_code == 507
    assert "too small for this read" in str(error.value)
    np.testing.assert_array_equal(ds[0:3, :7], data[0:3, :7])  # still served


def test_blocks_held_are_served_with_the_publisher_down(site):
    data, _ = big_array(site)
    ds = site.dataset("big.b2nd")
    np.testing.assert_array_equal(ds[SMALL], data[SMALL])
    site.publisher.stop()
    np.testing.assert_array_equal(ds[SMALL], data[SMALL])
    with pytest.raises(cat2.ServerError) as error:  # another block: not cached
        ds[0:5, 0:5]
    assert error.value.status_code in (503, 504), error.value
    assert "unreachable" in str(error.value) or "timed out" in str(error.value)
