"""Reading through a chain of re-publishing sites, against reading one hop away (issue 20).

    .venv/bin/python bench/relay.py

Sites run as real processes on loopback (:class:`caterva2.tests.relay_chain.Chain`, with
no proxies in between): the origin publishes ``data``; site A's subscriber follows it and
re-publishes it; site B's subscriber follows A's relay, and re-publishes in turn; site
C's subscriber follows B's relay.  So a read at A is one hop from the origin, at B two,
at C three.

Each read is of a whole 128 MiB float64 array (64 chunks of 2 MiB), through the Python
client: *cold* (nothing cached anywhere along the chain: each read is of its own copy of
the array, the same size and data kind), then *warm* (cached at the reading site); each
the median of REPEATS (the machine may be shared: single reads are noisy).  Goals: cold at two hops at most 1.5x one hop; warm the same as one hop.

Writes ``relay.md`` next to this file and prints the table.
"""
from __future__ import annotations

import datetime
import os
import pathlib
import statistics
import sys
import tempfile
import time

import blosc2
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from caterva2.tests.relay_chain import Chain

SHAPE, CHUNKS = (8192, 2048), (128, 2048)  # 128 MiB of float64, 64 chunks of 2 MiB
WHERE = {1: ("A", "data"), 2: ("B", "adata"), 3: ("C", "bdata")}  # hops: site, root
REPEATS = 3


def make_copies(source: pathlib.Path) -> None:
    """One array per read, so that each cold read is cold all along the chain."""
    rng = np.random.default_rng(1)
    for hops in WHERE:
        for n in range(REPEATS):
            data = rng.normal(size=SHAPE).round(3)  # (compresses a little, as data may)
            blosc2.asarray(data, urlpath=str(source / f"big{hops}-{n}.b2nd"), mode="w",
                           chunks=CHUNKS)


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def measure(tmp: pathlib.Path) -> dict[int, tuple[float, float]]:
    source = tmp / "data"
    source.mkdir()
    make_copies(source)
    chain = Chain(tmp / "state", source, counted=False)
    try:
        results = {}
        for hops, (site, root) in WHERE.items():
            client = chain.client(site)
            client.subscribe(root)
            colds, warms = [], []
            for n in range(REPEATS):
                ds = client.get_dataset(f"{root}/big{hops}-{n}.b2nd")
                colds.append(timed(ds.fetch))
                warms.append(timed(ds.fetch))
            results[hops] = (statistics.median(colds), statistics.median(warms))
        return results
    finally:
        chain.stop()


def table(results: dict[int, tuple[float, float]]) -> str:
    one_cold, one_warm = results[1]
    lines = ["| read of 128 MiB at | cold (s) | vs one hop | warm (s) | vs one hop |",
             "|---|---|---|---|---|"]
    for hops, (cold, warm) in results.items():
        lines.append(f"| {hops} hop{'s' if hops > 1 else ''} from the origin | {cold:.2f} | "
                     f"{cold / one_cold:.2f}x | {warm:.3f} | {warm / one_warm:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="caterva2-relay-") as tmp:
        results = measure(pathlib.Path(tmp))
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    text = (f"# Reading through re-publishing sites\n\n{datetime.date.today()}, "
            f"`bench/relay.py` on {os.cpu_count()} cores ({load}); see its docstring.  "
            "Goals: cold at 2 hops at most 1.5x one hop; warm the same as one hop.  On a "
            "busy machine the chain's extra processes compete for the cores: cold ratios "
            "grow with the load.\n\n" + table(results) + "\n")
    (HERE / "relay.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
