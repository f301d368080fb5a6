"""Chunk digests: a damaged chunk is never served, whether damaged in the subscriber's cache
or on the way, and what was damaged is fetched again.

Damage is caused for real: bits flipped inside the chunks of a cached replica file, found
by their bytes (chunks are cached exactly as stored at the source).
"""
import dataclasses
import pathlib
import random
import re
from collections.abc import Iterator

import blosc2
import numpy as np
import pytest

import caterva2 as cat2
from caterva2.tests.harness import CountingProxy, Service, wait_until

SHAPE, CHUNKS, BLOCKS = (400, 400), (50, 400), (10, 400)  # 8 chunks of 160 kB
FLIPS = 12  # bits flipped, one at a time, each followed by reads


@dataclasses.dataclass
class Cached:
    """A 1.3 MB array published as root ``counted`` (reached through ``link``, a counting
    proxy), subscribed and read whole at ``subscriber``; with its data and its chunks as
    stored at the source."""

    subscriber: Service
    link: CountingProxy
    data: np.ndarray
    chunks: list[bytes]

    @property
    def dataset(self) -> cat2.File:
        return cat2.Root("counted", host=self.subscriber.address)["a.b2nd"]


@pytest.fixture
def cached(stack, tmp_path) -> Iterator[Cached]:
    src = tmp_path / "data"
    src.mkdir()
    data = np.random.default_rng(3).normal(size=SHAPE)
    stored = blosc2.asarray(data, urlpath=str(src / "a.b2nd"), mode="w", chunks=CHUNKS,
                            blocks=BLOCKS)
    chunks = [stored.schunk.get_chunk(n) for n in range(stored.schunk.nchunks)]
    link = stack.count_link(stack.publisher("data", src), "counted")
    try:
        sub = stack.subscriber()
        wait_until(lambda: "counted" in cat2.get_roots(sub.address), what="root counted")
        assert cat2.subscribe("counted", sub.address) == "Ok"
        cached = Cached(sub, link, data, chunks)
        np.testing.assert_array_equal(cached.dataset[:], data)
        yield cached
    finally:
        link.close()


def replica_file(subscriber: Service) -> pathlib.Path:
    [file] = (subscriber.statedir / "cache").rglob("replica.b2")
    return file


def flip_a_bit_in_chunk(file: pathlib.Path, chunk: bytes, rng: random.Random) -> int:
    """Flip one bit somewhere in the (last) copy of ``chunk`` in ``file``; its offset."""
    content = file.read_bytes()
    start = content.rfind(chunk)
    assert start >= 0, "the chunk is not in the replica as stored at the source"
    where = start + rng.randrange(len(chunk))
    with open(file, "r+b") as f:
        f.seek(where)
        byte = f.read(1)[0]
        f.seek(where)
        f.write(bytes([byte ^ (1 << rng.randrange(8))]))
    return where


def test_bit_flips_in_cached_chunks_are_never_served(cached):
    rng = random.Random(7)
    ds, data = cached.dataset, cached.data
    for flip in range(FLIPS):
        n = rng.randrange(len(cached.chunks))
        flip_a_bit_in_chunk(replica_file(cached.subscriber), cached.chunks[n], rng)
        rows = slice(n * CHUNKS[0] + 3, n * CHUNKS[0] + 5)
        # A small read inside the damaged chunk (cut by the subscriber), then a whole read
        # (the stored chunks, streamed): both right, every time.
        np.testing.assert_array_equal(ds[rows, 7:9], data[rows, 7:9],
                                      err_msg=f"small read after flip {flip} in chunk {n}")
        np.testing.assert_array_equal(ds[:], data, err_msg=f"whole read after flip {flip}")
    log = (cached.subscriber.statedir / "service.log").read_text()
    detected = log.count("does not match its digest")
    assert detected >= FLIPS, f"only {detected} of {FLIPS} damaged chunks were reported"
    with cat2.Client(cached.subscriber.address) as client:
        counted = client.cache()["digest_mismatches"]
    assert counted >= FLIPS, f"only {counted} of {FLIPS} damaged chunks were counted"


def test_a_damaged_chunk_is_fetched_again_and_only_it(cached):
    damaged = cached.chunks[5]
    before = cached.link.counters().down
    flip_a_bit_in_chunk(replica_file(cached.subscriber), damaged, random.Random(1))
    np.testing.assert_array_equal(cached.dataset[:], cached.data)
    moved = cached.link.counters().down - before
    assert len(damaged) <= moved < len(damaged) + 20_000, \
        f"{moved} bytes came from the publisher to repair one chunk of {len(damaged)}"


def test_a_download_never_carries_a_damaged_chunk(cached, tmp_path):
    flip_a_bit_in_chunk(replica_file(cached.subscriber), cached.chunks[2], random.Random(2))
    saved = cached.dataset.download(tmp_path / "out")
    np.testing.assert_array_equal(blosc2.open(str(saved))[:], cached.data)
    log = (cached.subscriber.statedir / "service.log").read_text()
    assert re.search(r"chunk 2 of \S+replica.b2 does not match its digest", log), log[-1000:]
