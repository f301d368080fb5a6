"""Bytes over the publisher link, against the ideal, for the cases of issue 18.

    .venv/bin/python bench/link_bytes.py

A broker, a publisher and a subscriber run as real processes on loopback (with
:mod:`caterva2.tests.harness`); the publisher listens behind a counting TCP proxy and
announces the proxy's address (``cat2pub --url``), so every byte the subscriber fetches
is counted.  Cases:

- *small read in a big chunk*: a 10x10 read inside a 2000x2000 float64 array stored as one
  chunk; ideal: the compressed size of the blocks it touches, plus the chunk's header and
  block offsets (what a sub-chunk transfer needs);
- *then all of it*: then reading the whole array; what both reads moved, against the
  chunk's compressed size (only the blocks still missing should move);
- *cold full read*: a 64-chunk array read whole; ideal: the chunks' compressed sizes;
- *one chunk changed*: one of those 64 chunks changes at the source, then a full read;
  ideal: the changed chunk's compressed size.

Writes ``link_bytes.md`` next to this file and prints the table.
"""
from __future__ import annotations

import datetime
import pathlib
import struct
import sys
import tempfile

import blosc2
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import caterva2 as cat2  # noqa: E402
from caterva2 import chunks as geometry  # noqa: E402
from caterva2.tests.harness import CountingProxy, Stack, free_ports, wait_until  # noqa: E402

BIG = (2000, 2000)  # one chunk of 32 MB (float64, random: ~27 MB stored)
SMALL_READ = (slice(1000, 1010), slice(1000, 1010))
ROWS, COLS, NCHUNKS = 100, 1000, 64  # 64 chunks of 800 kB


def block_spans(chunk: bytes) -> list[int]:
    """Stored size of each block of a Blosc2 chunk, from its block offsets."""
    nbytes, blocksize, cbytes = struct.unpack_from("<iii", chunk, 4)
    nblocks = -(-nbytes // blocksize)
    starts = list(struct.unpack_from(f"<{nblocks}i", chunk, 32))
    ends = sorted(starts)[1:] + [cbytes]
    order = sorted(range(nblocks), key=starts.__getitem__)
    spans = [0] * nblocks
    for i, end in zip(order, ends):
        spans[i] = end - starts[i]
    return spans


def touched_blocks_bytes(array: blosc2.NDArray, region: tuple[slice, ...]) -> int:
    """Header, block offsets and the stored blocks of chunk 0 that ``region`` touches."""
    chunk = array.schunk.get_chunk(0)
    spans = block_spans(chunk)
    grid = geometry.chunk_grid(array.chunks, array.blocks)
    touched = geometry.chunks_in_region(array.chunks, array.blocks, region)
    return 32 + 4 * len(spans) + sum(spans[n] for n in touched) if grid else len(chunk)


class Site:
    """A deployment whose publisher link is counted."""

    def __init__(self, statedir: pathlib.Path, source: pathlib.Path):
        self.stack = Stack(statedir)
        port = free_ports(1)[0]
        self.link = CountingProxy(f"127.0.0.1:{port}")
        self.stack.publisher("data", source, http=f"127.0.0.1:{port}",
                             args=["--url", self.link.address])
        self.sub = self.stack.subscriber()
        wait_until(lambda: "data" in cat2.get_roots(self.sub.address), what="root data")
        cat2.subscribe("data", self.sub.address)

    def dataset(self, name: str) -> cat2.File:
        return cat2.Root("data", host=self.sub.address)[name]

    def moved(self, action) -> int:
        before = self.link.counters().down
        action()
        return self.link.counters().down - before

    def close(self) -> None:
        self.link.close()
        self.stack.stop()


def measure(tmp: pathlib.Path) -> list[tuple[str, int, int]]:
    src = tmp / "data"
    src.mkdir()
    rng = np.random.default_rng(1)
    big = blosc2.asarray(rng.normal(size=BIG), urlpath=str(src / "big.b2nd"), mode="w",
                         chunks=BIG)
    many_data = rng.normal(size=(ROWS * NCHUNKS, COLS))
    many = blosc2.asarray(many_data, urlpath=str(src / "many.b2nd"), mode="w",
                          chunks=(ROWS, COLS))
    site = Site(tmp / "state", src)
    try:
        rows = []
        ds = site.dataset("big.b2nd")
        small = site.moved(lambda: ds[SMALL_READ])
        rows.append(("10x10 read in one 27 MB chunk", small,
                     touched_blocks_bytes(big, SMALL_READ)))
        rows.append(("then all of it (total of both reads)", small + site.moved(lambda: ds[:]),
                     len(big.schunk.get_chunk(0))))
        sizes = [len(many.schunk.get_chunk(n)) for n in range(NCHUNKS)]
        many_ds = site.dataset("many.b2nd")
        rows.append((f"cold full read, {NCHUNKS} chunks", site.moved(lambda: many_ds[:]),
                     sum(sizes)))

        def change_one_chunk_and_read() -> None:
            changed = rng.normal(size=(ROWS, COLS))
            source = blosc2.open(str(src / "many.b2nd"), mode="a")
            source[5 * ROWS:6 * ROWS] = changed
            del source
            wait_until(lambda: np.array_equal(many_ds[5 * ROWS, :3], changed[0, :3]),
                       what="the change at the subscriber")
            many_ds[:]

        moved = site.moved(change_one_chunk_and_read)
        now = blosc2.open(str(src / "many.b2nd"))  # (kept: its schunk lives as long as it)
        changed_size = len(now.schunk.get_chunk(5))
        rows.append((f"one chunk of {NCHUNKS} changed, full read", moved, changed_size))
        return rows
    finally:
        site.close()


def table(rows: list[tuple[str, int, int]]) -> str:
    lines = ["| case | bytes over the link | ideal | ratio |", "|---|---|---|---|"]
    for case, moved, ideal in rows:
        lines.append(f"| {case} | {moved:,} | {ideal:,} | {moved / ideal:.2f} |")
    return "\n".join(lines)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="caterva2-link-") as tmp:
        rows = measure(pathlib.Path(tmp))
    text = (f"# Bytes over the publisher link\n\n{datetime.date.today()}, "
            "`bench/link_bytes.py`; see its docstring.\n\n" + table(rows) + "\n")
    (HERE / "link_bytes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
